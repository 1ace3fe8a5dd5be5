"""Benchmark: what the served DIN forward would save by doing its request-independent work once (issue 18).

    python benchmarks/serve_model_parts.py BUNDLE [--requests 20] [--reps 9] [--json]

On real requests of a DIN bundle (the merged candidates of the most active users, as `ServedRanker.score`
sends them: the history once, `shared_sequence`), one thread, CPU ms per forward (median, interleaved):

    served           the bundle's TorchScript as `ServedRanker` serves it (frozen at load), and as loaded
    eager            the eager RankModel from best.npz (fp32), what the export traces
    table once       the same function with the deep tower's small-field table (S, V, H) and the large
                     fields' weight built once per model, not on every call (`model.deep_first_layer` builds
                     them per call: they depend on the weights only)
    + history once   also DIN's activation unit run once per distinct history step (item, leaf), the
                     weight times its count: a history that repeats an item (pv, then click, cart) costs less

Each variant's logits are compared with the eager model's (max abs difference). A prototype for
`rank/model.py` and `rank/blocks_sequence.py` (not serve code): the served TorchScript stays the export's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


class Prototype:
    """The DIN + MLP forward of `RankModel` in eval mode with one user's history (seq (1, L, S)), its
    request-independent parts built once at construction."""

    def __init__(self, model, *, dedupe: bool):
        m, self.m, self.dedupe = model, model, dedupe
        if model.config.sequence != "din" or model.deep is None or model.cross is not None or model.wide is not None:
            raise ValueError("the prototype covers DIN with an MLP tower only (preset 'din')")
        d, nf = model.config.embed_dim, len(model.spec.sparse)
        first = m.deep.first_layer()
        w, width = first.weight.detach(), first.weight.size(0)
        head = w[:, : nf * d].reshape(width, nf, d)  # (H, F, D)
        table = m.embedding.table.weight.detach()
        self.lookup = torch.bmm(table[m.small_rows], head.index_select(1, m.small).permute(1, 2, 0)).reshape(-1, width)
        self.w_large_t = torch.cat([head.index_select(1, m.large).reshape(width, -1), w[:, nf * d:]], 1).t().contiguous()
        self.b0 = first.bias.detach()
        att = m.sequence
        self.a, self.a_bias, self.c, self.g = (t.detach() for t in (att.query.weight, att.query.bias, att.key.weight,
                                                                      att.product.weight))

    def _din(self, query, seq):
        codes = seq[0][seq[0, :, 0] > 0]  # (L', S) real steps
        counts = None
        if self.dedupe:
            codes, counts = torch.unique(codes, dim=0, return_counts=True)
        k = self.m.embedding.lookup(codes, self.m.seq_offsets).flatten(1)  # (L', E)
        n, hidden = k.size(0), self.a.size(0)
        weight = (self.a.t().unsqueeze(0) + k.unsqueeze(-1) * self.g.t().unsqueeze(0)).permute(1, 0, 2).reshape(query.size(1), n * hidden)
        h = torch.addmm((F.linear(k, self.c) + self.a_bias).reshape(-1), query, weight).view(-1, n, hidden)
        w = self.m.sequence.score(h).squeeze(-1)  # (B, L')
        return (w * counts.to(w.dtype) if counts is not None else w) @ k

    def __call__(self, batch):
        m, sparse = self.m, batch["sparse"]
        e = m.embedding(sparse)  # (B, F, D)
        pooled = self._din(e[:, m.target_fields].flatten(1), batch["seq"])
        n = e.size(0)
        small = F.embedding_bag(sparse.index_select(1, m.small) + m.small_base, self.lookup, mode="sum")
        x_large = torch.cat([e.index_select(1, m.large).reshape(n, -1), batch["dense"], pooled], 1)
        h = m.deep.after_first(torch.addmm(small + self.b0, x_large, self.w_large_t))
        logit = m.bias + m.head(h).squeeze(-1)
        return logit * m.calibration[0] + m.calibration[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=20, help="requests (most active users) in the timed set")
    p.add_argument("--reps", type=int, default=9, help="timed passes over the set (the median is quoted)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from serve_common import bundle_users

    from homefeed.config import Config
    from homefeed.rank.export import load_torchscript
    from homefeed.rank.model import ModelConfig, RankModel
    from homefeed.rank.spec import FeatureSpec
    from homefeed.rank.train import load_checkpoint
    from homefeed.serve.artefacts import ServingBundle
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.state import SQLiteStore

    b = ServingBundle.load(a.bundle)
    r = b.ranker
    if r is None or not r.shared_sequence:
        raise SystemExit(f"{a.bundle}: needs a ranker that takes the history once (served.json shared_sequence)")
    users, now = bundle_users(a.bundle)
    pipe = Pipeline(b, SQLiteStore(Path(tempfile.mkdtemp()) / "s.db"), Config())
    batches, steps = [], []
    for u in users[: a.requests]:
        state = pipe.user_state(u, now)
        batch = r.features(state, pipe.recall(state, []), {}, shared_sequence=True)
        batches.append({k: v for k, v in batch.items() if k in r.inputs})
        real = batch["seq"][0][batch["seq"][0, :, 0] > 0]
        steps.append((int(real.size(0)), int(torch.unique(real, dim=0).size(0))))
    pipe.close()
    meta = json.loads((a.bundle / "rank" / "model.json").read_text())
    eager = load_checkpoint(RankModel(FeatureSpec(**meta["spec"]), ModelConfig(**meta["config"])), a.bundle / "rank" / "best.npz")
    eager.eval().requires_grad_(False)
    unfrozen = load_torchscript(a.bundle / "rank" / r.model_name).eval()
    runs = {f"served: {r.model_name}, frozen at load": r.model, f"{r.model_name} as loaded (not frozen)": unfrozen,
            "eager fp32": eager,
            "table once": Prototype(eager, dedupe=False), "table once + history once": Prototype(eager, dedupe=True)}
    if (a.bundle / "rank" / "model.pt").exists():
        runs["TorchScript model.pt (fp32)"] = load_torchscript(a.bundle / "rank" / "model.pt")
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        ref = [eager(x) for x in batches]
        diff = {k: max(float((f(x) - y).abs().max()) for x, y in zip(batches, ref)) for k, f in runs.items()}
        for _ in range(a.reps):
            for k, f in runs.items():  # interleaved, so load from other processes hits every variant alike
                t = time.process_time()
                for x in batches:
                    f(x)
                cpu[k].append((time.process_time() - t) / len(batches) * 1000)
    med = {k: float(np.median(v)) for k, v in cpu.items()}
    out = {"bundle": str(a.bundle), "requests": len(batches), "candidates_median": float(np.median([x["sparse"].size(0) for x in batches])),
           "history_steps_mean": float(np.mean([s for s, _ in steps])), "distinct_steps_mean": float(np.mean([u for _, u in steps])),
           "cpu_ms_median": med, "max_abs_diff_vs_eager": diff,
           "speedup_vs_eager": {k: med["eager fp32"] / v for k, v in med.items()},
           "loadavg_start": load0, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['requests']} requests, {out['candidates_median']:.0f} candidates, history {out['history_steps_mean']:.1f} steps "
          f"({out['distinct_steps_mean']:.1f} distinct); CPU ms per forward, median of {a.reps}, 1 thread")
    for k in runs:
        print(f"  {k:40s} {med[k]:6.3f} ms  {out['speedup_vs_eager'][k]:5.2f}x eager  max |diff| {diff[k]:.2g}")
    print("load average at start / end:", " ".join(load0), "/", " ".join(out["loadavg"]))


if __name__ == "__main__":
    main()
