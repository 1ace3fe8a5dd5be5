"""The soak benchmark's accounting: errors in and out of fault windows, latency, RSS drift, and the store audit
(every acknowledged event stored, every acknowledged buy folded into its buyer's purchase filter)."""
from __future__ import annotations

from collections import Counter

import numpy as np


def overlaps(t0: float, t1: float, windows: list[list[float]]) -> bool:
    return any(a <= t1 and t0 <= b for a, b in windows)


def is_error(status) -> bool:
    """A failure the service owes the client: a 5xx or no answer (4xx are the client's own mistakes)."""
    return status == "conn" or (isinstance(status, int) and status >= 500)


def summarise(records: list, windows: list[list[float]], since: float | None = None) -> dict:
    """Requests, codes, errors outside / inside fault windows, and p50/p99 (ms) of answered homepages outside them."""
    rows = [r for r in list(records) if since is None or r[0] >= since]
    codes = Counter(str(s) for _, _, _, s in rows)
    outside = [r for r in rows if not overlaps(r[0], r[1], windows)]
    errors_out = [r for r in outside if is_error(r[3])]
    lat = {kind: np.array([t1 - t0 for t0, t1, k, s in outside if k == kind and s == 200]) * 1000
           for kind in ("homepage", "events", "similar")}
    pct = lambda xs, q: float(np.percentile(xs, q)) if len(xs) else float("nan")  # noqa: E731
    return {"requests": len(rows), "codes": dict(codes), "errors_outside": len(errors_out),
            "errors_outside_codes": dict(Counter(str(r[3]) for r in errors_out)),
            "errors_outside_kinds": dict(Counter(r[2] for r in errors_out)),
            "errors_inside": sum(is_error(r[3]) for r in rows) - len(errors_out),
            "p50_ms": pct(lat["homepage"], 50), "p99_ms": pct(lat["homepage"], 99),
            "latency_ms": {k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99)} for k, v in lat.items()}}


def rss_drift(samples: list[dict], warmup_s: float) -> dict:
    """Per server life: each RSS sample against the life's first sample at least `warmup_s` old; the largest change."""
    lives: dict[int, list[dict]] = {}
    for s in samples:
        if s["age"] >= warmup_s:
            lives.setdefault(s["life"], []).append(s)
    worst, measured = None, 0
    for life in lives.values():
        if len(life) < 2:
            continue
        measured += 1
        base = life[0]["bytes"]
        for s in life[1:]:
            change = 100 * (s["bytes"] - base) / base
            if worst is None or abs(change) > abs(worst):
                worst = change
    return {"max_pct": worst, "lives_measured": measured, "warmup_s": warmup_s}


def check_store(spec: str, acked: list[tuple], facts: dict, *, history_len: int) -> dict:
    """Look every acknowledged event up in the store, and audit every buyer's purchase filter against their buys."""
    from homefeed.mechanism.purchase_filter import DAY, PurchaseState, on_event
    from homefeed.serve.state import open_store

    store = open_store(spec, max_events=history_len)
    try:
        lost = [e for e in acked if not store.has_event(e[0], e[1])]
        buyers: dict[str, list[tuple]] = {}
        for e in acked:
            if e[3] == "buy":
                buyers.setdefault(e[1], []).append(e)
        unfolded_buys, unfolded_users = 0, []
        for user, buys in buyers.items():
            stored = sorted((e for e in store.recent_events(user, 10_000) if e.behavior == "buy"), key=lambda e: e.ts)
            expected = PurchaseState()
            for e in stored:
                expected = on_event(expected, standard=facts["standard"].get(e.item_id, -1), behavior="buy", ts=e.ts,
                                    periods=facts["periods"])
            folded = PurchaseState.from_dict(store.get_blob(user, "purchase_filter") or {})
            if folded.blocks != expected.blocks:
                unfolded_users.append(user)
            for _, _, item, _, ts in buys:
                standard = facts["standard"].get(item, -1)
                days = float(facts["periods"].days_of(np.array([standard]))[0]) if standard >= 0 else 0.0
                if days > 0 and folded.blocks.get(standard, [0, 0])[0] < ts + int(days * DAY):
                    unfolded_buys += 1
        return {"acked_events": len(acked), "lost_events": len(lost), "lost_examples": [e[0] for e in lost[:3]],
                "stored_events": store.count_events(), "acked_buys": sum(len(b) for b in buyers.values()),
                "buyers": len(buyers), "unfolded_buys": unfolded_buys, "unfolded_users": unfolded_users}
    finally:
        store.close()
