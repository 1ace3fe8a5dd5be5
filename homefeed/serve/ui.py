"""The console at /ui: web pages that show what homefeed recommends and why, served by the API's own process.

    /ui?user_id=U           the user's homepage exactly as /v1/homepage answers it (cards per slot, channel,
                            reason, score, template, degraded channels, stage timings), the user's recent
                            events, and buttons that post view (a click), cart and buy events as the user
    /ui/pick?kind=known     a random known user (also `cold`: few or no past events; `unknown`: a new id)
    /ui/items/{id}          an item, its similar items, image group, standard category, and which channels
                            recall it for which triggers
    /ui/bundle              the manifest, each part's offline metrics as charts, the live counters
    /ui/images/{id}.png     the item's picture (`serve/images.py`)

Views are server-rendered with Jinja2 (`serve/templates/`) plus one small script (`serve/static/`),
all shipped in the package: no build step, nothing fetched from the internet. Views read the live
pipeline through `Service.lease`, so a reload never breaks one. The buttons post to `/ui/events`,
which runs the same `Pipeline.ingest` as `/v1/events`; when `serve.admin_token` is set it demands
that token in X-Admin-Token (read-only views stay open).

    app.include_router(ui_router(service))      # in `api.create_app`
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, ValidationError

from homefeed.data.schema import BEHAVIORS
from homefeed.serve import plots
from homefeed.serve.images import PLACEHOLDER, ImageBank
from homefeed.serve.schemas import EventIn, HomepageRequest

HERE = Path(__file__).parent
ACTIONS = {"view": "click", "cart": "cart", "buy": "buy"}  # button -> behaviour posted (opening an item is a click)
HISTORY_SHOWN = 12
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class Action(BaseModel):
    """A console button: act as `user_id` on `item_id`."""

    model_config = ConfigDict(extra="forbid")
    user_id: str
    item_id: str
    action: Literal["view", "cart", "buy"]


class Catalog:
    """What the console shows of one bundle's items, indexed by item code (built once per bundle version)."""

    def __init__(self, bundle):
        items = bundle.items
        n = bundle.n_items
        codes = items["item_id"].to_numpy()
        self.row_of = np.full(n, -1, np.int64)
        self.row_of[codes] = np.arange(len(codes))
        leaf = items["leaf_category"]
        if "leaf_category" in bundle.vocabs:
            leaf = bundle.vocabs["leaf_category"].decode(leaf)
        self.leaf = [str(v) for v in leaf.to_list()]
        self.title = items["title"].to_list() if "title" in items.columns else [None] * len(codes)
        self.price = items["price"].to_list()
        self.standard = items["standard_category"].fill_null(-1).to_list()
        names = bundle.path / "mechanism" / "standard_categories.parquet"
        self.standard_name: dict[int, str] = {}
        if names.exists():
            t = pl.read_parquet(names)
            if "standard_name" in t.columns:
                self.standard_name = dict(zip(t["standard_category"].to_list(), t["standard_name"].to_list()))
        group = items["image_group"].fill_null(-1).to_numpy() if "image_group" in items.columns else codes.astype(np.int64)
        self.group_of = np.full(n, -1, np.int64)
        self.group_of[codes] = group
        self.raw_item = bundle.raw_item
        self.block_days = dict(zip(np.unique(self.standard).tolist(),
                                   bundle.periods.days_of(np.unique(self.standard)).tolist()))
        self.images = ImageBank.of(bundle)

    def card(self, raw_id: str, code: int) -> dict:
        """Title, price, leaf and standard category of one item, for a card (placeholders when unknown)."""
        row = self.row_of[code] if 0 < code < len(self.row_of) else -1
        if row < 0:
            return {"item_id": raw_id, "title": raw_id, "price": None, "leaf": "?", "standard": -1, "standard_name": "?"}
        standard = self.standard[row]
        return {"item_id": raw_id, "title": self.title[row] or f"item {raw_id}", "price": self.price[row],
                "leaf": self.leaf[row], "standard": standard,
                "standard_name": self.standard_name.get(standard, f"standard {standard}")}

    def same_image(self, code: int, limit: int = 12) -> list[int]:
        """Other item codes in this item's near-duplicate image group."""
        group = self.group_of[code]
        if group < 0:
            return []
        same = np.flatnonzero(self.group_of == group)
        return [int(c) for c in same[same != code][:limit]]


