"""Reloading to another bundle under traffic: the old pipeline is drained, never closed under a request.

In process, a request holding the old pipeline across a reload finishes on it; over real HTTP on 127.0.0.1,
two uvicorn workers (sharing one state store: rotation and idempotency hold whichever answers) serve many
distinct users (full rebuilds) and their template pages while the bundle is swapped back and forth between
two different bundles, the other worker following each announcement, and every response is a 200.
"""
import threading
import time

import httpx
import polars as pl
import pytest

from conftest import free_port

from homefeed.config import Config
from homefeed.serve.api import Service
from homefeed.serve.process import start_server
from homefeed.serve.schemas import HomepageRequest

TOKEN = "reload-token"


def known_users(bundle_dir, n: int) -> list[str]:
    """Up to n raw user ids with history in the bundle (their pages come from the personalised channels)."""
    users = pl.read_parquet(bundle_dir / "data" / "recent_events.parquet")["user_raw"].unique(maintain_order=True)
    return [str(u) for u in users.head(n)]


def test_a_request_holding_the_old_pipeline_finishes_on_it_after_a_reload(tiny_bundle, tiny_bundle_alt, tmp_path):
    service = Service(tiny_bundle, Config(), f"sqlite:{tmp_path / 'state.db'}", follow_s=0)
    user, now = known_users(tiny_bundle, 1)[0], 1512230000
    try:
        with service.lease() as old:  # a request inside the pipeline when the reload comes
            new_version = service.reload(tiny_bundle_alt)
            assert service.pipeline is not old and not old.closed
            assert not old.hold()  # retired: a new request takes the new pipeline instead
            page = old.homepage(HomepageRequest(user_id=user, now=now))  # a full rebuild: submits to the pool
            assert page.bundle == old.bundle.version != new_version and not page.degraded
        assert old.closed  # the last request out closed it
        with service.lease() as fresh:
            assert fresh.bundle.version == new_version and not fresh.closed
            assert fresh.homepage(HomepageRequest(user_id=user + "-new", now=now)).bundle == new_version
        service.close()
        assert fresh.closed
        with pytest.raises(RuntimeError, match="closed"):
            with service.lease():
                pass
    finally:
        service.close()


def rotation_and_idempotency_hold_across_workers(url: str, user: str) -> None:
    """Each request may land on either worker: the template rotation and the event ids live in the shared store."""
    last = httpx.post(url + "/v1/homepage", json={"user_id": user, "now": 1512230000}, timeout=30).json()
    for step in (1, 2):
        page = httpx.post(url + "/v1/homepage", json={"user_id": user, "now": 1512230000 + step,
                                                       "template_index": last["template_index"]}, timeout=30).json()
        assert page["template_index"] == last["template_index"] + 1 and "recall" not in page["timings_ms"]
        last = page
    event = {"event_id": "w2-1", "user_id": user, "item_id": "1", "behavior": "click", "ts": 1512230003}
    stored = [httpx.post(url + "/v1/events", json={"events": [event]}).json()["stored"] for _ in range(6)]
    assert sum(stored) == 1


def both_workers_answer(url: str, timeout_s: float = 300) -> bool:
    """Two distinct workers answer /readyz (a new connection each). The server is handed over once one worker is
    ready and the other has had 120 s; on a loaded machine the second may still be warming up, so keep asking."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < 2 and time.monotonic() < deadline:
        r = httpx.get(url + "/readyz", timeout=30)
        if r.status_code == 200:
            seen.add(r.json()["worker"])
        time.sleep(0.05)
    return len(seen) == 2


def test_reload_to_another_bundle_under_traffic_on_two_workers(tiny_bundle, tiny_bundle_alt, tmp_path):
    proc, url = start_server(tiny_bundle, port=free_port(), state=f"sqlite:{tmp_path / 'state.db'}",
                             settings=(f'serve.admin_token="{TOKEN}"', "serve.max_inflight=8"), quiet=True, workers=2)
    users = known_users(tiny_bundle, 400)
    results: list[tuple[str, int | str, str]] = []  # (what, status or transport error, bundle version served)
    stop = threading.Event()

    def traffic(worker: int):
        """Per user: a first page (a full rebuild: known users get personalised channels, cold ones crowd and
        popular), the next template (the template path), then a click."""
        with httpx.Client(timeout=120) as c:
            for i in range(10**6):
                if stop.is_set():
                    return
                user = users[(worker * 97 + i) % len(users)] if i % 2 else f"cold-{worker}-{i}"
                first = send(c, "page", "/v1/homepage", {"user_id": user, "now": 1512230000})
                index = {"template_index": first["template_index"]} if first else {}
                send(c, "page", "/v1/homepage", {"user_id": user, "now": 1512230001, **index})
                send(c, "event", "/v1/events", {"events": [{"event_id": f"r{worker}-{i}", "user_id": user, "item_id": "1",
                                                            "behavior": "click", "ts": 1512229000 + i}]})

    def send(c: httpx.Client, what: str, path: str, body: dict) -> dict | None:
        try:
            r = c.post(url + path, json=body)
        except httpx.TransportError as e:
            results.append((what, type(e).__name__, ""))
            return None
        results.append((what, r.status_code, r.json().get("bundle", "") if r.status_code == 200 else r.text))
        return r.json() if r.status_code == 200 else None

    def served_versions() -> set[str]:
        return {httpx.get(url + "/readyz", timeout=30).json()["bundle"] for _ in range(20)}

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(8)]
    try:
        assert both_workers_answer(url)
        rotation_and_idempotency_hold_across_workers(url, users[0])
        first = served_versions()
        [t.start() for t in threads]
        time.sleep(2)
        assert httpx.post(url + "/admin/reload", json={}, headers={"X-Admin-Token": "wrong"}).status_code == 401
        versions = []
        for target in (tiny_bundle_alt, tiny_bundle, tiny_bundle_alt):
            r = httpx.post(url + "/admin/reload", json={"bundle": str(target)}, headers={"X-Admin-Token": TOKEN}, timeout=300)
            assert r.status_code == 200, r.text
            versions.append(r.json()["bundle"])
            time.sleep(1.5)
        deadline, now_serving = time.monotonic() + 120, set()
        while time.monotonic() < deadline:  # the other worker follows the announcement
            now_serving = served_versions()
            if now_serving == {versions[-1]}:
                break
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        [t.join(300) for t in threads]
        bad = [r for r in results if r[1] != 200]
        assert not bad, f"{len(bad)} of {len(results)} requests failed across reloads, e.g. {bad[:3]}"
        assert now_serving == {versions[-1]}, f"a worker still serves another bundle: {now_serving}"
        assert first == {versions[1]} and versions[0] != versions[1]  # two different bundles
        pages = [v for what, _, v in results if what == "page"]
        assert set(pages) == {versions[0], versions[1]} and len(pages) > 20  # traffic spanned the swaps
        missing = httpx.post(url + "/admin/reload", json={"bundle": str(tmp_path / "no-such-bundle")},
                             headers={"X-Admin-Token": TOKEN})
        assert missing.status_code == 409 and "old bundle" in missing.json()["detail"]
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
