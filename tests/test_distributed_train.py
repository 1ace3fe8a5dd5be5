"""Ranker training under torch DDP (2 gloo processes on CPU) against one process.

- deterministic set-up (no dropout, fixed seed, a batch that does not split evenly, sparse embedding
  gradients): both ranks end with bitwise identical weights, equal to single-process training within 1e-5;
- the CLI path (`homefeed train --nproc 2`: `train_distributed`, torchrun): rank 0 writes the same artefact
  files as `--nproc 1`, with a test AUC within 0.005 of it on the tiny shop.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.multiprocessing as mp

from homefeed.rank.model import build_model
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, train
from test_rank_samples import toy_dataset

SMALL = {"embed_dim": 4, "hidden": [16]}
EXACT = TrainSettings(epochs=3, batch_size=331, min_steps_per_epoch=1, lr=0.01, patience=3, seed=5, threads=1,
                      embedding_optimizer="sparse_adam")


def _parts():
    return build_all(toy_dataset(n_users=90, days=5), SampleSettings(drop_bots=False, active_min_actions=0))


def _model(parts, settings):
    torch.manual_seed(settings.seed)
    return build_model(parts["train"].spec, "deepfm", **SMALL)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One DDP rank (spawned): train the deterministic set-up, save its weights and result."""
    from homefeed.distributed.train import ddp_train, process_group

    torch.set_num_threads(1)
    with process_group(rank=rank, world=world, port=port):
        parts = _parts()
        model, result = ddp_train(_model(parts, EXACT), parts["train"], parts["valid"], EXACT)
        np.savez(f"{out}/rank{rank}.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"best_epoch": result.best_epoch, "auc": result.best_valid_auc, "epochs": len(result.history)}, f)


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    from homefeed.distributed.launch import free_port

    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    parts = _parts()
    assert len(parts["train"]) % EXACT.batch_size % 2 == 1  # the last batch splits unevenly
    single = _model(parts, EXACT)
    result = train(single, parts["train"], parts["valid"], EXACT)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    meta = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert meta[0] == meta[1]
    assert meta[0]["best_epoch"] == result.best_epoch and meta[0]["epochs"] == len(result.history)
    for name, value in single.state_dict().items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"{name} differs between ranks")
        np.testing.assert_allclose(ranks[0][name], value.detach().numpy(), rtol=0, atol=1e-5, err_msg=name)
    moved = [n for n, v in single.state_dict().items() if v.is_floating_point() and np.abs(v.numpy()).max() > 0]
    assert len(moved) > 3  # real weights were compared, not empty tables


def test_train_nproc_2_writes_the_single_process_artefact(tiny_dataset_dir, tmp_path):
    """`homefeed train --model bst --nproc 2` (torchrun, 2 gloo ranks) against `--nproc 1` on the tiny shop: the
    same files, the same samples, a test AUC within 0.005; both print the metrics table."""
    from typer.testing import CliRunner

    from homefeed.cli import app

    runs = {}
    for nproc in (2, 1):
        out = tmp_path / f"nproc{nproc}"
        done = CliRunner().invoke(app, ["train", str(tiny_dataset_dir), "--out", str(out), "--model", "bst",
                                        "--nproc", str(nproc), "--set", 'rank.train={"epochs": 2}'], catch_exceptions=False)
        assert done.exit_code == 0, done.output[-3000:]
        assert "test metrics" in done.stdout and "served model" in done.stdout  # the metrics table was printed
        runs[nproc] = json.loads((out / "metrics.json").read_text())
    names = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731
    assert names(tmp_path / "nproc2") == names(tmp_path / "nproc1")
    served = [json.loads((tmp_path / f"nproc{n}" / "served.json").read_text()) for n in (2, 1)]
    assert served[0]["inputs"] == served[1]["inputs"] and served[0]["preset"] == "bst"
    ddp, single = runs[2], runs[1]
    assert ddp["train_rows"] == single["train_rows"] and ddp["rows"] == single["rows"]
    assert ddp["auc"] > 0.7
    assert abs(ddp["auc"] - single["auc"]) < 0.005, (ddp["auc"], single["auc"])
