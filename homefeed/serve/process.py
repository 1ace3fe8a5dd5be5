"""Start `homefeed serve` in a child process and wait until it answers: for the demo and benchmarks."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def start_server(bundle: str | Path, *, port: int, state: str, settings: tuple[str, ...] = (), timeout_s: float = 300,
                 quiet: bool = False) -> tuple[subprocess.Popen, str]:
    """`homefeed serve BUNDLE` on 127.0.0.1:port (with `--set` settings); returns (process, base url) once /readyz answers."""
    import httpx

    out = subprocess.DEVNULL if quiet else None
    sets = [arg for s in settings for arg in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "homefeed.cli", "serve", str(bundle), "--port", str(port), "--state", state,
                             *sets], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"homefeed serve exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"homefeed serve was not ready after {timeout_s:.0f} s")
