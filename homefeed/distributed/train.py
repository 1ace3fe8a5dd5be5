"""Data-parallel ranker training: `homefeed.rank.train.train`, unchanged, run by every rank of a torch DDP group.

Each rank holds the whole model and the whole sample set; every global batch (the single-process
run's batch, from the same seeded permutation) is split between the ranks, each computes the
gradient of its slice, and DDP sums them (gloo on CPU, with sparse embedding gradients for
SparseAdam/Adagrad). A communication hook weights rank r's gradient by n_r / B before the sum, so
the step is the gradient of the mean over the whole batch, the penalty term included, even when a
batch does not split evenly: the same step as one process, up to float rounding.

Validation runs in full on every rank, so every rank takes the same early-stopping decision and ends
with the same weights; rank 0 writes the artefact. Models must not depend on batch statistics
(no batch norm) or per-row randomness (dropout 0, the presets' default) to match one process closely.

    >>> dist.init_process_group("gloo")                                       # doctest: +SKIP
    >>> model, result = ddp_train(model, parts["train"], parts["valid"], TrainSettings())  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from homefeed.rank.samples import Samples
from homefeed.rank.train import TrainResult, TrainSettings, train


class Replica(DistributedDataParallel):
    """DDP that also answers the wrapped model's attributes (`calibration`, `embedding_rows`, ...),
    so the single-process trainer drives it unchanged."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@dataclasses.dataclass
class ShardedSamples(Samples):
    """The full samples; an ordered epoch yields this rank's slice of each global batch.

    `share` receives n_r / B for the batch just yielded (the weight of this rank's gradient). Unordered
    passes (the penalty's row counts) see every row. A rank whose slice would be empty gets one row at
    weight 0, so every rank runs the same number of steps.
    """

    rank: int = 0
    world: int = 1
    share: dict = dataclasses.field(default_factory=dict)

    def batches(self, batch_size: int, *, order: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
        if order is None:
            yield from super().batches(batch_size)
            return
        for start in range(0, len(self), batch_size):
            rows = order[start:start + batch_size]
            mine = torch.tensor_split(rows, self.world)[self.rank]
            self.share["w"] = mine.numel() / rows.numel()
            if mine.numel() == 0:
                mine = rows[:1]
            yield self.take(mine)


def _weighted_sum_hook(share: dict):
    """A DDP comm hook: bucket * share["w"], summed over ranks (instead of DDP's plain mean)."""

    def hook(_state, bucket):
        grad = bucket.buffer()
        grad.mul_(share["w"])
        return dist.all_reduce(grad, async_op=True).get_future().then(lambda fut: fut.value()[0])

    return hook


def _mark_sparse(model: nn.Module, settings: TrainSettings) -> None:
    """Switch the tables a sparse optimiser will own to sparse gradients before DDP sees them (as `_optimizers` picks)."""
    if settings.embedding_optimizer == "adam":
        return
    named = {id(p) for p in model.sparse_parameters()} if hasattr(model, "sparse_parameters") else set()
    for m in model.modules():
        if isinstance(m, nn.Embedding) and (not named or id(m.weight) in named):
            m.sparse = True


def ddp_train(model: nn.Module, train_samples: Samples, valid_samples: Samples,
              settings: TrainSettings = TrainSettings(), *,
              progress: Callable[[dict], None] | None = None) -> tuple[nn.Module, TrainResult]:
    """Train `model` with this process's DDP group (initialised by the caller); returns (model, result).

    Every rank passes the same samples and settings; each ends with the same weights.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ddp_train needs an initialised process group (torch.distributed.init_process_group)")
    rank, world = dist.get_rank(), dist.get_world_size()
    _mark_sparse(model, settings)
    replica = Replica(model, forward_sync_buffers=False)  # buffers (calibration) are set alike on every rank
    shard = ShardedSamples(**{f.name: getattr(train_samples, f.name) for f in dataclasses.fields(Samples)},
                           rank=rank, world=world)
    shard.share["w"] = 1.0 / world
    replica.register_comm_hook(None, _weighted_sum_hook(shard.share))
    local = settings.model_copy(update={"checkpoint_dir": None}) if rank else settings  # one writer
    result = train(replica, shard, valid_samples, local, progress=progress if rank == 0 else None)
    return model, result


@contextlib.contextmanager
def process_group(backend: str = "gloo", *, rank: int | None = None, world: int | None = None, port: int | None = None):
    """Join a DDP group and leave it after; yields (rank, world). Without arguments the group is the one torchrun
    describes in the environment; with rank, world and port, a group of local processes (spawned ones) on
    127.0.0.1. The trainer runs on CPU, hence gloo; nccl needs the model and batches on GPUs."""
    if port is not None:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if rank is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()
