"""Issue 15 against the real server on 127.0.0.1: kills between writes, state-store faults, bounded requests,
route-labelled metrics, health under load, the admin token, tampered bundles. Real SQLite, real redis-server."""
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from conftest import free_port

from homefeed.bundle.manifest import BundleError, write_part
from homefeed.mechanism.purchase_filter import BlockingPeriods, PurchaseState, on_event
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.process import start_server
from homefeed.serve.state import open_store

TOKEN = "12;34 x"  # any string is a token: a ';' that `HOMEFEED_SET` once split on, digits that JSON would parse
NOW = 1512230000


def serve(bundle, state, *, env=None, wait_ready=True, settings=()):
    return start_server(bundle, port=free_port(), state=state, settings=settings, quiet=True, env=env,
                        wait_ready=wait_ready)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def known_user(bundle_dir):
    return str(pl.read_parquet(bundle_dir / "data" / "recent_events.parquet")["user_raw"][0])


# --- 3: an event and its purchase-filter fold commit together -----------------------------------------
def standard_of_items(bundle_dir) -> dict[str, int]:
    """Raw item id -> standard category, from the bundle's files."""
    items = pl.read_parquet(bundle_dir / "data" / "items.parquet").select("item_id", "standard_category")
    vocab = pl.read_parquet(bundle_dir / "data" / "vocab" / "item.parquet")
    joined = vocab.join(items, left_on="code", right_on="item_id")
    return {str(r): int(s) for r, s in zip(joined["raw"], joined["standard_category"]) if s is not None and s >= 0}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_every_stored_buy_is_folded_across_kill_9(tiny_bundle, tmp_path, request, backend):
    """Buyers post purchases, a batch of several users' buys per request, while the server is killed (-9) and
    restarted, three times. Every acknowledged buy is stored, and every stored buy is in its user's purchase
    filter and has marked their templates stale. The old server committed a batch's events, then folded them
    user by user: a kill in between left buys stored but never folded, for good (a retry stores nothing new)."""
    state = f"sqlite:{tmp_path / 'fold.db'}" if backend == "sqlite" else request.getfixturevalue("redis_url")
    standards = standard_of_items(tiny_bundle)
    items = sorted(standards)[:60]
    n_writers, per_writer = 6, 16
    users = [f"fold-{backend}-{w}-{j}" for w in range(n_writers) for j in range(per_writer)]
    acked: list[str] = []
    sent = [0]
    for kill in range(3):
        proc, url = serve(tiny_bundle, state)
        stopped = threading.Event()

        def buyer(w: int):
            """One buy for each of this writer's users per request; each user's buys in time order."""
            with httpx.Client(timeout=30) as c:
                for i in range(10**6):
                    if stopped.is_set():
                        return
                    ts = NOW + kill * 100_000 + i
                    batch = [{"event_id": f"{user}-{kill}-{i}", "user_id": user, "behavior": "buy", "ts": ts,
                              "item_id": items[(w * 7 + j * 3 + i) % len(items)]}
                             for j, user in enumerate(users[w * per_writer:(w + 1) * per_writer])]
                    sent[0] += len(batch)
                    try:
                        if c.post(url + "/v1/events", json={"events": batch}).status_code == 200:
                            acked.extend(e["event_id"] for e in batch)
                    except httpx.TransportError:
                        return

        threads = [threading.Thread(target=buyer, args=(w,)) for w in range(n_writers)]
        [t.start() for t in threads]
        time.sleep(1.5 + 0.5 * kill)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stopped.set()
        [t.join(30) for t in threads]
    assert len(acked) > 50, f"only {len(acked)} buys acknowledged of {sent[0]} sent"

    store = open_store(state)
    periods = BlockingPeriods.load(tiny_bundle / "mechanism" / "blocking_periods.parquet")
    unfolded, stale, stored_ids = [], [], set()
    for user in users:
        buys = [e for e in store.recent_events(user, 10_000) if e.behavior == "buy"]
        stored_ids |= {e.event_id for e in buys}
        expected = PurchaseState()
        for e in sorted(buys, key=lambda e: e.ts):
            expected = on_event(expected, standard=standards[e.item_id], behavior="buy", ts=e.ts, periods=periods)
        folded = PurchaseState.from_dict(store.get_blob(user, "purchase_filter") or {})
        if folded.blocks != expected.blocks:
            unfolded.append(user)
        marked = (store.get_blob(user, "templates") or {}).get("state", {}).get("last_behavior_ts", 0)
        if buys and marked < max(e.ts for e in buys):
            stale.append(user)
    assert not set(acked) - stored_ids, "acknowledged buys lost"
    assert not unfolded, f"{len(unfolded)} users have stored buys missing from their purchase filter, e.g. {unfolded[:3]}"
    assert not stale, f"{len(stale)} users have stored buys their templates were not marked stale by, e.g. {stale[:3]}"


