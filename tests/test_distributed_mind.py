"""MIND training under torch DDP (2 gloo processes on CPU) against one process.

- deterministic set-up (fixed epochs, a seeded generator for the order, negatives and routing logits, a
  global batch that does not split evenly, sparse embedding gradients): both ranks end with bitwise identical
  weights, equal to single-process training within 1e-5;
- the launch path (`fit_mind_distributed`, torchrun, early stopping on validation HitRate broadcast by rank 0):
  rank 0 writes the folder a single-process fit writes, `MIND.load` serves it, and its test HitRate is within
  noise of the single-process channel's.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.multiprocessing as mp

from homefeed.recall.evaluate import evaluate_recall
from homefeed.recall.mind import MIND, MINDSettings
from homefeed.recall.mind.model import MINDModel
from homefeed.recall.mind.samples import NegativeSampler, build_sequences
from homefeed.recall.mind.train import TrainSettings, train_mind
from recall_fixtures import synthetic_dataset

EXACT = TrainSettings(epochs=3, batch_size=97, negatives=40, lr=0.01, seed=5, threads=1)


def _dataset():
    return synthetic_dataset(seed=2, n_users=120, n_items=150, days=4)


def _setup():
    ds = _dataset()
    seqs = build_sequences(ds.events_in("train"), max_len=10)
    torch.manual_seed(3)
    model = MINDModel(n_items=ds.n_items, side_codes=np.zeros((ds.n_items, 0), np.int64), side_sizes=[],
                      profile_sizes=[3], dim=8, interests=3, max_len=10, hidden=(8,))
    profiles = np.random.default_rng(0).integers(0, 3, (ds.n_users + 1, 1))
    return model, seqs, profiles, NegativeSampler(seqs.counts(ds.n_items))


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One DDP rank (spawned): train the deterministic set-up, save its weights and loss log."""
    from homefeed.distributed.mind_train import DDPShare
    from homefeed.distributed.train import process_group

    torch.set_num_threads(1)
    with process_group(rank=rank, world=world, port=port):
        model, seqs, profiles, sampler = _setup()
        log = train_mind(model, seqs, profiles, sampler, settings=EXACT, parallel=DDPShare())
        np.savez(f"{out}/rank{rank}.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(log["epoch_loss"], f)


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    from homefeed.distributed.launch import free_port

    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    model, seqs, profiles, sampler = _setup()
    assert len(seqs) % EXACT.batch_size % 2 == 1  # the last batch splits unevenly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_mind(model, seqs, profiles, sampler, settings=EXACT)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"{name} differs between ranks")
        np.testing.assert_allclose(ranks[0][name], value.numpy(), rtol=0, atol=1e-5, err_msg=name)
    moved = [n for n, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[n])]
    assert len(moved) >= 6, moved  # item table, profile table, routing map and the MLP all trained and were compared
    losses = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert losses[0] == losses[1]  # the epoch loss is summed over the ranks' rows
    np.testing.assert_allclose(losses[0], log["epoch_loss"], rtol=1e-5)


def test_fit_mind_distributed_writes_the_single_process_channel(tmp_path):
    from homefeed.distributed.mind_train import fit_mind_distributed

    ds = _dataset()
    ds.save(tmp_path / "ds")
    settings = MINDSettings(model={"dim": 16, "max_len": 10, "hidden": [16], "interests": 2},
                            train={"epochs": 4, "negatives": 50, "batch_size": 64, "check_steps": 1, "patience": 1,
                                   "threads": 1})
    log = fit_mind_distributed(tmp_path / "ds", tmp_path / "ddp", settings, nproc=2)
    single = MIND(settings=settings)
    single.fit(ds)
    single.save(tmp_path / "one")
    names = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731
    assert names(tmp_path / "ddp") == names(tmp_path / "one")
    assert log["samples"] > 0 and log["valid"] and log["best_epoch"] >= 1
    served = MIND.load(tmp_path / "ddp")
    result = evaluate_recall(ds, {"ddp": served, "one": single}, None, ks=(50,))["channels"]
    hr = {name: result[name]["hitrate@50"] for name in ("ddp", "one")}
    assert hr["ddp"] > 0.2, hr
    assert abs(hr["ddp"] - hr["one"]) < 0.05, hr
