"""`homefeed train --model eges|deepwalk|mind|mind1 [--nproc N]` through the real CLI on the tiny shop: the channel
folder it writes loads and serves, the DDP run (2 torchrun processes, gloo) writes the same kind of folder with the
same vectors as one process, and a bad setting fails before any work."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from homefeed.cli import app
from homefeed.data.dataset import Dataset
from homefeed.data.user_state import states_at
from homefeed.recall import CHANNELS

FAST_WALK = json.dumps({"walks": {"walks_per_node": 2, "length": 8}, "train": {"dim": 8, "epochs": 1}, "top_n": 20})


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_deepwalk_one_process_and_ddp_write_the_same_servable_channel(tiny_dataset_dir, tmp_path):
    sets = ["--set", f"recall.channel_settings.deepwalk={FAST_WALK}"]
    one = run("train", tiny_dataset_dir, "--out", tmp_path / "one", "--model", "deepwalk", *sets)
    assert one.exit_code == 0, one.stderr
    two = run("train", tiny_dataset_dir, "--out", tmp_path / "two", "--model", "deepwalk", "--nproc", 2, *sets)
    assert two.exit_code == 0, two.stderr
    assert "2 DDP processes" in two.stdout
    a, b = (np.load(tmp_path / name / "vectors.npz") for name in ("one", "two"))
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    ds = Dataset.load(tiny_dataset_dir)
    channel = CHANNELS["deepwalk"].load(tmp_path / "two")
    states = states_at(ds.events, ds.users, ds.split.valid_end)[:20]
    assert sum(len(channel.recall(state, 10)) for state in states) > 0


def test_train_channel_refuses_an_unknown_setting_before_work(tiny_dataset_dir, tmp_path):
    done = run("train", tiny_dataset_dir, "--out", tmp_path / "m", "--model", "mind", "--set",
               "recall.channel_settings.mind.epochs=1")
    assert done.exit_code == 2
    assert "recall.channel_settings.mind" in done.stderr and "train" in done.stderr
    assert not (tmp_path / "m").exists()
