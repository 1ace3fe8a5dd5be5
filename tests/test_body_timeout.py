"""Slow clients against a real uvicorn on 127.0.0.1, over raw sockets: a half-sent or trickled body and an unfinished
request head each get a 408 and a closed socket within the deadline; normal requests, keep-alive included, still work."""
import socket
import threading
import time

import pytest
import uvicorn

from conftest import free_port

from homefeed.serve.body_timeout import (BodyTimeout, HeaderTimeoutH11Protocol, HeaderTimeoutHttpToolsProtocol,
                                         head_timeout_protocol)

DEADLINE_S = 1.0


class QuickHeads(HeaderTimeoutH11Protocol):
    head_timeout_s = DEADLINE_S


class QuickHeadsHttpTools(HeaderTimeoutHttpToolsProtocol):
    head_timeout_s = DEADLINE_S


async def echo(scope, receive, send):
    """A real handler: reads the body as any app would, answers with its length."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    text = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(text)).encode())]})
    await send({"type": "http.response.body", "body": text})


def run_server(app, http):
    """uvicorn serving `app` on a free loopback port in a thread; returns (server, thread, port) once it listens."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=http, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            return server, thread, port
        time.sleep(0.02)
    pytest.fail("uvicorn did not start")


@pytest.fixture(scope="module", params=[QuickHeads, QuickHeadsHttpTools], ids=["h11", "httptools"])
def port(request):
    if request.param is QuickHeadsHttpTools:
        pytest.importorskip("httptools")
    server, thread, port = run_server(BodyTimeout(echo, timeout_s=DEADLINE_S, limit=1000), request.param)
    yield port
    server.should_exit = True
    thread.join(10)


def exchange(port, *chunks, pause_s=0.0, wait_s=5.0):
    """Send `chunks` (pausing between them), then read until the server closes; returns (reply, seconds to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        for i, chunk in enumerate(chunks):
            if i and pause_s:
                time.sleep(pause_s)
            try:
                s.sendall(chunk)
            except OSError:  # the server already answered and closed
                break
        t0, reply = time.monotonic(), b""
        try:
            while data := s.recv(4096):
                reply += data
        except TimeoutError:
            return reply, None  # still open
        return reply, time.monotonic() - t0


POST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"


def test_a_whole_request_is_answered_and_keep_alive_works(port):
    two = POST % 5 + b"hello" + POST % 3 + b"abc"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(two)
        reply = b""
        while reply.count(b"HTTP/1.1 200") < 2:
            reply += s.recv(4096)
    assert reply.count(b"HTTP/1.1 200") == 2 and reply.endswith(b"3")


def test_a_half_sent_body_gets_a_408_and_the_socket_closes(port):
    reply, closed_after = exchange(port, POST % 100 + b'{"half": ')
    assert reply.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in reply, reply
    assert closed_after is not None and closed_after < DEADLINE_S + 2


def test_a_trickled_body_times_out_on_its_total_time_not_per_chunk(port):
    t0 = time.monotonic()
    reply, _ = exchange(port, POST % 40, *[b"x"] * 40, pause_s=0.1)  # 4 s for the body, a byte each 0.1 s
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - t0 < DEADLINE_S + 2


def test_a_body_over_the_limit_is_a_413(port):
    reply, _ = exchange(port, POST % 5000 + b"x" * 10)
    assert reply.startswith(b"HTTP/1.1 413"), reply


def test_an_unfinished_request_head_gets_a_408_and_the_socket_closes(port):
    reply, closed_after = exchange(port, b"POST /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert reply.startswith(b"HTTP/1.1 408") and b"head was not received" in reply, reply
    assert closed_after is not None and closed_after < DEADLINE_S + 2


def test_a_trickled_head_after_a_keep_alive_response_times_out(port):
    first = POST % 2 + b"ok"
    reply, closed_after = exchange(port, first, b"GET /x HTTP/1.1\r\n", *[b"X-A: 1\r\n"] * 30, pause_s=0.1)
    assert reply.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in reply, reply
    assert closed_after is not None


def test_a_silent_connection_is_closed(port):
    reply, closed_after = exchange(port)
    assert reply == b"" and closed_after is not None and closed_after < DEADLINE_S + 2


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_plain_uvicorn_keeps_an_unfinished_head_open(http):
    """Why the protocol exists: uvicorn's own protocols never time out a head that does not finish."""
    if http == "httptools":
        pytest.importorskip("httptools")
    server, thread, port = run_server(echo, http)
    try:
        reply, closed_after = exchange(port, b"GET /x HTTP/1.1\r\nHost: t\r\n", wait_s=DEADLINE_S + 1.5)
        assert reply == b"" and closed_after is None
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_homefeed_app_behind_the_protocol(tiny_bundle, tmp_path):
    """The real app (its own body guard) under the head-timeout protocol: a slow head is a 408, health still answers."""
    from homefeed.serve.api import create_app

    app = create_app(tiny_bundle, state=f"sqlite:{tmp_path / 'state.db'}")
    quick = type("Quick", (head_timeout_protocol(),), {"head_timeout_s": DEADLINE_S})  # what `homefeed serve` would use
    server, thread, port = run_server(app, quick)
    try:
        reply, _ = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", wait_s=1.0)
        assert reply.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in reply, reply
        reply, closed_after = exchange(port, b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-")
        assert reply.startswith(b"HTTP/1.1 408") and closed_after is not None, reply
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.service.close()
