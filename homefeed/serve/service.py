"""The live service behind the HTTP API: its pipelines (one per experiment arm), reloads, and the workers' agreement.

`Service` holds the served pipeline and, with `serve.experiment`, one pipeline per arm (its bundle and
its settings over the server's). A request takes the pipeline of its user's arm through `lease`. A
reload builds the new pipeline aside, swaps a single reference and retires the old one, which closes
when the last request inside it finishes; each arm reloads on its own, and a reload of the served
bundle moves every arm that serves it ("" bundle).

With several worker processes (`homefeed serve --workers N`) a reload reaches one of them; it announces
the new bundle in the shared state store and the others follow within `follow_s` seconds (a background
thread polls the notes). Everything else a request reads or writes (events, templates, purchase filter,
the arms' live counts) lives in the store, so workers need no other coordination.
"""
from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from homefeed.bundle.manifest import configured_key
from homefeed.config import Config, ConfigError
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.experiments import Traffic, arm_config, arm_index, check_control, salt_of
from homefeed.serve.metrics import ServeMetrics
from homefeed.serve.pipeline import Pipeline
from homefeed.serve.schemas import EventIn, HomepageRequest, HomepageResponse
from homefeed.serve.state import StoreError, open_store

ANNOUNCE_USER = "__homefeed_service__"  # the store's user id under which reloads are announced
SERVED = "bundle"  # the announcement key of the served bundle; an arm's is "bundle:ARM"
FOLLOW_S = 1.0
SWEEP_S = 3600.0  # idle users' state is evicted from the store this often (`StateStore.evict_idle`)
DAY_S = 86_400


class ServiceClosed(RuntimeError):
    """The service is shutting down and takes no more requests."""


@dataclass
class ArmServed:
    """One live experiment arm: its share, settings, own bundle folder (None: the served one) and pipeline."""

    name: str
    share: float
    config: Config
    bundle_path: Path | None
    pipeline: Pipeline


