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
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from homefeed.config import Config, load_config
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.bundle import BundleError
from homefeed.serve.metrics import ServeMetrics
from homefeed.serve.pipeline import Pipeline
from homefeed.serve.schemas import EventsRequest, EventsResponse, HomepageRequest, HomepageResponse, SimilarResponse
from homefeed.serve.state import open_store


class ReloadRequest(BaseModel):
    bundle: str | None = None  # folder of the new bundle; default: reload the current path


class Service:
    """Holds the live pipeline; a reload builds the new one aside and swaps a single reference."""

    def __init__(self, bundle_path: str | Path, config: Config, state: str | None = None):
        self.config = config
        self.metrics = ServeMetrics()
        self.store = open_store(state or config.serve.state)
        self.bundle_path = Path(bundle_path)
        bundle = ServingBundle.load(self.bundle_path)
        self.pipeline = Pipeline(bundle, self.store, config, metrics=self.metrics)
        self.pipeline.warm_up()
        self._reload_lock = threading.Lock()
        self.started = time.time()

    def reload(self, path: str | Path | None) -> str:
        with self._reload_lock:
            new_path = Path(path) if path else self.bundle_path
            bundle = ServingBundle.load(new_path)  # verifies checksums; the old pipeline serves meanwhile
            fresh = Pipeline(bundle, self.store, self.config, metrics=self.metrics)
            fresh.warm_up()
            old, self.pipeline = self.pipeline, fresh
            self.bundle_path = new_path
            old.pool.shutdown(wait=True)  # requests already in the old pipeline finish their recall
            return bundle.version


def create_app(bundle: str | Path, config: Config | None = None, *, state: str | None = None) -> FastAPI:
    cfg = config or Config()
    service = Service(bundle, cfg, state)
    app = FastAPI(title="homefeed", version="0.1.0",
                  description="E-commerce homepage feed: recall -> rank -> mechanism, with real-time user state.")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "problem": e["msg"]} for e in exc.errors()]
        service.metrics.http.labels(request.url.path, "422").inc()
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.post("/v1/homepage", response_model=HomepageResponse)
    def homepage(req: HomepageRequest) -> HomepageResponse:
        page = service.pipeline.homepage(req)
        service.metrics.http.labels("/v1/homepage", "200").inc()
        return page

    @app.post("/v1/events", response_model=EventsResponse)
    def events(req: EventsRequest) -> EventsResponse:
        received, stored = service.pipeline.ingest(req.events)
        service.metrics.http.labels("/v1/events", "200").inc()
        return EventsResponse(received=received, stored=stored)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse)
    def similar(item_id: str, k: int = 20) -> SimilarResponse:
        if service.pipeline.bundle.item_code(item_id) == 0:
            raise HTTPException(404, detail=f"unknown item_id {item_id!r}")
        return SimilarResponse(item_id=item_id, similar=service.pipeline.similar(item_id, min(max(k, 1), 200)))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/readyz")
    def readyz() -> dict:
        p = service.pipeline
        return {"ready": True, "bundle": p.bundle.version, "path": str(service.bundle_path),
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


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: HOMEFEED_BUNDLE, HOMEFEED_CONFIG, HOMEFEED_STATE from the environment."""
    cfg = load_config(os.environ.get("HOMEFEED_CONFIG") or None,
                      [s for s in os.environ.get("HOMEFEED_SET", "").split(";") if s])
    return create_app(os.environ["HOMEFEED_BUNDLE"], cfg, state=os.environ.get("HOMEFEED_STATE"))
