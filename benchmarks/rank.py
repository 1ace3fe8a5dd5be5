"""Benchmark: ranking models against deepctr-torch and torch-rechub on the same tensors, same run.

Data: N synthetic samples with a planted truth (16 sparse fields, 2 dense, a behaviour sequence of
item and category with time-gap buckets). Click probability = sigmoid of item popularity, position
bias, a user x category latent cross, an age x category cross, a price x purchase-power fit, and
recency-weighted matches of the target category and item in the history, so sequence models and
field crosses can both earn AUC. The last 10% of rows are the test set.

Every model trains in its own subprocess (its own threads and memory) with the SAME loop: the
tensors are pre-built, each step gathers a shuffled batch, Adam, binary cross-entropy, one epoch
(or until --budget seconds). Peers get their inputs in their own formats, built before timing:
deepctr-torch one float matrix (its API casts ids to float), torch-rechub a dict of columns. This is
kinder to the peers than their own fit loops (no DataLoader, no regularisation terms).
Ours runs with sparse embedding gradients (lazy Adam on the tables: `homefeed.rank.optim.RowAdam`, SparseAdam's
update without its sorts, one numba kernel on CPU), fp32 and bf16 autocast. In training the deep tower's first
Linear takes the fields of at most 512 codes by code (`homefeed.rank.first_layer`: 12 of the 16 fields here,
its GEMMs shrink from 258 to 66 input columns), the same function as the plain Linear.

Measured per model: train and inference samples/s, peak resident memory while training above
the data (a sampler thread), test AUC. For BST also: AUC of the dynamic-int8 model and the time
to score 500 candidates of one request (eager fp32, eager int8, TorchScript int8, bf16).

    python benchmarks/rank.py                          # 1M samples, all models and peers
    python benchmarks/rank.py --rows 100000 --models deepfm,bst --json
Targets (issue 7): >= 3x the peers' training samples/s at equal AUC (within 0.002); 500 candidates < 10 ms.

Measured 2026-12-05 (issue 18, DeepFM's AUC gap), 500k rows, --threads 2, load average 7-11, before/after interleaved
under the CPU lock, 6 runs each, median: DeepFM test AUC 0.6057 -> 0.6122 against deepctr fit's 0.6129 (gap 0.0072 ->
0.0007), samples/s ratio 2.29x -> 2.25x (single runs 2.20-2.43 and 2.12-2.53; ours 106.6k -> 97.5k, deepctr 45.6k ->
43.2k, the same code, so the spread is the load). In one process, alternating 10-step rounds, a step is 25.6 vs 25.9 ms.
The cause was the embeddings' init: std 0.05 made the FM term ~0.1 logit of random pair noise that one epoch never
unlearned; DeepFM now starts its embeddings at std 0.01 (`ModelConfig.embed_std`).
The last lines print ours / the peer's fit per model (samples/s ratio, AUC difference), and the JSON's "ratios".

Measured 2026-12-05, 500k rows, --threads 2, load average 20-28 (other jobs), the code before and after the
first-layer-by-code and RowAdam-kernel change interleaved, 3 runs each, median: DeepFM 1.93x -> 2.49x (ours 73.4k ->
82.9k samples/s), DCN 2.18x -> 2.00x (67.0k -> 62.5k; single runs spread 45-71k at this load); test AUC unchanged to
4 digits (DeepFM 0.6057, DCN 0.6137). In one process, alternating 10-step rounds (load 14-17), the by-code first
layer cut DeepFM's step 44.6 -> 40.9 ms and DCN's 56.7 -> 50.7 ms (best round).

Measured 2026-12-04, 500k rows, --threads 2, load average 10-14 (3 runs, median): DeepFM ours 73.9k vs deepctr fit
40.0k samples/s (1.85x; AUC 0.6057 vs 0.6129), DCN 63.1k vs 31.4k (2.01x; AUC 0.6137 vs 0.6122). RowAdam against
torch's SparseAdam in the same loop (--table-optimizer): 1.16x (79.8k vs 68.5k), same AUC to 4 digits.

Measured 2026-11-22, 1M rows, --threads 1, on the 2-core dev box while other jobs kept its load at 8-11
(so wall figures are low; samples per CPU-second are the steadier comparison). Train per CPU-s / test AUC:
    deepfm  ours 42.9k / 0.6425 (bf16 57.7k / 0.6426)   deepctr fit 26.4k / 0.6433, in our loop 43.8k / 0.6422
    dcn     ours 35.0k / 0.6446 (bf16 36.3k / 0.6446)   deepctr fit 17.0k / 0.6431, in our loop 28.3k / 0.6430
    din     ours 13.4k / 0.6503 (bf16 13.7k / 0.6503)   deepctr fit  3.3k / 0.6388 (0.58 epoch in 300 s)
    bst     ours 16.7k / 0.6535 (bf16 18.3k / 0.6536)   rechub fit   5.2k / 0.6482 (0.87 epoch), our loop 6.1k
    served BST: int8 AUC loss 0.0002; 500 candidates, 1 thread, median / best ms: fp32 21.2 / 14.0,
    int8 21.0 / 14.4, int8 TorchScript 18.6 / 9.9, bf16 autocast 19.1 / 7.5 (truth AUC 0.7720)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

FIELDS = [  # (name, vocabulary without the 0 code): 16 sparse fields
    ("user_id", 20_000), ("gender", 3), ("age", 8), ("city", 300), ("power", 6),
    ("item_id", 20_000), ("category", 200), ("brand", 2_000), ("shop", 4_000), ("price_band", 10),
    ("channel", 8), ("hour", 24), ("position", 60), ("page", 6), ("trigger_type", 5), ("weekday", 7),
]
GAPS = 16  # time-gap buckets; 0 = padding
RUNS = {  # run name -> (library, model, variant); "fit": the library's own training loop, else ours
    "ours deepfm": ("ours", "deepfm", "fp32"), "ours deepfm bf16": ("ours", "deepfm", "bf16"),
    "deepctr deepfm fit": ("deepctr", "deepfm", "fit"), "deepctr deepfm": ("deepctr", "deepfm", "fp32"),
    "ours dcn": ("ours", "dcn", "fp32"), "ours dcn bf16": ("ours", "dcn", "bf16"),
    "deepctr dcn fit": ("deepctr", "dcn", "fit"), "deepctr dcn": ("deepctr", "dcn", "fp32"),
    "ours din": ("ours", "din", "fp32"), "ours din bf16": ("ours", "din", "bf16"),
    "deepctr din fit": ("deepctr", "din", "fit"), "deepctr din": ("deepctr", "din", "fp32"),
    "ours bst": ("ours", "bst", "fp32"), "ours bst bf16": ("ours", "bst", "bf16"),
    "rechub bst fit": ("rechub", "bst", "fit"), "rechub bst": ("rechub", "bst", "fp32"),
}


def make_data(n: int, *, max_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic samples in the batch contract (codes 1..v, 0 = padding) with a planted click truth."""
    rng = np.random.default_rng(seed)
    vocab = dict(FIELDS)
    n_items, n_cats = vocab["item_id"], vocab["category"]
    item_cat = rng.permutation(np.arange(n_items) % n_cats)  # every category has items
    by_cat = np.argsort(item_cat, kind="stable")
    cat_start = np.searchsorted(item_cat[by_cat], np.arange(n_cats))
    cat_count = np.bincount(item_cat, minlength=n_cats)

    def item_in(cats):  # a random item (0-based) of each category
        return by_cat[cat_start[cats] + (rng.random(cats.shape) * cat_count[cats]).astype(np.int64)]

    user = rng.integers(0, vocab["user_id"], n)
    fav = rng.integers(0, n_cats, (vocab["user_id"], 3))[user]  # (n, 3) favourite categories
    def from_favourites(shape, p):  # the user's favourite categories with probability p, else any category
        fav_pick = np.take_along_axis(fav, rng.integers(0, 3, (n, int(np.prod(shape[1:])))), 1).reshape(shape)
        return np.where(rng.random(shape) < p, fav_pick, rng.integers(0, n_cats, shape))

    target_cat = from_favourites((n,), 0.4)
    item = item_in(target_cat)
    hist_cat = from_favourites((n, max_len), 0.7)
    hist_item = np.where(rng.random((n, max_len)) < 0.1, item[:, None], item_in(hist_cat))  # some re-visits
    length = rng.integers(0, max_len + 1, n)
    real = np.arange(max_len) < length[:, None]
    gaps = -np.sort(-rng.integers(1, GAPS, (n, max_len)), axis=1) * real  # oldest (largest gap) first
    cols = {name: rng.integers(0, v, n) for name, v in FIELDS}
    cols |= {"user_id": user, "item_id": item, "category": item_cat[item], "brand": item % vocab["brand"],
             "shop": item % vocab["shop"], "price_band": (item * 7) % 10, "age": user % 8, "power": (user // 8) % 6}
    lat_u, lat_c = rng.normal(0, 0.6, (vocab["user_id"], 4)), rng.normal(0, 0.6, (n_cats, 4))
    recency = np.exp(-gaps / 4.0) * real
    logit = (-1.6 + rng.normal(0, 0.5, n_items)[item] - 0.015 * cols["position"] + rng.normal(0, 0.3, 8)[cols["channel"]]
             + (lat_u[user] * lat_c[cols["category"]]).sum(1) + rng.normal(0, 0.4, (8, 20))[cols["age"], cols["category"] % 20]
             - 0.04 * (cols["price_band"] - 2 * cols["power"]) ** 2 / 4
             + 1.2 * np.tanh(((hist_cat == cols["category"][:, None]) * recency).sum(1))
             + 0.6 * ((hist_item == item[:, None]) * recency).max(1))
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    sparse = np.stack([cols[name] + 1 for name, _ in FIELDS], 1)
    dense = np.stack([(cols["price_band"] - 4.5) / 3, rng.normal(0, 1, n)], 1).astype(np.float32)
    seq = np.stack([hist_item + 1, hist_cat + 1], -1) * real[..., None]
    return {"sparse": sparse, "dense": dense, "seq": seq, "seq_gap": gaps, "length": length, "label": label, "truth": logit}


def feature_spec(max_len: int):
    from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField
    group = lambda i: "user" if i < 5 else "item" if i < 10 else "context"  # noqa: E731
    return FeatureSpec(sparse=[SparseField(name=f, vocab_size=v + 1, group=group(i)) for i, (f, v) in enumerate(FIELDS)],
                       dense=[DenseField(name="price", group="item"), DenseField(name="noise", group="user")],
                       sequence=[SequenceField(name="hist_item_id", shares="item_id"), SequenceField(name="hist_category", shares="category")],
                       max_len=max_len, n_gap_buckets=GAPS)


def columns(arrays: dict) -> dict[str, np.ndarray]:
    """The samples as named columns, the input format of deepctr-torch's fit and torch-rechub's datasets."""
    out = {f: arrays["sparse"][:, i] for i, (f, _) in enumerate(FIELDS)}
    return out | {"price": arrays["dense"][:, 0], "noise": arrays["dense"][:, 1], "hist_item_id": arrays["seq"][..., 0],
                  "hist_category": arrays["seq"][..., 1], "seq_length": arrays["length"]}


def ours(model_name: str, variant: str, arrays: dict, max_len: int):
    """Our RankModel (sparse embedding gradients); its input is the batch dict itself; it returns logits."""
    from homefeed.rank.model import build_model
    model = build_model(feature_spec(max_len), model_name, sparse_grad=True)
    return model, lambda b: b, lambda out: out, model.input_names


def deepctr(model_name: str, arrays: dict, max_len: int, dim: int = 16):
    """deepctr-torch DeepFM / DCN / DIN; in our loop its input is one float matrix in feature_index order."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DCN, DIN, DeepFM
    sparse = [SparseFeat(f, v + 1, embedding_dim=dim) for f, v in FIELDS]
    dense = [DenseFeat("price"), DenseFeat("noise")]
    if model_name == "din":
        hist = [VarLenSparseFeat(SparseFeat(f"hist_{f}", dict(FIELDS)[f] + 1, embedding_dim=dim, embedding_name=f), max_len,
                                 length_name="seq_length") for f in ("item_id", "category")]
        model = DIN(sparse + dense + hist, ["item_id", "category"], dnn_hidden_units=(256, 128))
    elif model_name == "dcn":
        model = DCN(sparse + dense, sparse + dense, cross_num=3, dnn_hidden_units=(256, 128))
    else:
        model = DeepFM(sparse + dense, sparse + dense, dnn_hidden_units=(256, 128))
    cols = columns(arrays)
    arrays["x"] = np.concatenate([cols[name].reshape(len(cols[name]), -1) for name in model.feature_index], 1).astype(np.float32)
    return model, lambda b: b["x"], lambda out: out.squeeze(-1), ["x"]  # probabilities


def rechub_bst(arrays: dict, max_len: int, dim: int = 16):
    """torch-rechub BST on a dict of columns, its encoder rebuilt to our width (2 heads, FFN 128, no dropout)."""
    import torch
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import BST
    targets = [SparseFeature(f, dict(FIELDS)[f] + 1, embed_dim=dim) for f in ("item_id", "category")]
    others = [SparseFeature(f, v + 1, embed_dim=dim) for f, v in FIELDS if f not in ("item_id", "category")]
    others += [DenseFeature("price"), DenseFeature("noise")]
    hist = [SequenceFeature(f"hist_{f}", dict(FIELDS)[f] + 1, embed_dim=dim, pooling="concat", shared_with=f) for f in ("item_id", "category")]
    model = BST(others, hist, targets, mlp_params={"dims": [256, 128]}, nhead=2, dropout=0.0, max_seq_len=max_len + 1)
    layer = torch.nn.TransformerEncoderLayer(2 * dim, 2, dim_feedforward=128, dropout=0.0, activation=torch.nn.LeakyReLU(), batch_first=True)
    model.transformer_layers = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
    index = {f: i for i, (f, _) in enumerate(FIELDS)}

    def inputs(b):
        x = {f: b["sparse"][:, i] for f, i in index.items()}
        return x | {"price": b["dense"][:, 0], "noise": b["dense"][:, 1], "hist_item_id": b["seq"][..., 0], "hist_category": b["seq"][..., 1]}

    return model, inputs, lambda out: out, ["sparse", "dense", "seq"]  # probabilities


class PeakRSS:
    """Samples this process's resident memory every 20 ms; .peak_mb and .base_mb after the block."""

    def __enter__(self):
        self.base_mb = self.peak_mb = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())


def worker(run: str, args) -> dict:
    """Train and evaluate one run in this process; returns its measurements."""
    import contextlib

    import torch

    from homefeed.evaluate.metrics import auc
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    library, model_name, variant = RUNS[run]
    arrays = make_data(args.rows, max_len=args.max_len)
    builders = {"ours": lambda: ours(model_name, variant, arrays, args.max_len),
                "deepctr": lambda: deepctr(model_name, arrays, args.max_len), "rechub": lambda: rechub_bst(arrays, args.max_len)}
    model, to_input, to_logit, keys = builders[library]()
    data = {k: torch.from_numpy(arrays[k]) for k in keys + ["label"]}
    n_test = args.rows // 10
    order, test_idx = torch.randperm(args.rows - n_test), torch.arange(args.rows - n_test, args.rows)
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "bf16" else contextlib.nullcontext
    with PeakRSS() as mem:
        wall, cpu = time.perf_counter(), time.process_time()
        if variant == "fit":
            seen = own_fit(library, model, arrays, order.numpy(), args)
        else:
            seen = our_loop(model, data, order, to_input, lambda b: to_logit(model(to_input(b))), cast, library == "ours", args)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores, infer_s = predict(model, data, test_idx, to_input, to_logit, cast, args.batch)
    labels = arrays["label"][-n_test:]
    result = {"run": run, "train_rows": seen, "epoch_share": seen / len(order), "train_sps": seen / wall, "train_sp_cpu_s": seen / cpu,
              "infer_sps": len(test_idx) / infer_s, "peak_mb": mem.peak_mb - mem.base_mb, "data_mb": mem.base_mb,
              "auc": auc(labels, scores), "truth_auc": auc(labels, arrays["truth"][-n_test:])}
    if model_name == "bst" and library == "ours" and variant == "fp32":
        result |= serving(model, data, test_idx, scores, args)
    return result


def our_loop(model, data, order, to_input, score, cast, logits: bool, args) -> int:
    """One epoch (or --budget seconds) of shuffled batches, Adam (RowAdam, a lazy sparse Adam, on our tables); rows trained."""
    import torch
    import torch.nn.functional as F
    from homefeed.rank.optim import RowAdam
    if logits:
        tables = RowAdam if args.table_optimizer == "row_adam" else torch.optim.SparseAdam
        opts = [tables(model.sparse_parameters(), lr=args.lr), torch.optim.Adam(model.dense_parameters(), lr=args.lr)]
    else:
        opts = [torch.optim.Adam(model.parameters(), lr=args.lr)]
    loss_fn = F.binary_cross_entropy_with_logits if logits else F.binary_cross_entropy
    model.train()
    seen, start = 0, time.perf_counter()
    for lo in range(0, len(order), args.batch):
        batch = {k: v[order[lo : lo + args.batch]] for k, v in data.items()}
        with cast():
            loss = loss_fn(score(batch).float(), batch["label"])
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        seen += len(batch["label"])
        if time.perf_counter() - start > args.budget:
            break
    return seen


def own_fit(library: str, model, arrays: dict, order: np.ndarray, args) -> int:
    """The library's own fit loop (deepctr `model.fit`, rechub `CTRTrainer`), fed chunks of 64 batches until
    the epoch ends or --budget seconds pass; rows trained."""
    import tempfile

    import torch
    cols = columns(arrays)
    start, seen, chunk = time.perf_counter(), 0, 64 * args.batch
    if library == "deepctr":
        model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy")
    else:
        from torch_rechub.trainers import CTRTrainer
        from torch_rechub.utils.data import TorchDataset
        trainer = CTRTrainer(model, optimizer_params={"lr": args.lr, "weight_decay": 0.0}, n_epoch=1, model_path=tempfile.mkdtemp())
        cols.pop("seq_length")
    for lo in range(0, len(order), chunk):
        rows = order[lo : lo + chunk]
        x, y = {k: v[rows] for k, v in cols.items()}, arrays["label"][rows]
        if library == "deepctr":
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)
        else:
            trainer.fit(torch.utils.data.DataLoader(TorchDataset(x, y), batch_size=args.batch, shuffle=True))
        seen += len(rows)
        if time.perf_counter() - start > args.budget:
            break
    return seen