def recalled_by(bundle, code: int, limit: int = 8) -> list[dict]:
    """Which channels would recall item `code`, and for which triggers, read from each channel's fitted tables."""
    out = []
    for name, ch in bundle.channels.items():
        table, items = getattr(ch, "table_", None), getattr(ch, "items_", None)
        if table is not None:  # an i2i channel: the items whose neighbour list holds this one are its triggers
            pos = np.flatnonzero(table.neighbors == code)
            rows = np.searchsorted(table.indptr, pos, side="right") - 1
            best = np.argsort(-table.scores[pos], kind="stable")[:limit]
            triggers = [(str(bundle.raw_item[rows[i]]), float(table.scores[pos[i]])) for i in best]
            note = f"in the neighbour lists of {len(pos)} trigger items" if len(pos) else "in no item's neighbour list"
            out.append({"channel": name, "triggers": triggers, "note": note})
        elif items is not None and getattr(ch, "indptr_", None) is None:  # one global list (popular)
            at = np.flatnonzero(items == code)
            out.append({"channel": name, "triggers": [],
                        "note": f"rank {at[0] + 1} of {len(items)} in its list" if len(at) else "not in its list"})
        elif items is not None:  # one list per group (crowd)
            groups = np.unique(np.searchsorted(ch.indptr_, np.flatnonzero(items == code), side="right") - 1)
            out.append({"channel": name, "triggers": [],
                        "note": f"in the lists of {len(groups)} of {len(ch.indptr_) - 1} shopper groups"})
        else:
            out.append({"channel": name, "triggers": [], "note": "depends on the user's own recent behaviour"})
    return out


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in e.errors())


