"""serve.experiment: live A/B arms in the service, over real HTTP (uvicorn in a subprocess, real SQLite).

The split is the salted hash of the user id, so the test computes each user's arm itself and checks the
server agrees: per user (the `arm` of each homepage), per arm in /metrics and in /admin/experiments.
"""
import json
import os
import sqlite3
import subprocess
import sys

import httpx
import numpy as np
import polars as pl
import pytest

from conftest import free_port

from homefeed.config import Config, ConfigError, ExperimentArm, load_config
from homefeed.serve.experiments import arm_config, arm_index, check_control
from homefeed.serve.process import start_server

TOKEN = "ab-token"
EXPERIMENT = {"name": "ab", "salt": "s1", "control": "control", "arms": [
    {"name": "control", "share": 0.5},
    {"name": "plain", "share": 0.3, "overrides": ["serve.mechanism=false"]},
    {"name": "norank", "share": 0.2, "overrides": ["serve.rank=false", "serve.mechanism=false"]}]}
NAMES = [a["name"] for a in EXPERIMENT["arms"]]
SHARES = [a["share"] for a in EXPERIMENT["arms"]]
NOW = 1512230000
BUDGET = "serve.recall_budget_ms=30000"  # no channel dropped for lateness on a busy machine: pages compare exactly


def expected_arm(users: list[str]) -> list[str]:
    return [NAMES[i] for i in arm_index(users, SHARES, salt=EXPERIMENT["salt"])]


def experiment_settings(**extra) -> list[str]:
    return [f"serve.experiment={json.dumps(EXPERIMENT | extra)}"]


# --- assignment ---------------------------------------------------------------------------------
def test_assignment_is_stable_balanced_salted_and_the_same_in_another_process():
    ids = [f"user-{i}" for i in range(20_000)]
    a = arm_index(ids, SHARES, salt="s1")
    assert np.array_equal(a, arm_index(ids, SHARES, salt="s1"))
    assert np.array_equal(a[::-1], arm_index(ids[::-1], SHARES, salt="s1"))  # independent of order
    assert np.array_equal(a[:37], arm_index(ids[:37], SHARES, salt="s1"))  # ... and of the other users
    assert np.allclose(np.bincount(a, minlength=3) / len(ids), SHARES, atol=0.015)
    assert 0.45 < (arm_index(ids, SHARES, salt="s2") != a).mean() < 0.75  # another salt reshuffles
    code = ("import sys; from homefeed.serve.experiments import arm_index; "
            "print(arm_index([f'user-{i}' for i in range(500)], [0.5, 0.3, 0.2], salt='s1').tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True).stdout
    assert json.loads(other) == a[:500].tolist()  # not Python's per-process hash: every worker agrees
    from homefeed.experiment.arms import assign

    assert np.array_equal(assign(ids[:500], SHARES, salt="s1"), a[:500])  # the simulator splits the same way


def test_arm_settings_are_the_servers_with_serving_overrides_only():
    base = load_config(overrides=["serve.recall_budget_ms=50"])
    cfg = arm_config(base, ExperimentArm(name="b", share=0.5, overrides=["serve.rank=false", "mechanism.exposure.n_templates=2"]))
    assert not cfg.serve.rank and cfg.serve.mechanism and cfg.mechanism.exposure == {"n_templates": 2}
    assert cfg.serve.recall_budget_ms == 50  # the server's own settings stay under the overrides
    assert arm_config(base, ExperimentArm(name="a", share=0.5)) is base
    with pytest.raises(ConfigError, match="arm 'b'.*'recall.channels' is not a serving setting"):
        arm_config(base, ExperimentArm(name="b", share=0.5, overrides=['recall.channels=["itemcf"]']))
    with pytest.raises(ConfigError, match="arm 'b'.*serve.state"):
        arm_config(base, ExperimentArm(name="b", share=0.5, overrides=["serve.state=sqlite:/tmp/other.db"]))
    with pytest.raises(ConfigError, match="arm 'b'.*serve.rank"):
        arm_config(base, ExperimentArm(name="b", share=0.5, overrides=["serve.rank=maybe"]))
    bad = load_config(overrides=experiment_settings(control="plain"))
    with pytest.raises(ConfigError, match="control arm 'plain'.*no overrides"):
        check_control(bad.serve.experiment)
    check_control(load_config(overrides=experiment_settings()).serve.experiment)


# --- over real HTTP -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ab_folder(tmp_path_factory):
    """Where the two servers keep their SQLite state: ab.db (with the experiment) and plain.db."""
    return tmp_path_factory.mktemp("ab")


@pytest.fixture(scope="module")
def servers(tiny_bundle, ab_folder):
    """The same bundle served twice: with the experiment, and without any (each with its own SQLite state)."""
    folder = ab_folder
    token = (f'serve.admin_token="{TOKEN}"', BUDGET)
    procs = []
    try:
        for name, settings in (("ab", (*token, *experiment_settings())), ("plain", token)):
            procs.append(start_server(tiny_bundle, port=free_port(), state=f"sqlite:{folder / name}.db", settings=settings,
                                      quiet=True))
        yield procs[0][1], procs[1][1]
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(10)


def admin(url: str) -> dict:
    r = httpx.get(url + "/admin/experiments", headers={"X-Admin-Token": TOKEN}, timeout=30)
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["arms"]}