def predict(model, data, idx, to_input, to_logit, cast, batch_size):
    """Scores (any monotone transform of the probability) of rows idx, and the seconds it took."""
    import torch
    model.eval()
    out, start = [], time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(idx), batch_size):
            batch = {k: v[idx[lo : lo + batch_size]] for k, v in data.items()}
            with cast():
                out.append(to_logit(model(to_input(batch))).float())
    return torch.cat(out).numpy(), time.perf_counter() - start


def serving(model, data, test_idx, scores, args) -> dict:
    """BST as served: AUC of the int8 model; ms to score 500 candidates of one request."""
    import contextlib

    import torch

    from homefeed.evaluate.metrics import auc
    from homefeed.rank.export import export_torchscript, load_torchscript, quantize_int8
    int8 = quantize_int8(model)
    labels = data["label"][test_idx].numpy()
    q_scores, _ = predict(int8, data, test_idx, lambda b: b, lambda o: o, contextlib.nullcontext, args.batch)
    rows = test_idx[:500]  # one user (row 0's profile and history) against 500 candidate items
    request = {k: data[k][rows].clone() for k in ("sparse", "dense", "seq", "seq_gap")}
    for k in ("seq", "seq_gap"):
        request[k][:] = data[k][rows[0]]
    request["sparse"][:, :5] = data["sparse"][rows[0], :5]
    path = export_torchscript(int8, request, f"/tmp/bench_bst_int8_{os.getpid()}.pt")
    scripted = load_torchscript(path)
    os.unlink(path)

    def bf16(b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(b)

    out = {"int8_auc": auc(labels, q_scores), "int8_auc_loss": auc(labels, scores) - auc(labels, q_scores)}
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        for name, fn in (("fp32", model), ("int8", int8), ("int8_ts", scripted), ("bf16", bf16)):
            out[f"ms500_{name}_{threads}t"], out[f"ms500_{name}_{threads}t_best"] = time_ms(fn, request)
    return out


def time_ms(fn, batch, repeats: int = 50) -> tuple[float, float]:
    """Median and best milliseconds of fn(batch) after a warm-up (the best is what an idle core gives)."""
    import torch
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            start = time.perf_counter()
            fn(batch)
            if i >= 5:
                times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.min(times))


