"""Start `homefeed serve` in a child process and wait until it answers, kill it whole, measure its memory: for the
demo, benchmarks and tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_server(bundle: str | Path, *, port: int, state: str, settings: tuple[str, ...] = (), timeout_s: float = 300,
                 quiet: bool = False, workers: int = 1, env: dict[str, str] | None = None,
                 wait_ready: bool = True, log: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """`homefeed serve BUNDLE` on 127.0.0.1:port (with `--set` settings, `--workers` and extra environment `env`;
    its output appended to the file `log` when given, else shown unless `quiet`);
    returns (process, base url) once /readyz answers ready (with several workers: once each has, or 120 s after the
    first did), or with wait_ready=False once /healthz answers (a server whose state store is down is not ready)."""
    import httpx

    out = open(log, "ab") if log is not None else subprocess.DEVNULL if quiet else None
    sets = [arg for s in settings for arg in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "homefeed.cli", "serve", str(bundle), "--port", str(port), "--state", state,
                             "--workers", str(workers), *sets], stdout=out, stderr=out, env={**os.environ, **(env or {})})
    if log is not None:
        out.close()  # the child holds its own copy
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


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (uvicorn's workers, their helpers), read from /proc; [] off Linux."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the server and every process under it at once (a `kill -9` of the whole service), then reap it."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(30)


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of `pid` and its descendants (0 for those gone)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return total
