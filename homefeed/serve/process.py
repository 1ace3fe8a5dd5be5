"""Start `homefeed serve` in a child process and wait until it answers: for the demo and benchmarks."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def start_server(bundle: str | Path, *, port: int, state: str, settings: tuple[str, ...] = (), timeout_s: float = 300,
                 quiet: bool = False, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """`homefeed serve BUNDLE` on 127.0.0.1:port (with `--set` settings and `--workers`); returns (process, base url)
    once /readyz answers (with several workers: once the first one does)."""
    import httpx

    out = subprocess.DEVNULL if quiet else None
    sets = [arg for s in settings for arg in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "homefeed.cli", "serve", str(bundle), "--port", str(port), "--state", state,
                             "--workers", str(workers), *sets], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    ready: set[int] = set()  # worker pids that answered /readyz
    first = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"homefeed serve exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(url + "/readyz", timeout=1)
            if r.status_code == 200:
                ready.add(r.json().get("pid", 0))
                first = first or time.monotonic()
                if len(ready) >= workers or time.monotonic() - first > 120:  # the kernel may keep picking one worker
                    return proc, url
                time.sleep(0.05)
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"homefeed serve was not ready after {timeout_s:.0f} s")
