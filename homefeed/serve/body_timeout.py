"""Slow clients time out: a request head or body not fully received within N seconds is a 408, then the socket closes.

Two phases, two guards (a slowloris client holds a connection open by sending a byte now and then):

- **the body** (`BodyTimeout`, an ASGI middleware, or `read_body` for a middleware that already reads bodies whole):
  the whole body must arrive within `timeout_s` of the first `receive`, however it trickles, and within `limit`
  bytes (413). The app then gets the body in one message, so no handler ever waits on a slow client.
- **the head** (`head_timeout_protocol()`: uvicorn's httptools or h11 protocol with a deadline): uvicorn times out an idle
  keep-alive connection but not one whose request line and headers never finish (any byte received cancels its
  keep-alive timer, and the ASGI app is only called once the head is complete, so no middleware can see it). This
  protocol answers 408 and closes a connection whose head is not complete `HEAD_TIMEOUT_S` after the connection
  opened or its last response ended. Use it with `uvicorn.run(..., http=head_timeout_protocol())`.

    app = BodyTimeout(app, timeout_s=10, limit=1 << 20)
"""
from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional: only the h11 protocol then
    HttpToolsProtocol = object

BODY_TIMEOUT_S = 10.0
HEAD_TIMEOUT_S = 10.0
BODY_METHODS = ("POST", "PUT", "PATCH")


async def read_body(receive, *, limit: int, timeout_s: float) -> tuple[bytes, tuple[int, str] | None]:
    """Read a request body whole: (body, None), or (b"", (status, reason)) when it is over `limit` bytes (413), not
    complete within `timeout_s` seconds in all (408), or the client left first (400)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return b"", (400, "the client disconnected before sending the whole body")
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return b"", (413, f"request body over {limit} bytes, the most this endpoint takes")
                if not message.get("more_body", False):
                    return b"".join(chunks), None
    except TimeoutError:
        return b"", (408, f"the request body was not received within {timeout_s:g} s")


def replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then passes on to the client's (disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


async def send_refusal(send, status: int, detail: str) -> None:
    """A JSON `{"detail": ...}` response that also closes the connection (the rest of a body is never read)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyTimeout:
    """ASGI middleware: bodies of POST/PUT/PATCH requests are read whole within `timeout_s` and `limit` bytes before
    the app runs (408, 413); a declared Content-Length over the limit is refused before reading anything."""

    def __init__(self, app, *, timeout_s: float = BODY_TIMEOUT_S, limit: int = 1 << 20):
        if not timeout_s > 0 or limit < 0:
            raise ValueError(f"BodyTimeout: timeout_s={timeout_s} must be > 0 and limit={limit} >= 0")
        self.app, self.timeout_s, self.limit = app, timeout_s, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_refusal(send, 413, f"request body of {int(declared)} bytes; at most {self.limit} taken")
        body, refusal = await read_body(receive, limit=self.limit, timeout_s=self.timeout_s)
        if refusal is not None:
            return await send_refusal(send, *refusal)
        await self.app(scope, replay(body, receive), send)


class _HeadDeadline:
    """Mixin for a uvicorn HTTP protocol: a connection whose request head (request line and headers) is not complete
    `head_timeout_s` after it opened, or after its last response, gets a 408 and is closed (closed silently when
    nothing of a new request arrived). A request under way is left alone: its body has the app's own deadline."""

    head_timeout_s = HEAD_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request's head has its own deadline (keep-alive idling is uvicorn's)

    def connection_lost(self, exc) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        handle = getattr(self, "_head_deadline", None)
        if handle is not None:
            handle.cancel()
            self._head_deadline = None

    def _head_pending(self) -> bool:
        """Part of a request head has arrived and it is not complete yet."""
        raise NotImplementedError

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self._head_pending():
            detail = f"the request head was not received within {self.head_timeout_s:g} s".encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: " + str(len(detail)).encode() + b"\r\nconnection: close\r\n\r\n" + detail)
        self.transport.close()


class HeaderTimeoutH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head."""

    def _head_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])  # h11 buffers a partial head


class HeaderTimeoutHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol (its default when httptools is installed) with a deadline on each request head."""

    _heads_begun = _heads_done = 0

    def on_message_begin(self) -> None:
        self._heads_begun += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._heads_done += 1
        super().on_headers_complete()

    def _head_pending(self) -> bool:
        return self._heads_begun > self._heads_done


def head_timeout_protocol() -> type:
    """The protocol class for `uvicorn.run(http=...)`: httptools when installed (as uvicorn's "auto" picks), else h11."""
    return HeaderTimeoutH11Protocol if HttpToolsProtocol is object else HeaderTimeoutHttpToolsProtocol
