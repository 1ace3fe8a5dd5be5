"""Closed-loop experiments: arm assignment, the served page equals `/v1/homepage`, events change the next page,
bootstrap intervals that cover what they should, the negative controls, and the CLI's JSON and HTML report."""
import base64
import json
import shutil
import sqlite3
import subprocess

import numpy as np
import polars as pl
import pytest

from homefeed.config import ConfigError
from homefeed.experiment.arms import assign, load_arm
from homefeed.experiment.stats import ratio_replicates, relative_difference, weights
from homefeed.experiment.visits import Population


# --- assignment -----------------------------------------------------------------------------------
def test_assignment_is_stable_balanced_and_salted():
    ids = [str(i) for i in range(20_000)]
    a = assign(ids, [1, 1])
    assert np.array_equal(a, assign(ids, [1, 1]))
    assert np.array_equal(a[::-1], assign(ids[::-1], [1, 1]))  # independent of order
    assert np.array_equal(a[:50], assign(ids[:50], [1, 1]))  # ... and of the other users
    assert abs(a.mean() - 0.5) < 0.02
    three = np.bincount(assign(ids, [1, 1, 2]), minlength=3) / len(ids)
    assert np.allclose(three, [0.25, 0.25, 0.5], atol=0.02)
    other = assign(ids, [1, 1], salt="another experiment")
    assert 0.4 < (other != a).mean() < 0.6  # a new salt reshuffles, independently
    # blake2b, not Python's per-process hash: the same split in every process and release
    assert assign(["42", "43", "44", "45"], [1, 1], salt="x").tolist() == _golden_split()


def _golden_split() -> list[int]:
    import hashlib

    u = [int.from_bytes(hashlib.blake2b(f"x\0{i}".encode(), digest_size=8).digest(), "big") / 2.0**64 for i in (42, 43, 44, 45)]
    return [int(x >= 0.5) for x in u]


def test_arm_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[arm]\nrnak = false\n")
    with pytest.raises(ConfigError, match="bad.toml.*rnak"):
        load_arm(bad)
    bad.write_text("[recall]\nchanels = ['itemcf']\n")
    with pytest.raises(ConfigError, match="bad.toml.*chanels"):
        load_arm(bad)
    with pytest.raises(FileNotFoundError, match="shipped arms: .*itemcf"):
        load_arm("no_such_arm")


def test_shipped_arms_load_and_share_builds_only_when_equal():
    arms = {n: load_arm(n) for n in ("popular", "itemcf", "recall_merge", "full_no_mechanism", "full", "full_copy", "shuffled")}
    assert arms["itemcf"].config.recall.channels == ["itemcf"] and not arms["itemcf"].settings.rank
    assert arms["full"].build_key() == arms["full_copy"].build_key() == arms["shuffled"].build_key()
    assert arms["full"].build_key() == arms["full_no_mechanism"].build_key()  # the mechanism switch is serving-only
    assert len({arms[n].build_key() for n in ("popular", "itemcf", "recall_merge", "full")}) == 4
    assert len({a.mechanism_key() for a in arms.values()}) == 1
    off = arms["full_no_mechanism"].serving_config()  # the pipeline's own switches, not a private bypass
    assert off.serve.rank and not off.serve.mechanism and off.mechanism == arms["full"].config.mechanism
    assert not arms["itemcf"].serving_config().serve.rank and not arms["itemcf"].serving_config().serve.mechanism
    assert arms["full"].serving_config().serve.rank and arms["full"].serving_config().serve.mechanism


# --- statistics -------------------------------------------------------------------------------------
def _users(rng, n, ctr):
    shown = 1 + rng.poisson(15, n)
    p = rng.beta(2, 2 / ctr - 2, n)  # heterogeneous users with mean ctr
    return rng.binomial(shown, p).astype(float), shown.astype(float)


