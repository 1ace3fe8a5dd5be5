"""One arm inside a running experiment: its pipeline and state store, the simulator's answers, its logs.

A request is served by the arm's real `Pipeline.homepage` (the function behind `POST /v1/homepage`),
the page goes to `Simulator.respond_many` with the other pages of the batch, and the clicks and
purchases come back through `Pipeline.ingest` (the function behind `POST /v1/events`), so the next
request of the user sees them: templates rebuilt, purchase filter, online features. The client
reports the template it showed last, as the app does (`template_index`), except in an arm without
the mechanism (no template rotation).

Each arm's store is the service's SQLite store with fsync off: a simulation needs no durability,
and an fsync per event batch (~15 ms) would cost more than serving the batch. Reads and writes are
the service's own.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.experiment.arms import Arm, apply_serving
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.pipeline import PURCHASE, Pipeline
from homefeed.serve.schemas import EventIn, HomepageRequest, HomepageResponse
from homefeed.serve.state import SQLiteStore, StateStore
from homefeed.world import Simulator

CLICK_DELAY_S, BUY_DELAY_S = 1, 2  # event times after the page (both before the visit's next page, 30 s on)
N_EXAMPLES = 3


def open_arm_store(path: Path) -> SQLiteStore:
    """The service's SQLite store without fsync (see the module docstring)."""
    return SQLiteStore(path, synchronous="OFF", blob_synchronous="OFF")


def flat_items(resp: HomepageResponse) -> list:
    """The page's items in display order (slots in layout order, each slot's items in order)."""
    return [it for slot in resp.slots.values() for it in slot]


def open_pipeline(bundle_path: Path, arm: Arm, store: StateStore, seed: int) -> Pipeline:
    bundle = apply_serving(ServingBundle.load(bundle_path), arm, seed)
    pipeline = Pipeline(bundle, store, arm.serving_config())
    pipeline.warm_up()
    return pipeline


def valid_end(bundle_path: Path) -> int:
    """The first second the bundle's history does not cover (its data part ends at the test days)."""
    import json

    return int(json.loads((bundle_path / "data" / "split.json").read_text())["valid_end"])