def ratios(results: list[dict]) -> dict[str, dict]:
    """Per model with both runs: ours (fp32) against the peer's own fit, samples/s ratio and test AUC difference
    (issue 18's targets: >= 3x, |AUC difference| <= 0.002)."""
    by_run = {r["run"]: r for r in results}
    out = {}
    for run, (library, model, variant) in RUNS.items():
        peer = by_run.get(run) if variant == "fit" else None
        ours_run = by_run.get(f"ours {model}")
        if peer is not None and ours_run is not None:
            out[f"{model}: ours / {library} fit"] = {"train_sps_ratio": ours_run["train_sps"] / peer["train_sps"],
                                                      "auc_diff": ours_run["auc"] - peer["auc"]}
    return out


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"ranking: train/infer throughput, memory, test AUC (the planted truth scores {results[0]['truth_auc']:.4f})")
    for col in ("run", "train samples/s", "per CPU-s", "infer samples/s", "peak MB", "epoch", "test AUC"):
        table.add_column(col, justify="left" if col == "run" else "right", no_wrap=col == "run")
    for r in results:
        table.add_row(r["run"], f"{r['train_sps']:,.0f}", f"{r['train_sp_cpu_s']:,.0f}", f"{r['infer_sps']:,.0f}", f"{r['peak_mb']:,.0f}",
                      f"{r['epoch_share']:.2f}", f"{r['auc']:.4f}")
    Console().print(table)
    for r in results:
        if "int8_auc" in r:
            Console().print(f"{r['run']} served: dynamic int8 test AUC {r['int8_auc']:.4f} (loss {r['int8_auc_loss']:+.4f}); "
                            "ms to score 500 candidates, median / best:")
            for key in sorted(k for k in r if k.startswith("ms500") and not k.endswith("best")):
                Console().print(f"  {key[6:]:>12}: {r[key]:7.2f} / {r[key + '_best']:7.2f}")
    for name, r in ratios(results).items():
        Console().print(f"{name}: {r['train_sps_ratio']:.2f}x training samples/s, test AUC {r['auc_diff']:+.4f} "
                        "(target >= 3x, within 0.002)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training per run at most (then a partial epoch)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs; valid: {', '.join(RUNS)}")
    p.add_argument("--table-optimizer", choices=["row_adam", "sparse_adam"], default="row_adam",
                   help="our embedding tables' optimiser: homefeed's RowAdam, or torch's SparseAdam (the same update, sorted)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("__RESULT__" + json.dumps(worker(args.worker, args)))
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run {unknown[0]!r}; valid runs: {', '.join(RUNS)}")
    results = []
    for run in runs:
        cmd = [sys.executable, __file__, "--worker", run] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                             if k not in ("worker", "json", "runs")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
        line = [x for x in done.stdout.splitlines() if x.startswith("__RESULT__")]
        if done.returncode or not line:
            sys.exit(f"run {run!r} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(line[0][len("__RESULT__"):]))
        if not args.json:
            print(f"{run}: {results[-1]['train_sps']:,.0f} samples/s, AUC {results[-1]['auc']:.4f}", file=sys.stderr)
    if args.json:
        out = {r["run"]: {k: v for k, v in r.items() if k != "run"} for r in results}
        print(json.dumps(out | ({"ratios": ratios(results)} if ratios(results) else {}), indent=1))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