def _when(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ui_router(service) -> APIRouter:
    """The console's routes over a live `Service` (api.py): include with `app.include_router(ui_router(service))`."""
    router = APIRouter(include_in_schema=False)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    static = {p.name: p.read_bytes() for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}
    catalogs: dict[str, Catalog] = {}
    lock = threading.Lock()

    def catalog_of(bundle) -> Catalog:
        with lock:
            if bundle.version not in catalogs:
                catalogs.clear()  # only the live bundle's is kept
                catalogs[bundle.version] = Catalog(bundle)
            return catalogs[bundle.version]

    def render(name: str, status: int = 200, **ctx) -> HTMLResponse:
        needs_token = bool(service.admin_token)
        return HTMLResponse(env.get_template(name).render(needs_token=needs_token, **ctx), status_code=status)

    def cards(bundle, catalog: Catalog, items) -> list[dict]:
        return [catalog.card(it.item_id, bundle.item_code(it.item_id)) | it.model_dump() for it in items]

    @router.get("/ui", response_class=HTMLResponse)
    def home(user_id: str | None = None, shown: int | None = None, done: str | None = None) -> HTMLResponse:
        if not user_id:
            return render("home.html", page=None, user_id="")
        t0 = time.perf_counter()
        try:
            req = HomepageRequest(user_id=user_id, template_index=shown)
        except ValidationError as e:
            return render("home.html", 400, page=None, user_id=user_id[:128], error=_problems(e))
        with service.gate, service.lease(user_id) as pipeline:  # the user's experiment arm, if any
            page = pipeline.homepage(req)
            service.count_page(page)
            t1 = time.perf_counter()
            bundle, catalog = pipeline.bundle, catalog_of(pipeline.bundle)
            state = pipeline.user_state(user_id, int(time.time()) + 1)
        slots = {name: cards(bundle, catalog, items) for name, items in page.slots.items()}
        history = [{"behavior": BEHAVIORS[b], "ts": t, **catalog.card(str(bundle.raw_item[i]), int(i))}
                   for i, b, t in zip(state.items[::-1][:HISTORY_SHOWN], state.behaviors[::-1], state.ts[::-1])]
        stages = {k: v for k, v in page.timings_ms.items() if k != "total"}
        total = max(page.timings_ms.get("total", 0.0), 1e-6)
        html = render("home.html", page=page, slots=slots, user_id=user_id, history=history, stages=stages, total=total,
                      known=bundle.user_code(user_id) > 0, done=done, n_events=len(state.items))
        view_ms = (time.perf_counter() - t1) * 1000
        html.headers["Server-Timing"] = f"pipeline;dur={(t1 - t0) * 1000:.2f}, view;dur={view_ms:.2f}"
        return html

    @router.get("/ui/pick")
    def pick(kind: str = "known") -> RedirectResponse:
        with service.lease() as pipeline:
            user = _pick_user(pipeline.bundle, kind)
        return RedirectResponse(f"/ui?user_id={user}", status_code=303)

    def admin(x_admin_token: str | None = Header(default=None)) -> None:
        """Actions need `serve.admin_token` in X-Admin-Token when one is set (checked before the body is)."""
        if service.admin_token and not service.token_ok(x_admin_token):  # the service's token (config, env or file)
            raise HTTPException(401, detail="actions need the admin token: enter it at the top of the page")

    @router.post("/ui/events", dependencies=[Depends(admin)])
    def act(body: Action) -> JSONResponse:
        try:  # ts one second back: the next page, asked for within the same second, counts it (events before `now`)
            event = EventIn(event_id=f"ui-{uuid.uuid4().hex}", user_id=body.user_id, item_id=body.item_id,
                            behavior=ACTIONS[body.action], ts=int(time.time()) - 1)
        except ValidationError as e:
            raise HTTPException(422, detail=_problems(e)) from None
        with service.lease(body.user_id) as pipeline:
            if pipeline.bundle.item_code(body.item_id) == 0:
                raise HTTPException(404, detail=f"item_id {body.item_id!r} is not in the bundle")
        received, stored = service.ingest([event])  # the same ingestion as /v1/events
        return JSONResponse({"received": received, "stored": stored, "event_id": event.event_id,
                             "behavior": event.behavior})

    @router.get("/ui/items/{item_id}", response_class=HTMLResponse)
    def item_view(item_id: str) -> HTMLResponse:
        with service.lease() as pipeline:
            bundle = pipeline.bundle
            code = bundle.item_code(item_id)
            if code == 0:
                return render("item.html", 404, item=None, item_id=item_id)
            catalog = catalog_of(bundle)
            similar = cards(bundle, catalog, pipeline.similar(item_id, 20))
            group = [catalog.card(str(bundle.raw_item[c]), c) for c in catalog.same_image(code)]
            channels = recalled_by(bundle, code)
        item = catalog.card(item_id, code)
        return render("item.html", item=item, item_id=item_id, similar=similar, group=group, channels=channels,
                      image_group=int(catalog.group_of[code]), block_days=catalog.block_days.get(item["standard"]))

    @router.get("/ui/bundle", response_class=HTMLResponse)
    def bundle_view() -> HTMLResponse:
        with service.lease() as pipeline:
            manifest, path = pipeline.bundle.manifest, pipeline.bundle.path
        parts = manifest.get("parts", {})
        metrics = {name: p.get("metrics", {}) for name, p in parts.items()}
        samples = plots.counters(service.metrics.registry)
        charts = {"hitrate": plots.hitrate_curves(metrics.get("recall", {})),
                  "auc": plots.auc_bars(metrics.get("rank", {})),
                  "calibration": plots.calibration_curve(metrics.get("rank", {})),
                  "latency": plots.latency_histogram(samples)}
        live = {name: samples.get(f"homefeed_{name}_total", []) for name in
                ("requests", "http_responses", "channel_errors", "events_stored", "reloads", "bad_state")}
        scalar = {name: {k: v for k, v in m.items() if isinstance(v, (int, float, str))} for name, m in metrics.items()}
        return render("bundle.html", manifest=manifest, parts=parts, path=str(path), charts=charts, live=live,
                      scalar=scalar, uptime_s=time.time() - service.started)

    @router.get("/ui/images/{item_id}.png")
    def image(item_id: str, if_none_match: str | None = Header(default=None)) -> Response:
        with service.lease() as pipeline:
            bundle = pipeline.bundle
            code = bundle.item_code(item_id)
            if code == 0:
                return Response(PLACEHOLDER, 404, media_type="image/png")
            bank = catalog_of(bundle).images
            headers = bank.headers(bundle.version, code)
        if if_none_match == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        kind, body = bank.image(code)
        if kind == "url":
            return RedirectResponse(body, status_code=307, headers=headers)
        return Response(body, media_type="image/png", headers=headers)

    @router.get("/ui/static/{name}")
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, detail=f"no console file {name!r}")
        return Response(static[name], media_type=STATIC_TYPES[Path(name).suffix],
                        headers={"Cache-Control": "public, max-age=3600"})

    return router


def _pick_user(bundle, kind: str) -> str:
    """A random raw user id: `known` (past events in the bundle), `cold` (the fewest past events), `unknown` (new)."""
    if kind == "unknown":
        return f"new-{uuid.uuid4().hex[:8]}"
    if kind not in ("known", "cold"):
        raise HTTPException(422, detail=f"kind must be known, cold or unknown; got {kind!r}")
    indptr = bundle.history[0]
    counts = np.diff(indptr)[1:]  # per user code 1..n
    if kind == "known":
        pool = np.flatnonzero(counts >= 5) + 1
    else:
        pool = np.flatnonzero(counts == counts.min()) + 1 if len(counts) else np.zeros(0, np.int64)
    if len(pool) == 0:
        return f"new-{uuid.uuid4().hex[:8]}"
    code = int(pool[random.randrange(len(pool))])
    return str(bundle.vocabs["user"].decode(pl.Series([code], dtype=pl.Int32))[0])