# --- 6: state-store faults are noticed ---------------------------------------------------------------------
def test_deleted_sqlite_file_is_a_503_never_a_200(tiny_bundle, tmp_path):
    db = tmp_path / "state.db"
    proc, url = serve(tiny_bundle, f"sqlite:{db}")
    try:
        event = {"event_id": "d1", "user_id": "u", "item_id": "1", "behavior": "click", "ts": NOW}
        assert httpx.post(url + "/v1/events", json={"events": [event]}).status_code == 200
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
        for i in range(3):  # an event acknowledged now would be written to a file nobody can open again
            r = httpx.post(url + "/v1/events", json={"events": [{**event, "event_id": f"d{i + 2}"}]})
            assert r.status_code == 503 and "deleted or replaced" in r.json()["detail"], r.text
        r = httpx.post(url + "/v1/homepage", json={"user_id": "u", "now": NOW}, timeout=30)
        assert r.status_code == 503 and "state store" in r.json()["detail"]
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and not ready.json()["ready"] and "deleted" in ready.json()["reason"]
        assert httpx.get(url + "/healthz").status_code == 200  # alive, not ready
        assert not db.exists()
    finally:
        stop(proc)


def test_corrupt_sqlite_file_is_a_503_then_fails_the_start(tiny_bundle, tmp_path):
    """Pages damaged under the running server: every call is a 503 naming it (a homepage used to be a bare 500 while
    events still got 200) and the worker is not ready; a restart on the file stops at SQLite's integrity check."""
    db = tmp_path / "state.db"
    proc, url = serve(tiny_bundle, f"sqlite:{db}")
    try:
        events = [{"event_id": f"c{i}", "user_id": f"u{i % 300}", "item_id": str(1 + i % 1000), "behavior": "click",
                   "ts": NOW + i} for i in range(5000)]
        assert httpx.post(url + "/v1/events", json={"events": events}, timeout=60).status_code == 200
        for i in range(5):
            assert httpx.post(url + "/v1/homepage", json={"user_id": f"u{i}", "now": NOW + 10_000}, timeout=60).status_code == 200
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, where the damage goes
        data = bytearray(db.read_bytes())
        for page in range(2, len(data) // 4096 - 1, 3):
            data[page * 4096 + 100: page * 4096 + 3000] = b"\xff" * 2900
        with open(db, "r+b") as f:
            f.write(bytes(data))
        for i in range(5):
            page = httpx.post(url + "/v1/homepage", json={"user_id": f"u{i}", "now": NOW + 10_001}, timeout=60)
            event = httpx.post(url + "/v1/events", json={"events": [{"event_id": f"n{i}", "user_id": f"u{i}", "item_id": "5",
                                                                     "behavior": "buy", "ts": NOW + 10_000}]})
            for r in (page, event):
                assert r.status_code == 503 and "malformed" in r.json()["detail"], r.text
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and "corrupt" in ready.json()["reason"]
    finally:
        stop(proc)
    cmd = [sys.executable, "-m", "homefeed.cli", "serve", str(tiny_bundle), "--port", str(free_port()), "--state", f"sqlite:{db}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "integrity check" in out.stderr, out.stderr[-2000:]


def test_redis_down_is_not_ready_and_a_503_then_recovers(tiny_bundle, tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make test installs it with apt-get where it can)")
    port = free_port()
    proc, url = serve(tiny_bundle, f"redis://127.0.0.1:{port}/0", wait_ready=False)  # nothing listening yet
    redis_proc = None
    try:
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and "Redis" in ready.json()["reason"]
        event = {"event_id": "r1", "user_id": "u", "item_id": "1", "behavior": "buy", "ts": NOW}
        r = httpx.post(url + "/v1/events", json={"events": [event]})
        assert r.status_code == 503 and r.json()["detail"].startswith("state store unavailable"), r.text
        r = httpx.post(url + "/v1/homepage", json={"user_id": "u", "now": NOW}, timeout=30)
        assert r.status_code == 503, r.text
        redis_proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while httpx.get(url + "/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(url + "/readyz").status_code == 200  # no restart needed
        assert httpx.post(url + "/v1/events", json={"events": [event]}).json() == {"received": 1, "stored": 1}
    finally:
        stop(proc)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


# --- 4, 5, 9: bounded requests, metrics by route, health off the queue, strict and readable ---------------
@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    proc, url = serve(tiny_bundle, f"sqlite:{folder / 'state.db'}", settings=("serve.max_inflight=2",),
                      env={"HOMEFEED_ADMIN_TOKEN_FILE": str(token_file), "HOMEFEED_DOCS": "0"})
    yield url, proc, folder / "state.db"
    stop(proc)


def test_bodies_and_contexts_are_bounded(server):
    url, _, _ = server
    big = {"user_id": "u", "now": NOW, "context": {"page": "x" * (100 << 10)}}
    r = httpx.post(url + "/v1/homepage", json=big)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    r = httpx.post(url + "/v1/events", content=b'{"events": [' + b" " * (9 << 20) + b"]}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    for context, field in [({f"k{i}": 1 for i in range(33)}, "context"), ({"page": "x" * 257}, "context.page"),
                           ({"k" * 65: 1}, "context")]:
        r = httpx.post(url + "/v1/homepage", json={"user_id": "u", "now": NOW, "context": context})
        assert r.status_code == 422 and any(d["field"].startswith(field) for d in r.json()["detail"]), r.text
    r = httpx.post(url + "/v1/homepage", json={"user_id": "u", "now": NOW, "context": {"page": "home", "hour": 9}}, timeout=30)
    assert r.status_code == 200


def test_a_half_sent_body_times_out(server):
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ev")
        t0 = time.monotonic()
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert time.monotonic() - t0 < 20


def test_metrics_label_routes_by_template(server):
    url, _, _ = server
    with httpx.Client() as c:
        for i in range(300):
            c.get(url + f"/v1/items/no-such-{i}-{'x' * 50}/similar")
            c.get(url + f"/nothing/here/{i}")
        c.get(url + "/v1/items/1/similar?k=abc")  # a 422 used to be labelled with its raw path
    text = httpx.get(url + "/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("homefeed_http_responses_total")]
    assert 'path="/v1/items/{item_id}/similar",status="404"} 300.0' in text
    assert 'path="/v1/items/{item_id}/similar",status="422"} 1.0' in text
    assert 'path="unmatched",status="404"} 300.0' in text
    assert not any("no-such" in line or "nothing" in line for line in lines)
    assert len(text) < 40_000


def test_health_answers_while_every_worker_thread_is_stuck(server):
    """The state file's write lock held by another process: 60 event posts wait inside the server, filling its
    thread pool. /healthz and /metrics still answer at once; /readyz says, within its 2 s, that the store does not
    answer; once the lock is released every event is stored and the worker is ready again."""
    url, _, db = server
    codes: list[int] = []

    def post(i):
        event = {"event_id": f"stuck-{i}", "user_id": f"stuck-{i % 7}", "item_id": "1", "behavior": "click", "ts": NOW}
        with httpx.Client(timeout=120) as c:
            codes.append(c.post(url + "/v1/events", json={"events": [event]}).status_code)

    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    threads = [threading.Thread(target=post, args=(i,)) for i in range(60)]
    try:
        [t.start() for t in threads]
        time.sleep(2.0)  # every post is inside the server now, waiting for the lock
        timings = {}
        for path in ("/healthz", "/metrics", "/healthz"):
            t0 = time.monotonic()
            assert httpx.get(url + path, timeout=60).status_code == 200
            timings[path] = time.monotonic() - t0
        t0 = time.monotonic()
        ready = httpx.get(url + "/readyz", timeout=60)
        timings["/readyz"] = time.monotonic() - t0
        assert not codes, "the posts did not wait for the lock"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    [t.join(120) for t in threads]
    assert timings["/healthz"] < 0.5 and timings["/metrics"] < 0.5, timings
    assert ready.status_code == 503 and "did not answer" in ready.json()["reason"] and timings["/readyz"] < 5, ready.text
    assert codes == [200] * 60
    assert httpx.get(url + "/readyz").status_code == 200


def test_integers_are_strict_and_bad_json_says_where(server):
    url, _, _ = server
    r = httpx.post(url + "/v1/homepage", json={"user_id": "u", "now": str(NOW)})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "now"
    r = httpx.post(url + "/v1/events", json={"events": [{"event_id": "s", "user_id": "u", "item_id": "1", "behavior": "pv",
                                                          "ts": "1512230000"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events.0.ts"
    r = httpx.post(url + "/v1/homepage", content=b'{\n  "user_id": "u",\n  "now": 15x\n}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["field"] == "body" and "line 3, column 12" in problem["problem"], problem


def test_docs_off_and_readyz_reveals_no_path_or_pid(server, tiny_bundle):
    url, proc, _ = server
    assert httpx.get(url + "/docs").status_code == 404 and httpx.get(url + "/openapi.json").status_code == 404
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"]
    assert str(tiny_bundle) not in ready.text and "pid" not in ready.json() and str(proc.pid) not in ready.text


# --- 8: the admin token ---------------------------------------------------------------------------------------
def test_admin_token_from_a_file_never_shows(server, tmp_path):
    url, proc, _ = server
    reload = url + "/admin/reload"
    body = {"bundle": str(tmp_path / "no-such-bundle")}
    for wrong in (None, "12;34", "12;34 xx", "x" * 5000, TOKEN.upper()):
        r = httpx.post(reload, json=body, headers={"X-Admin-Token": wrong} if wrong is not None else {})
        assert r.status_code == 401 and "12" not in r.text and "34" not in r.text, r.text
    r = httpx.post(reload, json=body, headers={"X-Admin-Token": TOKEN})
    assert r.status_code == 409 and "old bundle" in r.json()["detail"]  # past the token check: the bundle is refused
    pids = [proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
    for pid in pids:  # the server and any worker: neither its command line nor its environment holds the token
        for what in ("cmdline", "environ"):
            assert TOKEN.encode() not in open(f"/proc/{pid}/{what}", "rb").read()


# --- 7: bundle loading trusts nothing -------------------------------------------------------------------------
def tampered(tiny_bundle, tmp_path, change) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns(".complete"))
    change(out, json.loads((out / "manifest.json").read_text()))
    return out


def rewrite(out, manifest):
    (out / "manifest.json").write_text(json.dumps(manifest))


def outside_entry(out, manifest):
    """Refused before anything is looked up: the message is the same whether the file outside exists or not."""
    for target in ("etc/hostname", "no/such/file"):
        manifest["parts"]["data"]["files"][f"data/../../../../../../../{target}"] = {"bytes": 1, "sha256": "0"}
    rewrite(out, manifest)


def device_entry(out, manifest):
    manifest["parts"]["data"]["files"]["/dev/zero"] = {"bytes": 0, "sha256": "0"}
    rewrite(out, manifest)


def linked_file(out, manifest):
    (out / "data" / "hostname").symlink_to("/etc/hostname")
    manifest["parts"]["data"]["files"]["data/hostname"] = {"bytes": 1, "sha256": "0"}
    rewrite(out, manifest)


def emptied_lists(out, manifest):
    for part in manifest["parts"].values():
        part["files"] = {}
    rewrite(out, manifest)


def not_json(out, manifest):
    (out / "manifest.json").write_text("{not json")


def unknown_channel(out, manifest):
    (out / "recall" / "channels.json").write_text(json.dumps(["itemcf", "teleport"]))
    write_part(out, "recall")  # an attacker (or a broken build) recomputes the manifest


def corrupt_parquet(out, manifest):
    (out / "data" / "users.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    write_part(out, "data")


@pytest.mark.parametrize("change, says", [
    (outside_entry, "not a path inside"), (device_entry, "not a path inside"), (linked_file, "not a regular file"),
    (emptied_lists, "lists none of its files"), (not_json, "does not read as a bundle manifest"),
    (unknown_channel, "part 'recall' does not load"), (corrupt_parquet, "part 'data' does not load"),
])
def test_tampered_bundles_are_refused_naming_the_part(tiny_bundle, tmp_path, change, says):
    bundle = tampered(tiny_bundle, tmp_path, change)
    t0 = time.monotonic()
    with pytest.raises(BundleError, match=says):
        ServingBundle.load(bundle)
    assert time.monotonic() - t0 < 60  # /dev/zero used to be read for ever


def test_a_tampered_bundle_is_a_409_and_the_old_one_keeps_serving(server, tiny_bundle, tmp_path):
    url, _, _ = server
    for i, change in enumerate((device_entry, unknown_channel, not_json)):
        bundle = tampered(tiny_bundle, tmp_path / str(i), change)
        r = httpx.post(url + "/admin/reload", json={"bundle": str(bundle)}, headers={"X-Admin-Token": TOKEN}, timeout=120)
        assert r.status_code == 409 and "old bundle" in r.json()["detail"], r.text
        page = httpx.post(url + "/v1/homepage", json={"user_id": known_user(tiny_bundle), "now": NOW}, timeout=60)
        assert page.status_code == 200


def test_with_a_key_only_a_signed_unchanged_bundle_serves(tiny_bundle, tmp_path):
    """bundle.key_file set: a signed bundle starts and reloads; a changed one (checksums recomputed by the attacker)
    and an unsigned one are a 409 naming the signature while the old bundle keeps serving; the key never shows."""
    from homefeed.bundle.manifest import configured_key, sign_bundle

    key_text = "soak-key-0f1e2d3c4b5a69788796a5b4"
    key_file = tmp_path / "bundle.key"
    key_file.write_text(key_text + "\n")
    key = configured_key(str(key_file))
    signed = tampered(tiny_bundle, tmp_path / "signed", lambda out, m: sign_bundle(out, key))

    def changed_keeping_the_signature(out, manifest):
        signature = sign_bundle(out, key)["signature"]
        unknown_channel(out, manifest)  # the file changed and its checksum recomputed, by someone without the key
        rewrite(out, {**json.loads((out / "manifest.json").read_text()), "signature": signature})
    changed = tampered(tiny_bundle, tmp_path / "changed", changed_keeping_the_signature)
    unsigned = tampered(tiny_bundle, tmp_path / "unsigned", lambda out, m: None)
    settings = (f"bundle.key_file={key_file}",)
    with pytest.raises(RuntimeError, match="exited"):  # an unsigned bundle does not even start
        stop(serve(unsigned, f"sqlite:{tmp_path / 'refused.db'}", settings=settings)[0])
    proc, url = serve(signed, f"sqlite:{tmp_path / 'state.db'}", settings=settings, env={"HOMEFEED_ADMIN_TOKEN": TOKEN})
    try:
        for bundle, says in ((changed, "does not match its signature"), (unsigned, "not signed")):
            r = httpx.post(url + "/admin/reload", json={"bundle": str(bundle)}, headers={"X-Admin-Token": TOKEN}, timeout=120)
            assert r.status_code == 409 and says in r.json()["detail"] and key_text not in r.text, r.text
            assert httpx.post(url + "/v1/homepage", json={"user_id": known_user(tiny_bundle), "now": NOW},
                              timeout=60).status_code == 200
        r = httpx.post(url + "/admin/reload", json={"bundle": str(signed)}, headers={"X-Admin-Token": TOKEN}, timeout=120)
        assert r.status_code == 200, r.text
    finally:
        stop(proc)