def test_the_split_of_2000_users_is_within_3_percent_of_the_shares_and_each_user_where_the_hash_says(servers, tiny_bundle,
                                                                                                    ab_folder):
    url, _ = servers
    users = [f"cold-{i}" for i in range(2000)]
    item = str(pl.read_parquet(tiny_bundle / "data" / "items.parquet")["item_id"][0])
    before = admin(url)
    events = [{"event_id": f"split-{u}", "user_id": u, "item_id": item, "behavior": "click", "ts": NOW} for u in users]
    r = httpx.post(url + "/v1/events", json={"events": events}, timeout=120)
    assert r.json() == {"received": 2000, "stored": 2000}
    after = admin(url)
    counts = {a: after[a]["clicks"] - before[a]["clicks"] for a in NAMES}  # every worker's count, from the store
    expected = dict(zip(*np.unique(expected_arm(users), return_counts=True)))
    assert counts == {a: int(expected[a]) for a in NAMES}  # each user in the arm the hash names
    for name, share in zip(NAMES, SHARES):
        assert abs(counts[name] / 2000 - share) <= 0.03, (name, counts)
    with sqlite3.connect(ab_folder / "ab.db") as c:  # every stored event records the arm that served its user
        stored = dict(c.execute("SELECT user_id, arm FROM events WHERE event_id LIKE 'split-%'").fetchall())
    assert stored == dict(zip(users, expected_arm(users)))


