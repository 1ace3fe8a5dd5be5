"""Start `homefeed serve` in a child process and wait until it answers: for the demo, benchmarks and tests."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def start_server(bundle: str | Path, *, port: int, state: str, settings: tuple[str, ...] = (), timeout_s: float = 300,
                 quiet: bool = False, workers: int = 1, env: dict[str, str] | None = None,
                 wait_ready: bool = True) -> tuple[subprocess.Popen, str]:
    """`homefeed serve BUNDLE` on 127.0.0.1:port (with `--set` settings, `--workers` and extra environment `env`);
    returns (process, base url) once /readyz answers ready (with several workers: once each has, or 120 s after the
    first did), or with wait_ready=False once /healthz answers (a server whose state store is down is not ready)."""
    import httpx

    out = subprocess.DEVNULL if quiet else None
    sets = [arg for s in settings for arg in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "homefeed.cli", "serve", str(bundle), "--port", str(port), "--state", state,
                             "--workers", str(workers), *sets], stdout=out, stderr=out, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    ready: set[str] = set()  # workers that answered /readyz
    first, reason = 0.0, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"homefeed serve exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(url + ("/readyz" if wait_ready else "/healthz"), timeout=5)
        except httpx.TransportError:
            time.sleep(0.3)
            continue
        if r.status_code != 200:
            reason = r.text[:300]
            time.sleep(0.3)
            continue
        if not wait_ready:
            return proc, url
        ready.add(r.json().get("worker", ""))
        first = first or time.monotonic()
        if len(ready) >= workers or time.monotonic() - first > 120:  # the kernel may keep picking one worker
            return proc, url
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"homefeed serve was not ready after {timeout_s:.0f} s: {reason}")
