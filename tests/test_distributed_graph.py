"""EGES / DeepWalk skip-gram training under torch DDP (2 gloo processes on CPU) against one process.

- deterministic set-up (fixed seeds, one torch thread, a batch that does not split evenly, shared side tables
  whose rows move by their mean over the *whole* batch): both ranks end with bitwise identical tables, equal to
  single-process training within 1e-5;
- `fit_eges_distributed` (torchrun, 2 ranks): rank 0 writes the files a single-process `EGES.fit(...).save`
  writes, with the same vectors within 1e-5.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from homefeed.data.dataset import Dataset
from homefeed.recall.graph.channel import EGES, DeepWalk, EGESSettings
from homefeed.recall.graph.eges import EGESModel

FAST = {"walks": {"walks_per_node": 3, "length": 10}, "train": {"dim": 8, "epochs": 2, "batch_size": 101, "lr": 0.05},
        "top_n": 20}
MODELS = {"eges": lambda: EGES(settings=EGESSettings(**FAST)), "deepwalk": lambda: DeepWalk(settings=DeepWalk.Settings(**FAST))}


def _tables(model) -> dict[str, np.ndarray]:
    out = {"ids": model.ids, "attention": model.attention, "context": model.context}
    out |= {f"side{j}": t for j, t in enumerate(model.sides)}
    return {k: v.numpy().copy() for k, v in out.items()}


def _rank(rank: int, world: int, port: int, dataset: str, out: str, mode: str) -> None:
    """One DDP rank (spawned): embed the tiny shop on its shard, save its tables."""
    from homefeed.distributed.graph_train import group_shard
    from homefeed.distributed.train import process_group

    torch.set_num_threads(1)
    with process_group(rank=rank, world=world, port=port):
        emb = MODELS[mode]().embed(Dataset.load(dataset), shard=group_shard())
        np.savez(f"{out}/rank{rank}.npz", **_tables(emb.model))
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(emb.log["epoch_loss"], f)


def test_two_ranks_match_each_other_and_one_process(tiny_dataset_dir, tmp_path, mode="eges"):
    from homefeed.distributed.launch import free_port

    mp.spawn(_rank, args=(2, free_port(), str(tiny_dataset_dir), str(tmp_path), mode), nprocs=2, join=True)
    torch.set_num_threads(1)
    single = MODELS[mode]().embed(Dataset.load(tiny_dataset_dir))
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    expected = _tables(single.model)
    assert sorted(ranks[0].files) == sorted(expected)
    if mode == "eges":
        assert len(single.model.sides) >= 2  # shared side tables were trained and compared
    for name, value in expected.items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=f"{name} differs between ranks")
        np.testing.assert_allclose(ranks[0][name], value, rtol=0, atol=1e-5, err_msg=name)
    start = EGESModel(single.model.ids.shape[0], single.model.side, dim=8, mode=single.model.mode).ids.numpy()
    assert np.abs(expected["context"]).max() > 0.01 and np.abs(expected["ids"] - start).max() > 0.01  # it trained
    losses = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert losses[0] == losses[1]
    np.testing.assert_allclose(losses[0], single.log["epoch_loss"], rtol=1e-5)  # the summed loss of the whole batch


def test_fit_eges_distributed_writes_the_single_process_artefact(tiny_dataset_dir, tmp_path):
    from homefeed.distributed.graph_train import fit_eges_distributed

    settings = EGESSettings(**FAST)
    ddp = fit_eges_distributed(tiny_dataset_dir, tmp_path / "ddp", settings, nproc=2)
    torch.set_num_threads(1)
    EGES(settings=settings).fit(Dataset.load(tiny_dataset_dir)).save(tmp_path / "one")
    one = EGES.load(tmp_path / "one")
    names = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731
    assert names(tmp_path / "ddp") == names(tmp_path / "one")
    assert (tmp_path / "ddp" / "settings.json").read_text() == (tmp_path / "one" / "settings.json").read_text()
    assert one.warm_.sum() > 50
    np.testing.assert_array_equal(ddp.warm_, one.warm_)
    np.testing.assert_allclose(ddp.vectors_, one.vectors_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ddp.context_, one.context_, rtol=0, atol=1e-5)
    rows = np.flatnonzero(one.norms_ > 0)[:50]
    same = [len(set(ddp.table_.neighbors_of(i)[0][:5]) & set(one.table_.neighbors_of(i)[0][:5])) / 5 for i in rows]
    assert np.mean(same) > 0.95


def test_refuses_partitioned_training():
    from homefeed.distributed.graph_train import fit_eges_distributed

    with pytest.raises(ValueError, match="partition.parts = 1"):
        fit_eges_distributed("unused", "unused", EGESSettings(partition={"parts": 2}), nproc=2)
