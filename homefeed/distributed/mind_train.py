"""Data-parallel MIND training: `recall.mind.train.train_mind`, unchanged, run by every rank of a torch DDP group.

As for the ranker (`distributed/train.py`): every rank holds the whole model and every sample, draws
the same seeded permutation, negatives and routing logits for each global batch (the single-process
run's batch), computes the loss of its own rows of it, and DDP sums the gradients with the
weighted-sum hook (rank r's gradient times n_r / B), so each step is the gradient of the mean loss
over the whole batch, the one-process step up to float rounding, sparse embedding gradients included.
Rank 0 scores the validation HitRate (the early-stopping signal) and broadcasts it, so every rank
keeps the same best epoch; every rank ends with the same weights and rank 0 writes the channel.

`fit_mind_distributed` starts `python -m torch.distributed.run --nproc_per_node N` on this module's
`main`: each rank loads the dataset and runs `MIND.fit` (or `MIND1.fit`) with `DDPShare`; what rank 0
saves is the folder a single-process `MIND(settings=...).fit(ds).save(out)` writes. On several
machines run the same module with `torchrun --nnodes` (docs/scale-out.md).

    >>> log = fit_mind_distributed("out/tiny_ds", "out/mind_ddp", MINDSettings(), nproc=2)   # doctest: +SKIP
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from homefeed.distributed.launch import rank_parser, run_torchrun
from homefeed.distributed.train import Replica, _weighted_sum_hook, process_group
from homefeed.recall.mind import MIND, MIND1, MIND1Settings, MINDSettings
from homefeed.recall.mind.model import MINDModel
from homefeed.recall.mind.train import Parallel

CHANNELS = {"mind": MIND, "mind1": MIND1}


class DDPShare(Parallel):
    """This rank's part of MIND training in the initialised process group."""

    def __init__(self):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DDPShare needs an initialised process group (torch.distributed.init_process_group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.share = {"w": 1.0 / self.world}

    @property
    def weight(self) -> float:
        return self.share["w"]

    def wrap(self, model: MINDModel) -> torch.nn.Module:
        replica = Replica(model, forward_sync_buffers=False)  # buffers (item side codes, serve logits) are alike
        replica.register_comm_hook(None, _weighted_sum_hook(self.share))
        return replica

    def rows(self, n: int) -> slice:
        """This rank's contiguous block of the batch (the blocks of `torch.tensor_split`); a rank whose block is
        empty computes row 0 at weight 0, so every rank takes every step."""
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        self.share["w"] = (hi - lo) / n
        return slice(lo, hi) if hi > lo else slice(0, 1)

    def total(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0])

    def score(self, validate: Callable[[], float]) -> float:
        t = torch.tensor([validate() if self.rank == 0 else 0.0], dtype=torch.float64)
        dist.broadcast(t, 0)
        return float(t[0])


def fit_mind_distributed(dataset: str | Path, out: str | Path, settings: MINDSettings, nproc: int, *,
                         channel: str | None = None) -> dict:
    """Fit the MIND channel (`mind1` when `settings` is MIND1Settings, or as `channel` says) with `nproc` DDP
    processes; rank 0 saves it to `out` (`MIND.load(out)` reads it). Returns its training log (meta.json "log")."""
    channel = channel or ("mind1" if isinstance(settings, MIND1Settings) else "mind")
    if channel not in CHANNELS:
        raise ValueError(f"unknown MIND channel {channel!r}; valid: {', '.join(CHANNELS)}")
    spec = json.dumps({"channel": channel, "settings": settings.model_dump()})
    run_torchrun("homefeed.distributed.mind_train", dataset, out, spec, nproc, what="MIND training")
    return json.loads((Path(out) / "meta.json").read_text())["log"]


def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, fit the MIND channel with DDP, rank 0 saves it to --out."""
    from homefeed.data.dataset import Dataset

    args = rank_parser(main.__doc__, '{"channel": "mind" | "mind1", "settings": MINDSettings} as JSON').parse_args(argv)
    spec = json.loads(Path(args.settings).read_text())
    if spec.get("channel") not in CHANNELS:
        raise SystemExit(f"{args.settings}: \"channel\" must be one of {', '.join(CHANNELS)}, got {spec.get('channel')!r}")
    cls = CHANNELS[spec["channel"]]
    settings = cls.Settings.model_validate(spec.get("settings", {}))
    dataset = Dataset.load(args.dataset)
    with process_group() as (rank, world):
        rec = cls(settings=settings).fit(dataset, parallel=DDPShare())
        if rank == 0:
            rec.save(args.out)
            print(f"rank 0 of {world}: saved the {cls.name} channel to {args.out}", flush=True)


if __name__ == "__main__":
    main()
