"""Profile: where a full homepage request's CPU goes, in process (issue 18: profile first, then fix).

    python benchmarks/serve_profile.py BUNDLE [--requests 200] [--top 15] [--json]

Full requests (every one a rebuild, as `benchmarks/serve.py` times them) on one SQLite state file, one torch
thread. Prints (1) the CPU ms of the request thread per stage from the pipeline's own timings and the whole
process's CPU ms per request, (2) cProfile's top functions by own time (the model forward shows as one torch
call), (3) the torch profiler's top ops of the served forward on the same requests' batches.
Wall times on a shared machine are noisy: read the shares, and quote the load average printed with them.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--top", type=int, default=15, help="lines of each profile")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from serve_common import bundle_users

    from homefeed.config import Config
    from homefeed.serve.artefacts import ServingBundle
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.schemas import HomepageRequest
    from homefeed.serve.state import SQLiteStore

    b = ServingBundle.load(a.bundle)
    users, now = bundle_users(a.bundle)
    pipe = Pipeline(b, SQLiteStore(Path(tempfile.mkdtemp()) / "s.db"), Config())
    pipe.warm_up()
    step = pipe.exposure_cfg.max_age_s + 1
    reqs = [HomepageRequest(user_id=users[i % len(users)], now=now + i * step) for i in range(a.requests + 20)]
    for r in reqs[:20]:
        pipe.homepage(r)
    stages: dict[str, list[float]] = {}
    c0 = time.process_time()
    for r in reqs[20:]:
        for k, v in pipe.homepage(r).timings_ms.items():
            stages.setdefault(k, []).append(v)
    cpu_ms = (time.process_time() - c0) / a.requests * 1000
    prof = cProfile.Profile()
    prof.enable()
    for r in reqs[20:]:
        pipe.homepage(HomepageRequest(user_id=r.user_id, now=r.now + 10**8))
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(a.top)
    cprofile_lines = [ln for ln in text.getvalue().splitlines() if ln.strip() and ("(" in ln or "ncalls" in ln)][: a.top + 1]
    r = b.ranker
    ops: list[str] = []
    if r is not None:
        batches = []
        for u in users[:20]:
            state = pipe.user_state(u, now)
            batch = r.features(state, pipe.recall(state, []), {}, shared_sequence=r.shared_sequence)
            batches.append({k: batch[k] for k in r.inputs})
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as tp:
            for x in batches:
                r.model(x)
        table = tp.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.top,
                                                                 max_name_column_width=30, max_shapes_column_width=60)
        ops = table.splitlines()
    pipe.close()
    out = {"bundle": str(a.bundle), "requests": a.requests, "process_cpu_ms_per_request": cpu_ms,
           "stage_wall_ms_median": {k: float(np.median(v)) for k, v in stages.items()},
           "cprofile_top_by_own_time": cprofile_lines, "torch_profiler_top_ops": ops,
           "loadavg_start": load0, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.requests} full requests: {cpu_ms:.2f} process CPU ms per request; stage wall ms (median): "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["stage_wall_ms_median"].items()))
    print("\ncProfile, top functions by own time:")
    print("\n".join(cprofile_lines))
    print("\ntorch profiler, the served forward's top ops:")
    print("\n".join(ops))
    print("load average at start / end:", " ".join(load0), "/", " ".join(out["loadavg"]))


if __name__ == "__main__":
    main()
