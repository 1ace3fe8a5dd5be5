"""Rank evaluation: train every preset on the same samples and compare them on the test days.

One set of samples (train/valid/test, encoders fitted on train) is built once; each preset is
seeded, built with `homefeed.rank.model.build_model`, trained with early stopping on valid AUC and
scored on test with the ONE metric module (`homefeed.evaluate.metrics`): AUC, GAUC (per-user AUC
weighted by the user's rows, as in the DIN paper), logloss, calibration (predicted / actual CTR).

    >>> results = evaluate_rank(Dataset.load("out/small_ds"), ["lr", "deepfm", "din", "bst"])   # doctest: +SKIP
    >>> print_table(rank_table(results))                                                       # doctest: +SKIP
    >>> results.meta["protocol"]                                                                # doctest: +SKIP
    'exposures'

Public data sets without an impression log use the DIN protocol automatically (see `samples`);
`movielens_dataset` and `amazon_dataset` adapt the two sets in `../shared/data` to a Dataset:
MovieLens-100K (each rating is a click; user gender, age, zip-3 region; first genre as leaf,
genres as tags; split by time at the 80th/90th percentile) and the S3-Rec Amazon Toys sequences
(no timestamps: each user's items are one hour apart and end together, so the last item of every
user is test and the one before valid, the usual leave-one-out; attributes are brand, root,
standard category, leaf category, then extra categories as tags).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.evaluate.metrics import ctr_metrics
from homefeed.rank.samples import SampleSettings, Samples, build_all
from homefeed.rank.train import TrainSettings, predict, train

COLUMNS = ("auc", "gauc", "logloss", "calibration", "valid_auc", "best_epoch", "train_s", "samples_per_s")


class RankSettings(Section):
    """Everything `evaluate_rank` (and `homefeed train`) needs besides the data and the preset names."""

    samples: SampleSettings = SampleSettings()
    train: TrainSettings = TrainSettings()
    model: dict[str, Any] = Field(default_factory=dict, description="overrides for every preset, e.g. {embed_dim: 8}")


class RankResults(dict):
    """{preset: {"auc", "gauc", "logloss", "calibration", ...}} plus `meta` (protocol, sample counts)."""

    def __init__(self, rows: dict, meta: dict):
        super().__init__(rows)
        self.meta = meta


def fit_preset(preset: str, parts: dict[str, Samples], settings: RankSettings = RankSettings(), *,
               out: str | Path | None = None):
    """Seed, build and train one preset on prepared samples -> (model, TrainResult).

    With `out`, the folder gets everything serving needs: encoders.json/.npz (fitted on train),
    model.json (preset, model config, feature spec, valid AUC) and best.npz/best.json (weights).
    """
    from homefeed.rank.model import build_model

    torch.manual_seed(settings.train.seed)
    model = build_model(parts["train"].spec, preset, **settings.model)
    train_settings = settings.train if out is None else settings.train.model_copy(update={"checkpoint_dir": str(out)})
    fit = train(model, parts["train"], parts["valid"], train_settings)
    if out is not None:
        parts["train"].encoders.save(out)
        meta = {"preset": preset, "config": model.config.model_dump(), "spec": parts["train"].spec.model_dump(),
                "valid_auc": fit.best_valid_auc, "best_epoch": fit.best_epoch, "protocol": parts["train"].protocol}
        (Path(out) / "model.json").write_text(json.dumps(meta, indent=1))
    return model, fit


def evaluate_rank(dataset: Dataset, presets: list[str], settings: RankSettings = RankSettings(), *,
                  samples: dict[str, Samples] | None = None, progress: Callable[[str], None] | None = None) -> RankResults:
    """Train and test each preset on one set of samples; rows keep the order of `presets`."""
    from homefeed.rank.model import PRESETS

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown model preset(s) {unknown}; valid presets: {', '.join(PRESETS)}")
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    parts = samples or build_all(dataset, settings.samples)
    build_s = time.perf_counter() - t0
    test = parts["test"]
    y, users = test.tensors["label"].numpy(), test.tensors["user"].numpy()
    rows = {}
    for preset in presets:
        say(f"train {preset}")
        model, fit = fit_preset(preset, parts, settings)
        m = ctr_metrics(y, predict(model, test, batch_size=settings.train.eval_batch_size, bf16=settings.train.bf16), users)
        rows[preset] = {"auc": m["auc"], "gauc": m["gauc"], "logloss": m["logloss"], "calibration": m["calibration"],
                        "valid_auc": fit.best_valid_auc, "best_epoch": fit.best_epoch, "train_s": fit.train_seconds,
                        "samples_per_s": fit.samples_per_s}
    meta = {"protocol": test.protocol, "why": test.report.get("why"), "build_samples_s": build_s,
            "samples": {p: {k: s.report.get(k) for k in ("rows", "positives", "ctr", "removed")} for p, s in parts.items()},
            "fields": {"sparse": len(test.spec.sparse), "dense": len(test.spec.dense), "max_len": test.spec.max_len}}
    return RankResults(rows, meta)


def rank_table(results: RankResults, *, title: str | None = None):
    """A rich Table of the results (homefeed.evaluate.report layout), protocol in the title."""
    from homefeed.evaluate.report import metrics_table

    protocol = getattr(results, "meta", {}).get("protocol")
    title = title or (f"rank: test metrics ({protocol} protocol)" if protocol else "rank: test metrics")
    return metrics_table(results, title=title, columns=COLUMNS, name_header="model")


# --- the shared public data sets -------------------------------------------------------------

def _split_at(ts: pl.Series, train_q: float, valid_q: float) -> TimeSplit:
    return TimeSplit(train_end=int(ts.quantile(train_q, "lower")) + 1, valid_end=int(ts.quantile(valid_q, "lower")) + 1)


def movielens_dataset(folder: str | Path = "/work/shared/data") -> Dataset:
    """MovieLens-100K (RecBole atomic files ml-100k.inter/.user/.item) as an encoded Dataset, no exposures."""
    folder = Path(folder)
    read = lambda name: pl.read_csv(folder / name, separator="\t", quote_char=None, infer_schema=False).rename(lambda c: c.split(":")[0])
    inter, users, items = read("ml-100k.inter"), read("ml-100k.user"), read("ml-100k.item")
    events = inter.select(pl.col("user_id").cast(pl.Int32), pl.col("item_id").cast(pl.Int32),
                          pl.lit("click").cast(BEHAVIOR).alias("behavior"),
                          pl.col("timestamp").cast(pl.Float64).cast(pl.Int64).alias("ts")).sort("ts", "user_id")
    genres = pl.col("class").str.split(" ")
    genre_codes = {g: i + 1 for i, g in enumerate(sorted(set(items["class"].str.split(" ").explode().to_list())))}
    items = items.select(pl.col("item_id").cast(pl.Int32),
                         genres.list.first().replace_strict(genre_codes, return_dtype=pl.Int32).alias("leaf_category"),
                         pl.lit(0, pl.Int32).alias("brand"), pl.lit(0, pl.Int32).alias("shop"),
                         pl.lit(None, pl.Float64).alias("price"), genres.alias("tags"))
    users = users.select(pl.col("user_id").cast(pl.Int32), pl.col("gender"), pl.col("age").cast(pl.Int32),
                         pl.col("zip_code").str.slice(0, 3).alias("city"))
    return Dataset(events=events, items=items, users=users, split=_split_at(events["ts"], 0.8, 0.9))


def amazon_dataset(folder: str | Path = "/work/shared/data", *, name: str = "Toys_and_Games") -> Dataset:
    """S3-Rec Amazon sequences (`<name>.txt` + `<name>_item2attributes.json`) as a Dataset, no exposures."""
    folder = Path(folder)
    lines = (folder / f"{name}.txt").read_text().split("\n")
    seqs = [np.array(line.split(), dtype=np.int64) for line in lines if line.strip()]
    lengths = np.array([s.size - 1 for s in seqs])
    user = np.repeat(np.array([s[0] for s in seqs]), lengths)
    item = np.concatenate([s[1:] for s in seqs])
    back = np.concatenate([np.arange(n - 1, -1, -1) for n in lengths])  # steps before the user's last item
    end = 1_400_000_000
    events = pl.DataFrame({"user_id": user.astype(np.int32), "item_id": item.astype(np.int32),
                           "behavior": pl.Series(["click"] * item.size).cast(BEHAVIOR), "ts": end - 3600 * back}).sort("ts", "user_id")
    attrs = json.loads((folder / f"{name}_item2attributes.json").read_text())
    ids = np.array([int(k) for k in attrs], np.int32)
    pick = lambda i, fallback: [v[i] if len(v) > i else (v[fallback] if len(v) > fallback else 0) for v in attrs.values()]
    items = pl.DataFrame({"item_id": ids, "brand": np.array(pick(0, 0), np.int32), "standard_category": np.array(pick(2, 1)),
                          "leaf_category": np.array(pick(3, 2), np.int32), "shop": np.zeros(ids.size, np.int32),
                          "price": np.full(ids.size, np.nan), "tags": [[str(a) for a in v[4:]] for v in attrs.values()]})
    users = pl.DataFrame({"user_id": np.unique(user).astype(np.int32)})
    return Dataset(events=events, items=items, users=users, split=TimeSplit(train_end=end - 3600, valid_end=end))
