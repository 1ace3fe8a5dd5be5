"""The scale-out wiring of the command line: `--engine spark` for `build` and `evaluate recall` (the same bundle
and figures as `--engine local`), and `serve` handing its `--set` overrides to the workers intact.

The Spark tests run the real commands in process (typer's CliRunner) on the test run's one local[2] session:
the command reuses a running session and leaves it running (`distributed.session.spark_engine`).
`homefeed train --nproc 2` is tested in test_distributed_train.py.
"""
from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from homefeed.cli import app
from homefeed.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def untimed(result: dict) -> dict:
    """An evaluate report without its wall-clock figures (the only entries two runs may differ in)."""
    if isinstance(result, dict):
        return {k: untimed(v) for k, v in result.items() if "second" not in k and "ms" not in k.split("_") and k != "timings"}
    return result


def test_engine_options_are_checked(tiny_dataset_dir):
    bad = cli("evaluate", "recall", tiny_dataset_dir, "--engine", "dask", "--json")
    assert bad.exit_code == 2 and "valid engines are local, spark" in bad.output
    stray = cli("evaluate", "recall", tiny_dataset_dir, "--spark-master", "local[2]", "--json")
    assert stray.exit_code == 2 and "--spark-master needs --engine spark" in stray.output


def test_evaluate_recall_engine_spark_gives_the_local_figures(spark, tiny_dataset_dir):
    """Two Spark channels and a local one (every channel's Spark table on the tiny shop: the build test below)."""
    runs = {}
    for engine in ("spark", "local"):
        done = cli("evaluate", "recall", tiny_dataset_dir, "--engine", engine, "--channels", "itemcf,popular,retarget",
                   "--max-users", 300, "--json")
        assert done.exit_code == 0, done.output[-2000:]
        runs[engine] = json.loads(done.stdout)
    assert untimed(runs["spark"]) == untimed(runs["local"])
    assert set(runs["local"]["channels"]) == {"itemcf", "popular", "retarget"} and "merged" in runs["local"]
    assert runs["local"]["channels"]["itemcf"]["hitrate@50"] > 0
    assert not spark.sparkContext._jsc.sc().isStopped()  # the command left the suite's session running


def _pages(bundle_dir, users, now, tmp_path, name):
    from homefeed.config import Config
    from homefeed.serve.artefacts import ServingBundle
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.schemas import HomepageRequest
    from homefeed.serve.state import SQLiteStore

    pipeline = Pipeline(ServingBundle.load(bundle_dir), SQLiteStore(tmp_path / f"{name}.db"), Config())
    try:
        pages = [pipeline.homepage(HomepageRequest(user_id=u, now=now)) for u in users]
    finally:
        pipeline.close()
    return [[(slot, it.item_id, it.channel, it.score) for slot, items in p.slots.items() for it in items] for p in pages]


def test_build_engine_spark_serves_the_local_homepage(spark, tiny_bundle, tiny_dataset_dir, tmp_path):
    """The tiny bundle (built locally) copied, its recall part rebuilt by `homefeed build --engine spark`: every
    recall file (tables, popularity, crowd lists, the learned merger) is byte-identical, and both bundles serve
    the same homepages."""
    from conftest import FAST_BUILD

    local, dist = tmp_path / "local", tmp_path / "spark"
    for folder in (local, dist):
        shutil.copytree(tiny_bundle, folder, ignore=shutil.ignore_patterns(".complete"))
    sets = [arg for s in FAST_BUILD for arg in ("--set", s)]
    done = cli("build", tiny_dataset_dir, "--out", dist, "--parts", "recall", "--engine", "spark", *sets)
    assert done.exit_code == 0, done.output[-2000:]
    files = [json.loads((b / "manifest.json").read_text())["parts"]["recall"]["files"] for b in (local, dist)]
    assert set(files[0]) == set(files[1])
    assert {f.split("/")[1] for f in files[0]} >= {"itemcf", "swing", "ranki2i", "crowd", "popular", "merger"}
    differ = [f for f in files[0] if files[0][f]["sha256"] != files[1][f]["sha256"]]
    assert not differ, f"the Spark build wrote other recall files: {differ}"
    recent = pl.read_parquet(local / "data" / "recent_events.parquet")
    users = [str(u) for u in recent["user_raw"].unique(maintain_order=True).head(12)] + ["never-seen-user"]
    now = int(recent["ts"].max()) + 3600
    pages = {name: _pages(b, users, now, tmp_path, name) for name, b in (("local", local), ("spark", dist))}
    assert sum(len(p) for p in pages["local"]) > 12 * 10
    for user, want, got in zip(users, pages["local"], pages["spark"]):
        assert [row[:3] for row in got] == [row[:3] for row in want], f"user {user}: another page"
        np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-9, err_msg=user)


def test_serve_hands_set_overrides_to_the_workers_as_json(tiny_bundle, tmp_path):
    """A `--set` value holding ';' reaches the uvicorn worker whole: the admin token it sets opens /admin/reload
    (the old ';'-joined HOMEFEED_SET cut it in two and the worker refused the config)."""
    from conftest import free_port
    from homefeed.serve.process import start_server

    token = 'a;b "c"'
    proc, url = start_server(tiny_bundle, port=free_port(), state=f"sqlite:{tmp_path / 'state.db'}", quiet=True,
                             settings=(f"serve.admin_token={json.dumps(token)}",))
    try:
        reload = url + "/admin/reload"
        body = {"bundle": str(tmp_path / "no-bundle")}
        assert httpx.post(reload, json=body, headers={"X-Admin-Token": "a"}, timeout=30).status_code == 401
        assert httpx.post(reload, json=body, headers={"X-Admin-Token": token}, timeout=30).status_code == 409  # token ok
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_env_round_trips_every_override(monkeypatch):
    from homefeed.cli_support import serve_env
    from homefeed.serve.api import settings_from_env

    overrides = ['serve.admin_token="x;y"', "serve.max_inflight=3", 'rank.preset="din"']
    env = serve_env("b", None, overrides, None)
    assert json.loads(env["HOMEFEED_SET"]) == overrides and "HOMEFEED_STATE" not in env
    monkeypatch.setenv("HOMEFEED_SET", env["HOMEFEED_SET"])
    assert settings_from_env() == overrides
    assert load_config(None, settings_from_env()).serve.admin_token == "x;y"