@dataclass
class ArmRun:
    """The live state of one arm: pipeline, store, simulator, the client's last template per user, the logs."""

    arm: Arm
    users: np.ndarray  # int64 public ids assigned to the arm
    bundle_path: Path
    folder: Path
    pipeline: Pipeline
    store: StateStore
    sim: Simulator
    prices: np.ndarray  # float64 (n_items + 1,) by public item id (0 where unknown)
    shown_today: dict = field(default_factory=dict)  # user -> items shown to them today
    last_template: dict = field(default_factory=dict)  # user -> template index of the last page shown
    pages: list = field(default_factory=list)  # page log rows (metrics.PAGE_COLUMNS)
    shown: list = field(default_factory=list)  # (day, user, item) per item shown
    events: list = field(default_factory=list)  # its traffic as log events (for retraining)
    exposures: list = field(default_factory=list)  # its traffic as log exposures (for retraining)
    timings: list = field(default_factory=list)  # per request: the pipeline's timings_ms
    examples: list = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: {"serve": 0.0, "simulate": 0.0, "events": 0.0})
    n_requests: int = 0

    @classmethod
    def start(cls, arm: Arm, users: np.ndarray, bundle_path: Path, folder: Path, world: Path, *, seed: int,
              prices: np.ndarray) -> "ArmRun":
        """Open a fresh store, load the bundle, and post the users' logged events the bundle's history lacks."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        store = open_arm_store(folder / "state.db")
        run = cls(arm=arm, users=np.sort(users), bundle_path=bundle_path, folder=folder,
                  pipeline=open_pipeline(bundle_path, arm, store, seed), store=store,
                  sim=Simulator.load(world, seed=seed), prices=prices)
        since = valid_end(bundle_path)
        tail = (pl.scan_parquet(world / "events.parquet")
                .filter((pl.col("ts") >= since) & pl.col("user_id").is_in(run.users.tolist())).collect())
        run.post([(str(r["user_id"]), str(r["item_id"]), r["behavior"], int(r["ts"])) for r in tail.iter_rows(named=True)],
                 prefix="log")
        return run

    # --- the loop ----------------------------------------------------------------------------
    def post(self, events: list[tuple[str, str, str, int]], *, prefix: str) -> None:
        """Events through the `/v1/events` path (`Pipeline.ingest`), ids unique within the arm."""
        if events:
            self.pipeline.ingest([EventIn(event_id=f"{prefix}:{i}:{u}:{it}:{b}", user_id=u, item_id=it, behavior=b, ts=ts)
                                  for i, (u, it, b, ts) in enumerate(events)])

    def new_day(self) -> None:
        self.shown_today = {}

    def serve_batch(self, users: np.ndarray, ts: np.ndarray, visit_page: np.ndarray, day: int) -> None:
        """One page per request (no user twice), answered by the simulator at once, events posted back."""
        if not len(users):
            return
        t0 = time.perf_counter()
        responses = [self.pipeline.homepage(HomepageRequest(
            user_id=str(u), now=int(t), template_index=self.last_template.get(u) if self.arm.settings.mechanism else None))
            for u, t in zip(users.tolist(), ts.tolist())]
        t1 = time.perf_counter()
        pages = [flat_items(r) for r in responses]
        width = max((len(p) for p in pages), default=0)
        grid = np.zeros((len(pages), max(width, 1)), np.int64)
        for i, p in enumerate(pages):
            grid[i, :len(p)] = [int(it.item_id) for it in p]
        just_bought = self._just_bought(users, grid, ts)
        answer = self.sim.respond_many(users, grid, ts)
        t2 = time.perf_counter()
        self._record(users, ts, visit_page, day, responses, pages, grid, just_bought, answer)
        t3 = time.perf_counter()
        self.seconds["serve"] += t1 - t0
        self.seconds["simulate"] += t2 - t1
        self.seconds["events"] += t3 - t2

    def _just_bought(self, users: np.ndarray, grid: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(R,) bool: the page shows a standard category the user bought within its repurchase cycle (truth)."""
        s = self.sim
        std = s.item_std[grid]
        last = s.last_buy.get((users[:, None] * s.n_std + std).ravel(), -np.inf).reshape(grid.shape)
        return ((ts[:, None] - last < s.cycle_s[std]) & (grid > 0)).any(axis=1)

    def _record(self, users, ts, visit_page, day, responses, pages, grid, just_bought, answer: pl.DataFrame) -> None:
        clicked = np.zeros(grid.shape, bool)
        bought = np.zeros(grid.shape, bool)
        req, pos = answer["request"].to_numpy(), answer["position"].to_numpy()
        clicked[req, pos] = answer["clicked"].to_numpy() > 0
        bought[req, pos] = answer["bought"].to_numpy() > 0
        events = []
        for i, (u, t, resp, page) in enumerate(zip(users.tolist(), ts.tolist(), responses, pages)):
            items = grid[i, :len(page)]
            seen = self.shown_today.setdefault(u, set())
            repeats = sum(int(x) in seen for x in items)
            seen.update(int(x) for x in items)
            self.last_template[u] = resp.template_index
            self.n_requests += 1
            self.pages.append((self.arm.name, day, u, int(visit_page[i] == 0), 1, len(page), int(clicked[i].sum()),
                               int(bought[i].sum()), float(self.prices[items[bought[i, :len(page)]]].sum()),
                               len(np.unique(self.sim.item_std[items])), repeats, int(just_bought[i])))
            self.shown.extend((day, u, int(x)) for x in items)
            self.timings.append(resp.timings_ms)
            if len(self.examples) < N_EXAMPLES:
                self.examples.append({"user": str(u), "ts": t, "template": resp.template_index, "items": [
                    {"item_id": it.item_id, "slot": slot, "channel": it.channel, "reason": it.reason}
                    for slot, its in resp.slots.items() for it in its]})
            for p, it in enumerate(page):
                self.exposures.append((self.n_requests, u, int(grid[i, p]), t, p, int(visit_page[i]), it.channel,
                                       int(it.trigger) if it.trigger else None, int(clicked[i, p])))
                if clicked[i, p]:
                    events.append((str(u), it.item_id, "click", t + CLICK_DELAY_S))
                    self.events.append((u, int(grid[i, p]), "click", t + CLICK_DELAY_S, "homepage"))
                if bought[i, p]:
                    events.append((str(u), it.item_id, "buy", t + BUY_DELAY_S))
                    self.events.append((u, int(grid[i, p]), "buy", t + BUY_DELAY_S, "browse"))
        self.post(events, prefix=f"d{day}r{self.n_requests}")

    # --- nightly retrain ---------------------------------------------------------------------
    def log_frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Its traffic so far as the world's events and exposures tables (public ids)."""
        ev = pl.DataFrame(self.events, schema=["user_id", "item_id", "behavior", "ts", "scene"], orient="row")
        ex = pl.DataFrame(self.exposures, schema=["request_id", "user_id", "item_id", "ts", "position", "page", "channel",
                                                  "trigger_item", "clicked"], orient="row")
        return ev, ex

    def switch_bundle(self, bundle_path: Path, folder: Path, seed: int) -> None:
        """Serve a rebuilt bundle from a fresh store holding what the new bundle's history lacks: the
        events since its data ends, and each user's purchase-filter state (so no event counts twice)."""
        store = open_arm_store(folder / "state.db")
        since = valid_end(bundle_path)
        for u in self.users.tolist():
            recent = [e for e in self.store.recent_events(str(u), self.arm.config.serve.history_len) if e.ts >= since]
            store.append_events(recent)
            blob = self.store.get_blob(str(u), PURCHASE)
            if blob is not None:
                store.put_blob(str(u), PURCHASE, blob)
        self.pipeline.close()
        self.store.close()
        self.store, self.bundle_path = store, bundle_path
        self.pipeline = open_pipeline(bundle_path, self.arm, store, seed)

    def close(self) -> None:
        self.pipeline.close()
        self.store.close()
