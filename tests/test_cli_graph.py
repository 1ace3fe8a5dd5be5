"""`homefeed evaluate graph` and the graph channels in `homefeed evaluate recall`, run through the real CLI
(typer's CliRunner, in process) on the tiny shop with fast embedding settings."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from homefeed.cli import app

FAST = json.dumps({"walks": {"walks_per_node": 3, "length": 10}, "train": {"dim": 16, "epochs": 2, "lr": 0.05}, "top_n": 30})
FAST_SETS = ["--set", f"recall.channel_settings.eges={FAST}", "--set", f"recall.channel_settings.deepwalk={FAST}"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def graph_json(tiny_dataset_dir):
    done = run("evaluate", "graph", tiny_dataset_dir, "--json", *FAST_SETS)
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_json_holds_link_auc_per_method_and_cold_start_hitrate(graph_json):
    assert set(graph_json["auc"]) == {"deepwalk", "ges", "eges"}
    assert all(0.5 < v <= 1.0 for v in graph_json["auc"].values()), graph_json["auc"]  # better than chance
    assert set(graph_json["auc_context"]) == {"deepwalk", "ges", "eges"}  # the channel's own score, too
    assert all(0.5 < v <= 1.0 for v in graph_json["auc_context"].values()), graph_json["auc_context"]
    cold = graph_json["cold_start_hitrate@50"]
    assert {"deepwalk", "ges", "eges", "itemcf", "swing"} <= set(cold)
    # nothing clicked a cold item before the test days: only side information can reach one
    assert cold["itemcf"] == cold["swing"] == cold["deepwalk"] == 0.0
    assert graph_json["setup"]["k"] == 50 and graph_json["setup"]["cold_items"] > 0


def test_table_with_chosen_methods_and_k(tiny_dataset_dir):
    done = run("evaluate", "graph", tiny_dataset_dir, "--methods", "deepwalk,eges", "--k", "20", "--max-users", "5",
               *FAST_SETS)
    assert done.exit_code == 0, done.stderr
    assert "link_auc" in done.stdout and "cold_hitrate@20" in done.stdout
    rows = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("│")]
    assert rows[:2] == ["deepwalk", "eges"] and "ges" not in rows


def test_unknown_method_and_bad_setting_are_named(tiny_dataset_dir):
    done = run("evaluate", "graph", tiny_dataset_dir, "--methods", "deepwalk,bge")
    assert done.exit_code == 2 and "'bge'" in done.stderr and "valid methods: deepwalk, ges, eges" in done.stderr
    done = run("evaluate", "graph", tiny_dataset_dir, "--set", 'recall.channel_settings.eges={"walks": {"lenght": 5}}')
    assert done.exit_code == 2 and "lenght" in done.stderr


def test_graph_channels_in_evaluate_recall(tiny_dataset_dir):
    done = run("evaluate", "recall", tiny_dataset_dir, "--channels", "itemcf,swing,eges,deepwalk", "--ks", "50", "--json",
               *FAST_SETS)
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result["channels"]) == ["itemcf", "swing", "eges", "deepwalk"]
    for name in ("eges", "deepwalk"):
        assert result["channels"][name]["users_served"] > 0 and result["channels"][name]["hitrate@50"] > 0
    assert result["merged"]["hitrate@50"] > 0
