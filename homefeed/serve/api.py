"""The HTTP API: a thin FastAPI layer over `Pipeline`, which does all the work without HTTP.

    POST /v1/homepage          a page of items per slot, each with score, channel, trigger and reason
    POST /v1/events            behaviour events; idempotent on event_id; durable before the 200
    GET  /v1/items/{id}/similar
    GET  /healthz /readyz /metrics
    POST /admin/reload         swap to a new bundle without dropping requests, or one experiment arm's (X-Admin-Token)
    GET  /admin/experiments    the experiment's arms, their traffic and live CTR (X-Admin-Token)

    uvicorn --factory "homefeed.serve.api:app_from_env"      # or: homefeed serve BUNDLE

Bounded and honest under abuse: bodies are read whole under a size and time limit before any handler
runs (413, 408); a state-store fault is a 503 naming it, never a 200 or a bare 500; /healthz and
/metrics run on the event loop and /readyz on its own thread, so a saturated pipeline never delays
them; /readyz writes and reads the store; /metrics labels responses by route template, so its size
does not grow with the URLs clients make up. The admin token is compared in constant time and can
come from a file (HOMEFEED_ADMIN_TOKEN_FILE or `serve.admin_token_file`) so it never shows in `ps` or a
worker's environment. With `serve.experiment` each user is served by their arm (serve/service.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Router

from homefeed.config import Config, ConfigError, load_config
from homefeed.serve.body_timeout import read_body, replay, send_refusal
from homefeed.serve.metrics import ServeMetrics
from homefeed.serve.schemas import EventsRequest, EventsResponse, HomepageRequest, HomepageResponse, SimilarResponse
from homefeed.serve.service import Service, ServiceClosed, read_token_file
from homefeed.serve.state import StoreError
from homefeed.serve.ui import ui_router

__all__ = ["Service", "ServiceClosed", "create_app", "app_from_env"]
BODY_LIMITS = {"/v1/events": 8 << 20}  # bytes per request body; 10,000 events fit in 8 MiB
BODY_LIMIT = 64 << 10  # every other route: a homepage request is well under 1 KiB
BODY_TIMEOUT_S = 10.0  # a body not fully received by then is a 408 (a slow or half-sent upload)
READY_TIMEOUT_S = 2.0  # /readyz: a store round trip slower than this is not ready


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = None  # folder of the new bundle; default: reload the current path
    arm: str | None = None  # reload this experiment arm alone; default: the served bundle (and the arms serving it)


class Guard:
    """ASGI middleware around every request: reads a body whole under a size and a time limit (413, 408) before
    any handler sees it, and counts each response by route template and status (`homefeed_http_responses`)."""

    def __init__(self, app, *, router: Router, metrics: ServeMetrics):
        self.app, self.router, self.metrics = app, router, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what an exception escaping the app becomes

        async def counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read(scope, receive)
                if refusal is not None:
                    return await send_refusal(counted, *refusal)
                scope["homefeed.body"] = body  # for the invalid-JSON message's line and column
                receive = replay(body, receive)
            await self.app(scope, receive, counted)
        finally:
            self.metrics.http.labels(self._template(scope), str(status)).inc()

    async def _read(self, scope, receive) -> tuple[bytes, tuple[int, str] | None]:
        limit = BODY_LIMITS.get(scope["path"], BODY_LIMIT)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", (413, f"request body of {int(declared)} bytes; this endpoint takes at most {limit}")
        return await read_body(receive, limit=limit, timeout_s=BODY_TIMEOUT_S)

    def _template(self, scope) -> str:
        """The route's path template (`/v1/items/{item_id}/similar`), never the raw path; 'unmatched' for none."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.router.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or "unmatched"


