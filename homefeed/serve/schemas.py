"""Request and response bodies of the HTTP API (pydantic): the documented contract clients code against.

Unknown fields are rejected so a misspelt field is a 422 naming it, not a silently ignored knob. Every
size is bounded (slots, context, ids, batch), and integers are strict: "1512230000" is not a time.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, field_validator

from homefeed.data.schema import BEHAVIORS

# Every time a client sends (event ts, request now), in unix seconds: 1995-01-01 <= t < 2100-01-01, the range
# ingest accepts by default (`ingest.ts_min`, `ingest.ts_max`); far inside int64, so it is safe to store.
TS_MIN, TS_MAX = 788_918_400, 4_102_444_800
MAX_SLOTS = 16
MAX_CONTEXT = 32  # context entries per request; keys up to 64 characters, text values up to 256

ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ContextValue = Annotated[str, StringConstraints(max_length=256)] | StrictInt | float


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HomepageRequest(Strict):
    user_id: str = Field(min_length=1, max_length=128)
    scene: Literal["homepage", "promotion"] = "homepage"
    slots: dict[Annotated[str, StringConstraints(max_length=64)], StrictInt] | None = Field(
        default=None, max_length=MAX_SLOTS,
        description="items wanted per slot, e.g. {'recommended': 10, 'flash_sale': 4}; default from config")
    template_index: StrictInt | None = Field(default=None, ge=0, description="index of the template the client showed last")
    context: dict[ContextKey, ContextValue] = Field(default_factory=dict, max_length=MAX_CONTEXT,
                                                    description="page, hour, platform...")
    now: StrictInt | None = Field(default=None, ge=TS_MIN, lt=TS_MAX,
                                  description="request time (unix s); default: the server's clock (for replays)")

    @field_validator("slots")
    @classmethod
    def _sizes(cls, v):
        if v is not None:
            for name, n in v.items():
                if not 0 < n <= 100:
                    raise ValueError(f"slot {name!r} asks for {n} items; each slot takes 1..100")
        return v


class Item(Strict):
    item_id: str
    score: float
    channel: str
    trigger: str | None
    reason: str


class HomepageResponse(Strict):
    request_id: str
    user_id: str
    scene: str
    slots: dict[str, list[Item]]
    template_index: int
    degraded: list[str] = Field(description="channels or stages dropped from this page (error or over budget)")
    timings_ms: dict[str, float]
    bundle: str
    arm: str = Field("", description="the experiment arm that served the page (serve.experiment); '' without one")


class EventIn(Strict):
    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=128)
    behavior: str
    ts: StrictInt = Field(ge=TS_MIN, lt=TS_MAX, description="unix seconds")

    @field_validator("behavior")
    @classmethod
    def _known(cls, v):
        if v not in BEHAVIORS:
            raise ValueError(f"unknown behaviour {v!r}; valid: {', '.join(BEHAVIORS)}")
        return v


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class EventsResponse(Strict):
    received: int
    stored: int = Field(description="new events; the rest were duplicates of earlier event ids")


class SimilarResponse(Strict):
    item_id: str
    similar: list[Item]
