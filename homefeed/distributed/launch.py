"""`homefeed train ... --nproc N`: the rank part trained by N torchrun processes under DDP, rank 0 writing it.

`train_distributed` starts `python -m torch.distributed.run --nproc_per_node N` on this module's
`main`; every rank loads the dataset, builds the same samples and runs `RankPart.fit` with
`ddp_train` as the trainer, so what rank 0 saves (TorchScript, int8 choice on valid, encoders,
metrics, served.json) is the artefact a single-process `homefeed train` writes. The settings travel
as JSON, so every rank trains exactly what the caller typed. On several machines run the same module
with `torchrun --nnodes` (docs/scale-out.md).

    >>> metrics = train_distributed("out/tiny_ds", "out/rank_ddp", RankPartSettings(preset="bst"), nproc=2)  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from homefeed.rank.part import RankPartSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(module: str, dataset: str | Path, out: str | Path, settings_file: str | Path, nproc: int, *,
                     extra: tuple[str, ...] = (), port: int | None = None) -> list[str]:
    """The single-machine torchrun command line that runs `module`'s `main` in `nproc` processes."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()),
            "-m", module, str(dataset), "--out", str(out), "--settings", str(settings_file), *extra]


def run_torchrun(module: str, dataset: str | Path, out: str | Path, settings_json: str, nproc: int, *,
                 what: str, extra: tuple[str, ...] = ()) -> None:
    """Run `module`'s rank entry in `nproc` local processes with the settings (JSON, in a temporary file); the
    machine's threads (torch and numba) are split between the processes; a failed rank raises RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="homefeed_ddp_") as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(settings_json)
        threads = str(max(1, (os.cpu_count() or 1) // nproc))
        env = os.environ | {"OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
        done = subprocess.run(torchrun_command(module, dataset, out, settings_file, nproc, extra=extra), env=env)
    if done.returncode:
        raise RuntimeError(f"distributed {what} failed (torchrun exit code {done.returncode}); see the ranks' output above")


def rank_parser(description: str | None, settings_help: str) -> argparse.ArgumentParser:
    """The arguments every rank entry takes: the dataset, --out and --settings (a JSON file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("dataset")
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", required=True, help=settings_help)
    return parser


def train_distributed(dataset: str | Path, out: str | Path, settings: RankPartSettings, nproc: int) -> dict:
    """Train the rank part with `nproc` DDP processes; returns the metrics rank 0 saved in `out/metrics.json`."""
    run_torchrun("homefeed.distributed.launch", dataset, out, settings.model_dump_json(), nproc, what="training")
    return json.loads((Path(out) / "metrics.json").read_text())


@contextlib.contextmanager
def ddp_trainer():
    """`fit_preset` trains through `ddp_train` inside this block (homefeed.rank.evaluate looks `train` up at call time)."""
    from homefeed.distributed.train import ddp_train
    from homefeed.rank import evaluate

    single = evaluate.train

    def trainer(model, train_samples, valid_samples, settings, *, progress=None):
        return ddp_train(model, train_samples, valid_samples, settings, progress=progress)[1]

    evaluate.train = trainer
    try:
        yield
    finally:
        evaluate.train = single


def main(argv: list[str] | None = None) -> None:
    """One rank: join the group, fit the rank part with DDP, rank 0 saves it to --out."""
    from homefeed.data.dataset import Dataset
    from homefeed.distributed.train import process_group
    from homefeed.rank.part import RankPart

    args = rank_parser(main.__doc__, "RankPartSettings as JSON").parse_args(argv)
    settings = RankPartSettings.model_validate_json(Path(args.settings).read_text())
    dataset = Dataset.load(args.dataset)
    with process_group() as (rank, world), ddp_trainer():
        part = RankPart().fit(dataset, settings)
        if rank == 0:
            part.save(args.out)
            print(f"rank 0 of {world}: saved the rank part to {args.out}", flush=True)
        else:
            shutil.rmtree(part._folder, ignore_errors=True)  # the same files, written by rank 0


if __name__ == "__main__":
    main()