def test_bootstrap_interval_covers_a_known_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = excluded_zero = aa_covered = 0
    reps = 50
    for _ in range(reps):
        (ca, sa), (cb, sb), (cc, sc) = _users(rng, 2000, 0.05), _users(rng, 2000, 0.06), _users(rng, 2000, 0.05)
        wa, wb, wc = (weights(2000, 200, rng) for _ in range(3))
        ra, rb, rc = ratio_replicates(ca, sa, wa), ratio_replicates(cb, sb, wb), ratio_replicates(cc, sc, wc)
        d = relative_difference(cb.sum() / sb.sum(), ca.sum() / sa.sum(), rb, ra)
        covered += d["low"] <= 0.2 <= d["high"]
        excluded_zero += d["significant"]
        aa = relative_difference(cc.sum() / sc.sum(), ca.sum() / sa.sum(), rc, ra)
        aa_covered += aa["low"] <= 0 <= aa["high"]
    assert 0.84 <= covered / reps <= 1.0
    assert excluded_zero / reps > 0.9  # +20% CTR on 2,000 users a side is detected
    assert 0.84 <= aa_covered / reps <= 1.0  # identical arms: the interval covers 0 about 95% of the time


# --- the population and its visits ------------------------------------------------------------------
def test_visits_are_seeded_inside_the_day_and_batched_without_repeats(tiny_world):
    pop = Population.from_world(tiny_world, n_users=400, seed=3)
    assert len(pop.user_ids) == 400 and (pop.rate > 0).all()
    day = pop.day(1, seed=3)
    again = pop.day(1, seed=3)
    assert np.array_equal(day.user, again.user) and np.array_equal(day.ts, again.ts)
    assert (np.diff(day.ts) >= 0).all()
    assert (day.ts >= pop.start + 86400).all() and (day.ts < pop.start + 2 * 86400 + 600).all()
    assert (day.page == 0).any() and day.page.max() < pop.max_pages
    assert len(day) > 0.5 * pop.rate.sum()  # about rate visits a user, each 1..max_pages pages
    batches = day.batches()
    assert np.array_equal(np.concatenate(batches), np.arange(len(day)))
    assert all(len(set(day.user[b].tolist())) == len(b) for b in batches)