def test_pages_carry_their_arm_and_metrics_count_each_arm(servers, tiny_bundle):
    url, _ = servers
    users = [f"page-{i}" for i in range(90)]
    arms = []
    for u in users:
        r = httpx.post(url + "/v1/homepage", json={"user_id": u, "now": NOW, "slots": {"recommended": 6}}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        arms.append(body["arm"])
        if body["arm"] != "control":  # the plain ranked list: each slot in score order (no scattering)
            scores = [it["score"] for it in body["slots"]["recommended"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == 6
    assert arms == expected_arm(users)
    metrics = httpx.get(url + "/metrics").text
    for name in NAMES:
        line = f'homefeed_requests_total{{arm="{name}",scene="homepage"}} '  # labels in alphabetical order
        assert line in metrics
        n = float(metrics.split(line)[1].split()[0])
        assert n >= arms.count(name)  # other tests of this module may have asked for pages too
        assert f'homefeed_stage_seconds_count{{arm="{name}",stage="total"}}' in metrics
        assert f'homefeed_items_shown_total{{arm="{name}"}}' in metrics
    view = admin(url)
    assert sum(a["traffic"] for a in view.values()) == pytest.approx(1.0)
    assert all(view[a]["pages"] >= arms.count(a) and view[a]["items"] >= 6 * arms.count(a) for a in NAMES)
    assert all(v["ctr"] == pytest.approx(v["clicks"] / v["items"]) for v in view.values() if v["items"])
    assert view["plain"]["overrides"] == ["serve.mechanism=false"] and not view["norank"]["rank"]


def test_control_users_get_exactly_the_page_of_a_server_without_experiments(servers, tiny_bundle):
    ab, plain = servers
    known = pl.read_parquet(tiny_bundle / "data" / "recent_events.parquet")["user_raw"].unique(maintain_order=True).to_list()
    control = [u for u, a in zip(known, expected_arm(known)) if a == "control"][:12]
    other = [u for u, a in zip(known, expected_arm(known)) if a == "norank"][:4]
    assert len(control) == 12 and len(other) == 4

    def page(url, body):
        r = httpx.post(url + "/v1/homepage", json=body, timeout=60)
        assert r.status_code == 200, r.text
        b = r.json()
        return b, (b["template_index"], b["bundle"], b["degraded"], b["slots"])

    for u in control:
        first, seen = page(ab, {"user_id": u, "now": NOW})
        assert first["arm"] == "control"
        assert seen == page(plain, {"user_id": u, "now": NOW})[1]
        item = first["slots"]["recommended"][0]["item_id"]
        for url in (ab, plain):  # the same click to both: the templates are rebuilt from it
            r = httpx.post(url + "/v1/events", json={"events": [
                {"event_id": f"ctl-{u}", "user_id": u, "item_id": item, "behavior": "click", "ts": NOW + 5}]})
            assert r.json()["stored"] == 1
        body = {"user_id": u, "now": NOW + 60, "template_index": first["template_index"]}
        assert page(ab, body)[1] == page(plain, body)[1]
        body = {"user_id": u, "now": NOW + 90, "template_index": 0}  # the next template of the rotation
        assert page(ab, body)[1] == page(plain, body)[1]
    differs = [page(ab, {"user_id": u, "now": NOW})[1] != page(plain, {"user_id": u, "now": NOW})[1] for u in other]
    assert any(differs)  # the other arms really serve something else


def test_admin_experiments_needs_the_token(servers):
    ab, plain = servers
    assert httpx.get(ab + "/admin/experiments").status_code == 401
    assert httpx.get(ab + "/admin/experiments", headers={"X-Admin-Token": "wrong"}).status_code == 401
    r = httpx.get(plain + "/admin/experiments", headers={"X-Admin-Token": TOKEN})
    assert r.json() == {"experiment": None, "control": None, "arms": []}
    r = httpx.post(ab + "/admin/reload", json={"arm": "nope"}, headers={"X-Admin-Token": TOKEN})
    assert r.status_code == 404 and "control, plain, norank" in r.json()["detail"]


# --- in process: reloads, the new serve keys -----------------------------------------------------
def test_arms_reload_independently_and_workers_follow_each(tiny_bundle, tiny_bundle_alt, tmp_path):
    from homefeed.serve.service import Service
    from homefeed.serve.schemas import HomepageRequest

    cfg = load_config(overrides=experiment_settings() + ["serve.state_idle_days=2"])
    state = f"sqlite:{tmp_path / 'state.db'}"
    one, two = (Service(tiny_bundle, cfg, state, follow_s=0) for _ in range(2))
    try:
        assert one.store.idle_s == 2 * 86400  # serve.state_idle_days
        v0 = one.pipeline.bundle.version
        user = {a: next(u for u in (f"r{i}" for i in range(200)) if expected_arm([u])[0] == a) for a in NAMES}

        def versions(s):
            return {a: s.homepage(HomepageRequest(user_id=user[a], now=NOW)).bundle for a in NAMES}
        v1 = one.reload(tiny_bundle_alt, arm="plain")
        assert v1 != v0 and versions(one) == {"control": v0, "plain": v1, "norank": v0}
        assert one.pipeline.bundle.version == v0  # the served bundle did not move
        two._follow_note("bundle:plain")  # another worker follows that arm alone
        assert versions(two) == {"control": v0, "plain": v1, "norank": v0}
        one.reload(tiny_bundle, arm="plain")
        one.reload(tiny_bundle_alt)  # the served bundle: every arm serving it ("" bundle) moves too
        assert versions(one) == {"control": v1, "plain": v0, "norank": v1} and one.pipeline.bundle.version == v1
    finally:
        one.close()
        two.close()


def test_docs_switch_and_admin_token_file_from_the_config(tiny_bundle, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from homefeed.serve.api import create_app

    monkeypatch.delenv("HOMEFEED_ADMIN_TOKEN_FILE", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    cfg = load_config(overrides=["serve.docs=false", f"serve.admin_token_file={token_file}", 'serve.admin_token="other"'])
    app = create_app(tiny_bundle, cfg, state=f"sqlite:{tmp_path / 'a.db'}")
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
        assert client.get("/admin/experiments", headers={"X-Admin-Token": "from-the-file"}).status_code == 200
        assert client.get("/admin/experiments", headers={"X-Admin-Token": "other"}).status_code == 401
    app.state.service.close()
    app = create_app(tiny_bundle, Config(), state=f"sqlite:{tmp_path / 'b.db'}")
    with TestClient(app) as client:
        assert client.get("/openapi.json").status_code == 200  # serve.docs defaults to true
        r = client.get("/admin/experiments", headers={"X-Admin-Token": ""})
        assert r.status_code == 403 and "admin_token_file" in r.json()["detail"]  # no token configured: disabled
    app.state.service.close()
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="serve.admin_token_file.*empty"):
        create_app(tiny_bundle, load_config(overrides=[f"serve.admin_token_file={empty}"]), state=f"sqlite:{tmp_path / 'c.db'}")
