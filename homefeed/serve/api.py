"""The HTTP API: a thin FastAPI layer over `Pipeline`, which does all the work without HTTP.

    POST /v1/homepage          a page of items per slot, each with score, channel, trigger and reason
    POST /v1/events            behaviour events; idempotent on event_id; durable before the 200
    GET  /v1/items/{id}/similar
    GET  /healthz /readyz /metrics
    POST /admin/reload         swap to a new bundle without dropping requests (X-Admin-Token)

    uvicorn --factory "homefeed.serve.api:app_from_env"      # or: homefeed serve BUNDLE
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from homefeed.bundle.manifest import BundleError
from homefeed.config import Config, ConfigError, load_config
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.metrics import ServeMetrics
from homefeed.serve.pipeline import Pipeline
from homefeed.serve.schemas import EventsRequest, EventsResponse, HomepageRequest, HomepageResponse, SimilarResponse
from homefeed.serve.state import open_store
from homefeed.serve.ui import ui_router


ANNOUNCE = ("__homefeed_service__", "bundle")  # (user id, blob key) in the state store: the last reload
FOLLOW_S = 1.0


class ReloadRequest(BaseModel):
    bundle: str | None = None  # folder of the new bundle; default: reload the current path


class Service:
    """Holds the live pipeline; a reload builds the new one aside, swaps a single reference and retires the
    old one, which closes when the last request inside it finishes (requests take it through `lease`).

    With several worker processes (`homefeed serve --workers N`) a reload reaches one of them; it
    announces the new bundle in the shared state store and the others follow within `follow_s`
    seconds (a background thread polls the note). Everything else a request reads or writes (events,
    templates, purchase filter) already lives in the store, so workers need no other coordination.
    """

    def __init__(self, bundle_path: str | Path, config: Config, state: str | None = None, *, follow_s: float = FOLLOW_S):
        self.config = config
        # Admission: past a few requests in flight a CPU-bound pipeline only gets slower per request, and
        # queueing inside it would eat the recall budget (channels dropped under load). Waiting here does not.
        self.gate = threading.BoundedSemaphore(config.serve.max_inflight)
        self.metrics = ServeMetrics()
        self.store = open_store(state or config.serve.state)
        self.bundle_path = Path(bundle_path)
        bundle = ServingBundle.load(self.bundle_path)
        self.pipeline = Pipeline(bundle, self.store, config, metrics=self.metrics)
        self.pipeline.warm_up()
        self._reload_lock = threading.Lock()
        self.started = time.time()
        self._followed = self.started  # announcements at or before this time are handled
        self._stop = threading.Event()
        if follow_s > 0:
            threading.Thread(target=self._follow, args=(follow_s,), daemon=True, name="homefeed-follow").start()

    def reload(self, path: str | Path | None, *, announce: bool = True) -> str:
        with self._reload_lock:
            new_path = Path(path) if path else self.bundle_path
            bundle = ServingBundle.load(new_path)  # verifies checksums; the old pipeline serves meanwhile
            fresh = Pipeline(bundle, self.store, self.config, metrics=self.metrics)
            try:
                fresh.warm_up()
            except BaseException:
                fresh.close()
                raise
            old, self.pipeline = self.pipeline, fresh
            self.bundle_path = new_path
            old.retire()  # drained: requests already inside finish on it, then its pool closes
            if announce:
                at = time.time()
                self.store.put_blob(*ANNOUNCE, {"path": str(new_path.resolve()), "version": bundle.version, "at": at})
                self._followed = at
            return bundle.version

    def _follow(self, every_s: float) -> None:
        """Reload when another worker announced a bundle this one does not serve (each note tried once)."""
        while not self._stop.wait(every_s):
            try:
                note = self.store.get_blob(*ANNOUNCE)
                if not note or note["at"] <= self._followed:
                    continue
                self._followed = note["at"]
                if note["path"] != str(self.bundle_path.resolve()) or note["version"] != self.pipeline.bundle.version:
                    self.reload(note["path"], announce=False)
                    self.metrics.reloads.labels("followed").inc()
            except Exception:  # an unreadable note or bundle: keep serving the current one, and count it
                self.metrics.reloads.labels("follow_failed").inc()

    @contextmanager
    def lease(self) -> Iterator[Pipeline]:
        """The live pipeline, held for one request: a reload cannot close it under the request."""
        while True:
            pipeline = self.pipeline
            if pipeline.hold():
                break
            if pipeline is self.pipeline:  # retired and not replaced: the service is closing
                raise RuntimeError("the service is closed")
            # else a reload retired it after we read the reference: take the new one
        try:
            yield pipeline
        finally:
            pipeline.release()

    def close(self) -> None:
        self._stop.set()
        self.pipeline.retire()


def create_app(bundle: str | Path, config: Config | None = None, *, state: str | None = None) -> FastAPI:
    cfg = config or Config()
    service = Service(bundle, cfg, state)
    app = FastAPI(title="homefeed", version="0.1.0",
                  description="E-commerce homepage feed: recall -> rank -> mechanism, with real-time user state.")
    app.state.service = service
    app.include_router(ui_router(service))  # the console at /ui (serve/ui.py)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "problem": e["msg"]} for e in exc.errors()]
        service.metrics.http.labels(request.url.path, "422").inc()
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.post("/v1/homepage", response_model=HomepageResponse)
    def homepage(req: HomepageRequest) -> Response:
        try:
            with service.gate, service.lease() as pipeline:
                page = pipeline.homepage(req)
        except ConfigError as e:  # slots that match no material pool of the bundle
            service.metrics.http.labels("/v1/homepage", "422").inc()
            return JSONResponse(status_code=422, content={"detail": [{"field": "slots", "problem": str(e)}]})
        service.metrics.http.labels("/v1/homepage", "200").inc()
        return _json(page)

    @app.post("/v1/events", response_model=EventsResponse)
    def events(req: EventsRequest) -> Response:
        with service.lease() as pipeline:
            received, stored = pipeline.ingest(req.events)
        service.metrics.http.labels("/v1/events", "200").inc()
        return _json(EventsResponse(received=received, stored=stored))

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse)
    def similar(item_id: str, k: int = 20) -> SimilarResponse:
        with service.lease() as pipeline:
            if pipeline.bundle.item_code(item_id) == 0:
                raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
            return SimilarResponse(item_id=item_id, similar=pipeline.similar(item_id, min(max(k, 1), 200)))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/readyz")
    def readyz() -> dict:
        p = service.pipeline
        return {"ready": True, "bundle": p.bundle.version, "path": str(service.bundle_path), "pid": os.getpid(),
                "channels": list(p.bundle.channels), "ranker": p.bundle.ranker is not None}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render().decode(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload")
    def reload(req: ReloadRequest, x_admin_token: str | None = Header(default=None)) -> dict:
        if not cfg.serve.admin_token:
            raise HTTPException(403, detail="reload is disabled: set serve.admin_token to enable it")
        if x_admin_token != cfg.serve.admin_token:
            raise HTTPException(401, detail="missing or wrong X-Admin-Token")
        try:
            version = service.reload(req.bundle)
        except (BundleError, FileNotFoundError) as e:
            service.metrics.reloads.labels("refused").inc()
            raise HTTPException(409, detail=f"reload refused, still serving the old bundle: {e}") from None
        service.metrics.reloads.labels("ok").inc()
        return {"reloaded": True, "bundle": version}

    return app


def _json(body: BaseModel) -> Response:
    """The response model serialised by pydantic-core straight to bytes: FastAPI's re-validation and
    `jsonable_encoder` walk cost more than the rest of a template-path request. The declared
    `response_model` still documents the body in the OpenAPI schema."""
    return Response(content=body.model_dump_json(), media_type="application/json")


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: HOMEFEED_BUNDLE, HOMEFEED_CONFIG, HOMEFEED_STATE from the environment."""
    cfg = load_config(os.environ.get("HOMEFEED_CONFIG") or None,
                      [s for s in os.environ.get("HOMEFEED_SET", "").split(";") if s])
    return create_app(os.environ["HOMEFEED_BUNDLE"], cfg, state=os.environ.get("HOMEFEED_STATE"))