def create_app(bundle: str | Path, config: Config | None = None, *, state: str | None = None,
               admin_token: str | None = None, docs: bool | None = None) -> FastAPI:
    """The app over one bundle. admin_token: overrides `serve.admin_token(_file)`; docs: overrides `serve.docs`
    (False drops /docs and /openapi.json)."""
    cfg = config or Config()
    docs = cfg.serve.docs if docs is None else docs
    service = Service(bundle, cfg, state, admin_token=admin_token)
    app = FastAPI(title="homefeed", version="0.1.0",
                  description="E-commerce homepage feed: recall -> rank -> mechanism, with real-time user state.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.service = service
    app.add_middleware(Guard, router=app.router, metrics=service.metrics)
    app.include_router(ui_router(service))  # the console at /ui (serve/ui.py)
    admission = asyncio.Semaphore(cfg.serve.max_inflight)  # waiting homepage requests hold no thread

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": [_problem(e, request.scope) for e in exc.errors()]})

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError):
        print(f"homefeed: state store fault on {request.url.path}: {exc}", file=sys.stderr, flush=True)
        return JSONResponse(status_code=503, content={"detail": f"state store unavailable: {exc}"})

    @app.exception_handler(ServiceClosed)
    async def _closing(request: Request, exc: ServiceClosed):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.post("/v1/homepage", response_model=HomepageResponse)
    async def homepage(req: HomepageRequest) -> Response:
        try:
            async with admission:
                page = await run_in_threadpool(service.homepage, req)
        except ConfigError as e:  # slots that match no material pool of the bundle
            return JSONResponse(status_code=422, content={"detail": [{"field": "slots", "problem": str(e)}]})
        return _json(page)

    @app.post("/v1/events", response_model=EventsResponse)
    def events(req: EventsRequest) -> Response:
        received, stored = service.ingest(req.events)  # each user's events through their arm's pipeline
        return _json(EventsResponse(received=received, stored=stored))

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse)
    def similar(item_id: str, k: int = 20) -> SimilarResponse:
        with service.lease() as pipeline:
            if pipeline.bundle.item_code(item_id) == 0:
                raise HTTPException(404, detail=f"unknown item_id {item_id[:128]!r}")
            return SimilarResponse(item_id=item_id, similar=pipeline.similar(item_id, min(max(k, 1), 200)))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            reason = await asyncio.wait_for(asyncio.wrap_future(service.probes.submit(service.not_ready)), READY_TIMEOUT_S)
        except TimeoutError:
            reason = f"the state store did not answer a write and read within {READY_TIMEOUT_S:g} s"
        if reason is not None:
            return JSONResponse(status_code=503, content={"ready": False, "reason": reason, "worker": service.worker})
        p = service.pipeline
        return JSONResponse({"ready": True, "bundle": p.bundle.version, "worker": service.worker,
                             "channels": list(p.bundle.channels), "ranker": p.bundle.ranker is not None,
                             "arms": {name: arm.pipeline.bundle.version for name, arm in service.arms.items()}})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render().decode(), media_type="text/plain; version=0.0.4")

    def admin(x_admin_token: str | None) -> None:
        if not service.admin_token:
            raise HTTPException(403, detail="admin routes are disabled: set serve.admin_token_file, serve.admin_token "
                                            "or HOMEFEED_ADMIN_TOKEN_FILE")
        if not service.token_ok(x_admin_token):
            raise HTTPException(401, detail="missing or wrong X-Admin-Token")

    @app.post("/admin/reload")
    def reload(req: ReloadRequest, x_admin_token: str | None = Header(default=None)) -> dict:
        admin(x_admin_token)
        if req.arm is not None and req.arm not in service.arms:
            raise HTTPException(404, detail=f"no experiment arm {req.arm[:64]!r}; arms: {', '.join(service.arms) or 'none'}")
        label = req.arm or ""
        try:
            version = service.reload(req.bundle, arm=req.arm)
        except StoreError:
            raise
        except Exception as e:  # any bundle that does not load: the old one keeps serving
            service.metrics.reloads.labels("refused", label).inc()
            raise HTTPException(409, detail=f"reload refused, still serving the old bundle: {e}") from None
        service.metrics.reloads.labels("ok", label).inc()
        return {"reloaded": True, "bundle": version, "arm": req.arm}

    @app.get("/admin/experiments")
    def experiments(x_admin_token: str | None = Header(default=None)) -> dict:
        admin(x_admin_token)
        return service.experiments()

    return app


def _problem(error: dict, scope: dict) -> dict:
    """One validation error as {field, problem}; invalid JSON says where, by line and column."""
    if error["type"] == "json_invalid":
        at = int(error["loc"][-1]) if str(error["loc"][-1]).isdigit() else 0
        text = scope.get("homefeed.body", b"")[:at].decode("utf-8", "replace")
        line, column = text.count("\n") + 1, at - (text.rfind("\n") + 1) + 1
        reason = (error.get("ctx") or {}).get("error", "not JSON")
        return {"field": "body", "problem": f"invalid JSON at line {line}, column {column} (character {at}): {reason}"}
    return {"field": ".".join(str(p) for p in error["loc"] if p != "body"), "problem": error["msg"]}


def _json(body: BaseModel) -> Response:
    """The response model serialised by pydantic-core straight to bytes: FastAPI's re-validation and
    `jsonable_encoder` walk cost more than the rest of a template-path request. The declared
    `response_model` still documents the body in the OpenAPI schema."""
    return Response(content=body.model_dump_json(), media_type="application/json")


def admin_token_from_env() -> str | None:
    """The admin token from the file named by HOMEFEED_ADMIN_TOKEN_FILE (its first line), else HOMEFEED_ADMIN_TOKEN,
    else None (then `serve.admin_token` holds). Any string is a token; no message ever shows any of it."""
    path = os.environ.get("HOMEFEED_ADMIN_TOKEN_FILE")
    if path:
        return read_token_file(path, "HOMEFEED_ADMIN_TOKEN_FILE")
    return os.environ.get("HOMEFEED_ADMIN_TOKEN") or None


def settings_from_env() -> list[str]:
    """HOMEFEED_SET: `--set` overrides as a JSON list, or (older launchers) joined by ';'."""
    raw = os.environ.get("HOMEFEED_SET", "")
    if raw.startswith("["):
        return [str(s) for s in json.loads(raw)]
    return [s for s in raw.split(";") if s]


def cap_malloc_arenas(n: int = 2) -> bool:
    """Limit glibc's malloc arenas in this worker unless MALLOC_ARENA_MAX says otherwise; True when applied.

    A server's thread pool otherwise grows one arena per thread and fragments them: in `benchmarks/soak.py` (5 minutes,
    a reload every 10 s) RSS drifted +18% by default and +10% with 2 arenas. No effect (False) off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, n) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: HOMEFEED_BUNDLE, HOMEFEED_CONFIG, HOMEFEED_SET, HOMEFEED_STATE, the admin token
    (see `admin_token_from_env`) and HOMEFEED_DOCS=0/1 (over `serve.docs`: /docs and /openapi.json) from the environment."""
    cap_malloc_arenas()
    cfg = load_config(os.environ.get("HOMEFEED_CONFIG") or None, settings_from_env())
    docs = os.environ.get("HOMEFEED_DOCS")
    return create_app(os.environ["HOMEFEED_BUNDLE"], cfg, state=os.environ.get("HOMEFEED_STATE"),
                      admin_token=admin_token_from_env(), docs=None if docs is None else docs != "0")
