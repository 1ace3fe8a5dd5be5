"""`homefeed train DATASET --model eges|deepwalk --nproc N`: the graph-embedding channel trained by N torch DDP ranks.

The skip-gram trainer is a hand-written sparse SGD (`homefeed.recall.graph.skipgram`), so there is no
DistributedDataParallel module to wrap; the same scheme is written out instead. Every rank builds the
same graph, walks and windows (all seeded) and draws every batch's negatives from the same generator;
rank r scores the r-th slice of each batch (logits and their gradients), `gather_rows` (one all_gather
over gloo) hands every rank all slices' gradients w.r.t. the logits and centre vectors, (B, C + K) and
(B, D), and every rank applies the whole batch: the single-process step, rows added in the same order. So all ranks keep identical tables,
equal to one process up to float rounding of the split dot products. Before that, every rank makes the
same pick of training cycles and side start on held-out edges (`recall/graph/validation.py`: unsharded,
seeded, so alike on every rank). Rank 0 builds the i2i table and saves the channel: the artefact
`EGES(settings).fit(dataset).save(out)` writes.

    >>> rec = fit_eges_distributed("out/tiny_ds", "out/eges_ddp", EGESSettings(), nproc=2)  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from homefeed.distributed.launch import rank_parser, run_torchrun
from homefeed.recall.graph.channel import EGES, DeepWalk, DeepWalkSettings, EGESSettings
from homefeed.recall.graph.skipgram import Shard

CHANNELS = {"eges": EGES, "deepwalk": DeepWalk}


def gather_rows(tensors: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order (`Shard.gather`): this rank holds
    sizes[rank] rows of each (n, w_i) float32 tensor. One all_gather of the rows packed side by side, padded to
    the largest slice (gloo's all_gather wants equal sizes); every rank knows `sizes`, so nothing else travels."""
    widths = [t.shape[1] for t in tensors]
    packed = torch.zeros(max(sizes), sum(widths), dtype=torch.float32)
    packed[:sizes[dist.get_rank()]] = torch.cat([t.float() for t in tensors], 1)
    every = [torch.empty_like(packed) for _ in sizes]
    dist.all_gather(every, packed)
    whole = torch.cat([block[:n] for block, n in zip(every, sizes)])
    return list(torch.split(whole, widths, dim=1))


def _total(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def group_shard() -> Shard:
    """This process's `Shard` of the initialised torch.distributed group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group_shard needs an initialised process group (torch.distributed.init_process_group)")
    return Shard(dist.get_rank(), dist.get_world_size(), gather_rows, _total)


def channel_name(settings: DeepWalkSettings) -> str:
    return "eges" if isinstance(settings, EGESSettings) else "deepwalk"


def fit_eges_distributed(dataset: str | Path, out: str | Path, settings: DeepWalkSettings, nproc: int) -> DeepWalk:
    """Train the `eges` channel (EGESSettings) or `deepwalk` (DeepWalkSettings) with `nproc` DDP processes;
    rank 0 saves it to `out`; returns the saved channel, loaded."""
    if not isinstance(settings, DeepWalkSettings):
        raise TypeError(f"settings must be EGESSettings or DeepWalkSettings, got {type(settings).__name__}")
    if settings.partition.parts > 1:
        raise ValueError("distributed graph training trains the whole graph; set partition.parts = 1")
    channel = channel_name(settings)
    run_torchrun("homefeed.distributed.graph_train", dataset, out, settings.model_dump_json(), nproc,
                 what="graph training", extra=("--channel", channel))
    return CHANNELS[channel].load(out)


def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, train the graph channel's vectors on its shard, rank 0 builds the table and saves."""
    from homefeed.data.dataset import Dataset
    from homefeed.distributed.train import process_group

    parser = rank_parser(main.__doc__, "EGESSettings or DeepWalkSettings as JSON")
    parser.add_argument("--channel", choices=sorted(CHANNELS), default="eges")
    args = parser.parse_args(argv)
    cls = CHANNELS[args.channel]
    settings = cls.Settings.model_validate_json(Path(args.settings).read_text())
    dataset = Dataset.load(args.dataset)
    with process_group() as (rank, world):
        rec = cls(settings=settings)
        emb = rec.embed(dataset, shard=group_shard())
        if rank == 0:
            rec.fit_embedding(emb).save(args.out)
            print(f"rank 0 of {world}: saved the {args.channel} channel to {args.out}", flush=True)


if __name__ == "__main__":
    main()