def read_token_file(path: str, where: str) -> str:
    """The first line of `path` (the admin token); a missing, unreadable or empty file is a ConfigError naming `where`."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"{where}: {path} is empty; put the token on its first line")
    return lines[0]


class Service:
    """The served pipeline, the experiment arms' pipelines, reloads, the follow-and-sweep thread."""

    def __init__(self, bundle_path: str | Path, config: Config, state: str | None = None, *, follow_s: float = FOLLOW_S,
                 admin_token: str | None = None):
        self.config = config
        s = config.serve
        if admin_token is None:  # the environment's token wins, then the config's file, then the config's text
            admin_token = read_token_file(s.admin_token_file, "serve.admin_token_file") if s.admin_token_file else s.admin_token
        self.admin_token = admin_token
        self.experiment = s.experiment
        check_control(self.experiment)
        # Admission: past a few requests in flight a CPU-bound pipeline only gets slower per request, and
        # queueing inside it would eat the recall budget (channels dropped under load). Waiting here does not.
        self.gate = threading.BoundedSemaphore(s.max_inflight)
        self.metrics = ServeMetrics()
        self.worker = uuid.uuid4().hex[:8]  # tells workers apart in /readyz without revealing pids
        self.store = open_store(state or s.state, max_events=s.history_len, idle_s=int(s.state_idle_days * DAY_S))
        self.bundle_key = configured_key(config.bundle.key_file)  # with one, every bundle loaded must be signed under it
        self.bundle_path = Path(bundle_path)
        bundle = self._load(self.bundle_path)
        self.pipeline = self._pipeline(bundle, config, "")
        self.arms: dict[str, ArmServed] = {}
        for a in self.experiment.arms:
            own = Path(a.bundle) if a.bundle else None
            cfg = arm_config(config, a)
            self.arms[a.name] = ArmServed(a.name, a.share, cfg, own,
                                          self._pipeline(self._load(own) if own else bundle, cfg, a.name))
        self._shares, self._salt = [a.share for a in self.arms.values()], salt_of(self.experiment)
        self.traffic = Traffic(self.experiment.name, list(self.arms)) if self.arms else None
        self._reload_lock = threading.Lock()
        self.started = time.time()
        self._followed = {key: self.started for key in self._announce_keys()}  # notes at or before these times are handled
        self._stop = threading.Event()
        self.probes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")  # never behind the pipeline
        self._next_sweep = time.monotonic() + 60  # the first sweep a minute after start, then every SWEEP_S
        if follow_s > 0:
            threading.Thread(target=self._follow, args=(follow_s,), daemon=True, name="homefeed-follow").start()

    def _load(self, path: Path) -> ServingBundle:
        return ServingBundle.load(path, key=self.bundle_key)

    def _pipeline(self, bundle: ServingBundle, config: Config, arm: str) -> Pipeline:
        """A warmed-up pipeline; an arm other than the control keeps its stored templates apart (variant)."""
        variant = "" if arm in ("", self.experiment.control) else arm
        p = Pipeline(bundle, self.store, config, metrics=self.metrics, arm=arm, variant=variant)
        try:
            p.warm_up()
        except BaseException:
            p.close()
            raise
        return p

    # --- who serves whom --------------------------------------------------------------------
    def arm_of(self, user_id: str) -> ArmServed | None:
        """The user's experiment arm (a salted hash of the id, the same in every worker); None without an experiment."""
        if not self.arms:
            return None
        names = list(self.arms)
        return self.arms[names[int(arm_index([user_id], self._shares, salt=self._salt)[0])]]

    @contextmanager
    def lease(self, user_id: str | None = None) -> Iterator[Pipeline]:
        """The live pipeline of the user's arm (the served one when no user is given or there is no experiment),
        held for one request: a reload cannot close it under the request."""
        arm = self.arm_of(user_id) if user_id is not None else None

        def live() -> Pipeline:
            return arm.pipeline if arm is not None else self.pipeline
        while True:
            pipeline = live()
            if pipeline.hold():
                break
            if pipeline is live():  # retired and not replaced: the service is closing
                raise ServiceClosed("the service is closed")
            # else a reload retired it after we read the reference: take the new one
        try:
            yield pipeline
        finally:
            pipeline.release()

    def homepage(self, req: HomepageRequest) -> HomepageResponse:
        with self.gate, self.lease(req.user_id) as pipeline:
            page = pipeline.homepage(req)
        self.count_page(page)
        return page

    def count_page(self, page: HomepageResponse) -> None:
        """Count a served page in its arm's live traffic (what /admin/experiments shows)."""
        if self.traffic is not None and page.arm in self.arms:
            self.traffic.page(page.arm, sum(len(items) for items in page.slots.values()))

    def ingest(self, events: list[EventIn]) -> tuple[int, int]:
        """Events stored through the pipeline of each user's arm; (received, new)."""
        groups: dict[str, list[EventIn]] = {}
        for e in events:
            arm = self.arm_of(e.user_id)
            groups.setdefault(arm.name if arm else "", []).append(e)
        stored = 0
        for arm, group in groups.items():
            with self.lease(group[0].user_id) as pipeline:
                new = pipeline.ingest_new(group)
            stored += len(new)
            if self.traffic is not None:
                self.traffic.events(arm, [e.behavior for e in new])
        return len(events), stored

    # --- admin ------------------------------------------------------------------------------
    def token_ok(self, given: str | None) -> bool:
        """`given` equals the admin token (compared in constant time); False when reload is disabled."""
        return bool(self.admin_token) and given is not None and hmac.compare_digest(given.encode(), self.admin_token.encode())

    def not_ready(self) -> str | None:
        """Why this worker cannot serve (the state store's round trip failed), or None when it can."""
        try:
            self.store.check()
        except StoreError as e:
            return str(e)
        return None

    def experiments(self) -> dict:
        """The experiment: its arms, what each serves, all workers' traffic and live CTR (clicks posted / items shown)."""
        if not self.arms:
            return {"experiment": None, "control": None, "arms": []}
        totals = self.traffic.totals(self.store)
        pages = sum(t["pages"] for t in totals.values())
        ctr = {a: (t["clicks"] / t["items"] if t["items"] else None) for a, t in totals.items()}
        base = ctr.get(self.experiment.control)
        arms = []
        for name, arm in self.arms.items():
            t = totals[name]
            lift = ctr[name] / base - 1 if base and ctr[name] is not None else None
            arms.append({"name": name, "share": arm.share, "traffic": t["pages"] / pages if pages else None,
                         "bundle": arm.pipeline.bundle.version, "bundle_path": str(arm.bundle_path or self.bundle_path),
                         "overrides": next(a.overrides for a in self.experiment.arms if a.name == name),
                         "rank": arm.config.serve.rank, "mechanism": arm.config.serve.mechanism, **t,
                         "ctr": ctr[name], "ctr_vs_control": lift})
        return {"experiment": self.experiment.name, "control": self.experiment.control or None, "arms": arms}

    # --- reloads ----------------------------------------------------------------------------
    def _announce_keys(self) -> list[str]:
        return [SERVED] + [f"{SERVED}:{a}" for a in self.arms]

    def reload(self, path: str | Path | None, *, arm: str | None = None, announce: bool = True) -> str:
        """Serve the bundle at `path` (default: the current one again). arm=None: the served bundle, and every arm
        serving it; arm=NAME: that arm alone (it keeps `path` as its own bundle). Returns the new version."""
        with self._reload_lock:
            if arm is None:
                new_path = Path(path) if path else self.bundle_path
                bundle = self._load(new_path)  # verifies checksums; the old pipelines serve meanwhile
                follow = [a for a in self.arms.values() if a.bundle_path is None]
                fresh = [self._pipeline(bundle, self.config, "")]
                try:
                    fresh += [self._pipeline(bundle, a.config, a.name) for a in follow]
                except BaseException:
                    for p in fresh:
                        p.close()
                    raise
                old = [self.pipeline] + [a.pipeline for a in follow]
                self.pipeline, self.bundle_path = fresh[0], new_path
                for a, p in zip(follow, fresh[1:]):
                    a.pipeline = p
                key = SERVED
            else:
                slot = self.arms.get(arm)
                if slot is None:
                    raise KeyError(f"no experiment arm {arm!r}; arms: {', '.join(self.arms) or 'none'}")
                new_path = Path(path) if path else (slot.bundle_path or self.bundle_path)
                bundle = self._load(new_path)
                fresh = [self._pipeline(bundle, slot.config, arm)]
                old, slot.pipeline = [slot.pipeline], fresh[0]
                if path:
                    slot.bundle_path = new_path
                key = f"{SERVED}:{arm}"
            for p in old:
                p.retire()  # drained: requests already inside finish on it, then its pool closes
            if announce:
                at = time.time()
                self.store.put_blob(ANNOUNCE_USER, key, {"path": str(new_path.resolve()), "version": bundle.version, "at": at})
                self._followed[key] = at
            return bundle.version

    def _follow(self, every_s: float) -> None:
        """Reload when another worker announced a bundle this one does not serve (each note tried once); add the
        arms' counts to the store's totals; sweep idle users' state out of the store every SWEEP_S."""
        while not self._stop.wait(every_s):
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_S
                self.sweep()
            if self.traffic is not None:
                try:
                    self.traffic.flush(self.store)
                except StoreError:
                    pass  # kept pending: added on the next flush
            for key in self._announce_keys():
                self._follow_note(key)

    def _follow_note(self, key: str) -> None:
        arm = key.partition(":")[2] or None
        label = arm or ""
        try:
            note = self.store.get_blob(ANNOUNCE_USER, key)
            if not note or note["at"] <= self._followed[key]:
                return
            self._followed[key] = note["at"]
            slot = self.arms[arm] if arm else None
            path = (slot.bundle_path or self.bundle_path) if slot else self.bundle_path
            version = (slot.pipeline if slot else self.pipeline).bundle.version
            if note["path"] != str(path.resolve()) or note["version"] != version:
                self.reload(note["path"], arm=arm, announce=False)
                self.metrics.reloads.labels("followed", label).inc()
        except Exception:  # an unreadable note or bundle: keep serving the current one, and count it
            self.metrics.reloads.labels("follow_failed", label).inc()

    def sweep(self) -> int:
        """Evict idle users' stored state (a bounded batch); counted, and a store fault only counted too."""
        try:
            n = self.store.evict_idle()
        except StoreError:
            self.metrics.evicted.labels("failed").inc()
            return 0
        self.metrics.evicted.labels("blobs").inc(n)
        return n

    def close(self) -> None:
        self._stop.set()
        self.probes.shutdown(wait=False)
        if self.traffic is not None:
            try:
                self.traffic.flush(self.store)
            except StoreError:
                pass
        for p in [self.pipeline] + [a.pipeline for a in self.arms.values()]:
            p.retire()
