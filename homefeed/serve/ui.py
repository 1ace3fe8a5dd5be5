"""The console at /ui: server-rendered pages that show what homefeed recommends and why (issue 17)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


def ui_router(service) -> APIRouter:
    """The console's routes over a live `Service` (api.py): include with `app.include_router(ui_router(service))`."""
    router = APIRouter()

    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>homefeed</title><h1>homefeed console</h1>")

    return router