# --- one arm against the HTTP service ---------------------------------------------------------------
def _arm(tmp_path, bundle, name="full", extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[arm]\nbundle = "{bundle}"\n{extra}')
    return load_arm(path)


def _copy_store(src, dst):
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def _start(tmp_path, tiny_world, tiny_bundle, users, **kw):
    from homefeed.experiment.arm_run import ArmRun
    from homefeed.experiment.run import _prices

    arm = _arm(tmp_path, tiny_bundle, **kw)
    return ArmRun.start(arm, np.asarray(users, np.int64), arm.bundle_path, tmp_path / "arm", tiny_world, seed=0,
                        prices=_prices(tiny_world)[0])


@pytest.mark.parametrize("extra", ["", "rank = false\nmechanism = false\n"], ids=["full", "no_rank_no_mechanism"])
def test_the_served_page_equals_v1_homepage_for_the_same_state(tmp_path, tiny_world, tiny_bundle, extra):
    """The arm's page is /v1/homepage's under the arm's serving config (serve.rank / serve.mechanism: one code path)."""
    from fastapi.testclient import TestClient

    from homefeed.serve.api import create_app

    pop = Population.from_world(tiny_world)
    users = pop.user_ids[:40]
    run = _start(tmp_path, tiny_world, tiny_bundle, users, extra=extra)
    try:
        t = pop.start + 3600
        for step in range(3):  # a rebuild, then pages after the simulator's clicks were posted back
            u = int(users[step % 2])
            before = tmp_path / f"copy{step}.db"
            _copy_store(run.folder / "state.db", before)
            template = run.last_template.get(u)
            n = len(run.exposures)
            run.serve_batch(np.array([u]), np.array([t + 30 * step]), np.array([step]), 0)
            served = [(str(r[2]), r[6]) for r in run.exposures[n:]]
            app = create_app(tiny_bundle, run.arm.serving_config(), state=f"sqlite:{before}")
            with TestClient(app) as client:
                body = {"user_id": str(u), "now": t + 30 * step}
                if template is not None:
                    body["template_index"] = template
                page = client.post("/v1/homepage", json=body).json()
            app.state.service.close()
            http = [(it["item_id"], it["channel"]) for slot in page["slots"].values() for it in slot]
            assert served == http and len(served) > 0
    finally:
        run.close()


def test_events_from_the_simulator_change_the_next_page(tmp_path, tiny_world, tiny_bundle):
    pop = Population.from_world(tiny_world)
    u = int(pop.user_ids[7])
    run = _start(tmp_path, tiny_world, tiny_bundle, [u])
    try:
        t = pop.start + 7200
        run.serve_batch(np.array([u]), np.array([t]), np.array([0]), 0)
        first = [r[2] for r in run.exposures]
        bought = first[0]
        run.post([(str(u), str(bought), "buy", t + 2)], prefix="test")
        assert any(e.behavior == "buy" and e.item_id == str(bought) for e in run.store.recent_events(str(u)))
        run.serve_batch(np.array([u]), np.array([t + 30]), np.array([1]), 0)
        second = [r[2] for r in run.exposures[len(first):]]
        b = run.pipeline.bundle
        standard = b.standard_of[b.item_code(str(bought))]
        assert second != first
        assert standard not in {b.standard_of[b.item_code(str(i))] for i in second}  # the purchase filter blocks it
    finally:
        run.close()


# --- end to end: negative controls, JSON and the report ---------------------------------------------
@pytest.fixture(scope="module")
def controls_run(tiny_world, tiny_bundle, tmp_path_factory):
    """full, an identical copy and a shuffled ranker on every tiny-shop user for one day, through the CLI."""
    pytest.importorskip("matplotlib", reason="the report draws with matplotlib (pip install matplotlib)")
    from typer.testing import CliRunner

    from homefeed.experiment.cli import app

    folder = tmp_path_factory.mktemp("experiment")
    files = []
    for name, extra in (("full", ""), ("full_copy", ""), ("shuffled", 'ranker = "shuffled"\n')):
        files.append(str(_arm(folder, tiny_bundle, name, extra).path))
    report = folder / "report.html"
    res = CliRunner().invoke(app, [str(tiny_world), "--arms", ",".join(files), "--days", "1", "--control", "full",
                                   "--work", str(folder / "work"), "--boot", "400", "--report", str(report), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1]), report


def test_negative_controls_on_the_tiny_shop(controls_run):
    result, _ = controls_run
    vs = result["vs_control"]
    assert not vs["full_copy"]["ctr"]["significant"]  # A/A: the interval covers 0
    assert vs["full_copy"]["ctr"]["low"] < 0 < vs["full_copy"]["ctr"]["high"]
    assert vs["shuffled"]["ctr"]["significant"] and vs["shuffled"]["ctr"]["high"] < 0  # the shuffled ranker loses
    assert set(result["arms"]) == {"full", "full_copy", "shuffled"}
    assert sum(a["users"] for a in result["arms"].values()) == result["users"]
    for arm in result["arms"].values():
        assert arm["visits"] > 0 and arm["visits_per_s"] > 0
    for m in ("ctr", "purchases_per_visit", "gmv_per_visit", "categories_per_page", "repeat_exposure",
              "just_bought_pages", "coverage"):
        v = result["metrics"]["full"][m]
        assert v["low"] <= v["value"] <= v["high"], m
    assert result["latency_ms"]["full"]["total"]["p50"] > 0 and "values" not in result["latency_ms"]["full"]["total"]


def test_the_report_holds_its_figures(controls_run):
    result, report = controls_run
    text = report.read_text()
    pngs = [base64.b64decode(chunk.split("'", 1)[0]) for chunk in text.split("data:image/png;base64,")[1:]]
    assert len(pngs) == 3 + len(result["arms"])  # days, differences, latency, one example figure per arm
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 2000 for p in pngs)
    assert "simulation" in text and "full_copy" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the figures were checked as PNG files, not rendered")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-loaded="{len(pngs)}/{len(pngs)}"' in dom
