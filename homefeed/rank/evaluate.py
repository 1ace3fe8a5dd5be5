"""Rank evaluation: train every preset on the same samples and compare them on the test days, beside baselines.

One set of samples (train/valid/test, encoders fitted on train) is built once; each preset is
seeded, built with `homefeed.rank.model.build_model`, trained with early stopping on valid (then
calibrated there, `homefeed.rank.train`) and scored on test with the ONE metric module
(`homefeed.evaluate.metrics`): AUC, GAUC (per-user AUC weighted by the user's rows, as in the DIN
paper), logloss, and calibration (predicted mean / observed rate, and ECE).

A deep model must earn its place, so every result carries two baselines trained and scored on the
same samples: **constant**, the train part's positive rate for every row (the logloss any model
must beat; AUC 0.5), and **lr**, logistic regression on the same features. `check_baselines`
flags each preset whose test logloss is above the constant's or whose AUC is below LR's by more
than `AUC_MARGIN`; the flags are in `results.meta["warnings"]` and in each row's `check`.

    >>> results = evaluate_rank(Dataset.load("out/small_ds"), ["deepfm", "din", "bst"])   # doctest: +SKIP
    >>> list(results)                                                                     # doctest: +SKIP
    ['constant', 'lr', 'deepfm', 'din', 'bst']
    >>> print_table(rank_table(results)); results.meta["warnings"]                        # doctest: +SKIP
    []

**Where a preset starts** (`rank.train.warm_start`, `homefeed.rank.start`): "auto" by default, cold
(random) first and, only when the cold model's valid AUC is below LR's, trained again as the trained LR
(`warm_start`) and the better of the two on valid kept; each row says which (`start`) with both valid
AUCs (`cold_valid_auc`, `warm_valid_auc`, `lr_valid_auc`). `evaluate_rank` reuses its LR baseline as
that start (`results.lr_model`).

Public logs without an impression log (`homefeed ingest --format sequences|recbole|taobao`) use the
DIN protocol automatically (see `samples`).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.evaluate.metrics import ctr_metrics
from homefeed.rank.samples import SampleSettings, Samples, build_all
from homefeed.rank.start import fit_started
from homefeed.rank.train import TrainSettings, predict, train

COLUMNS = ("auc", "gauc", "logloss", "calibration", "ece", "valid_auc", "best_epoch", "train_s", "start", "check")
METRICS = ("auc", "gauc", "logloss", "calibration", "ece", "predicted_mean", "observed_rate")
BASELINES = ("constant", "lr")
AUC_MARGIN = 0.005  # a preset more than this below LR's test AUC is flagged


class RankSettings(Section):
    """Everything `evaluate_rank` (and `homefeed train`) needs besides the data and the preset names."""

    samples: SampleSettings = SampleSettings()
    train: TrainSettings = TrainSettings()
    model: dict[str, Any] = Field(default_factory=dict, description="overrides for every preset, e.g. {embed_dim: 8}")


class RankResults(dict):
    """{row: {"auc", "gauc", "logloss", "calibration", "ece", ..., "check"}}: the baselines first, then the presets;
    `meta` holds the protocol, sample counts and `warnings` (one line per flagged preset)."""

    def __init__(self, rows: dict, meta: dict):
        super().__init__(rows)
        self.meta = meta
        self.lr_model = None  # the trained LR baseline, if one was trained or given


def fit_preset(preset: str, parts: dict[str, Samples], settings: RankSettings = RankSettings(), *,
               out: str | Path | None = None, progress: Callable[[dict], None] | None = None, lr_model=None,
               say: Callable[[str], None] | None = None):
    """Seed, build and train one preset on prepared samples -> (model, TrainResult); `fit.start` says where it started.

    With `out`, the folder gets everything serving needs: encoders.json/.npz (fitted on train),
    model.json (preset, model config, feature spec, valid AUC, calibration, start) and best.npz/best.json (weights).
    `progress` receives each valid check's history row (`TrainSettings.checks_per_epoch` in the first epoch, then fewer);
    `say`, a line when the "auto" start trains a warm model and which one it kept.
    Unless `settings.train.warm_start` is false, the start is `lr_model` (LR trained here first when None):
    see `homefeed.rank.start.fit_started`.
    """
    train_settings = settings.train if out is None else settings.train.model_copy(update={"checkpoint_dir": str(out)})
    if lr_model is None and preset != "lr" and settings.train.warm_start is not False:
        lr_model, _ = fit_preset("lr", parts, settings.model_copy(update={"model": {}}))
    model, fit = fit_started(preset, parts, train_settings, dict(settings.model), lr_model=lr_model,
                             progress=progress, say=say, trainer=train)  # `train` looked up at call time: DDP swaps it
    if out is not None:
        parts["train"].encoders.save(out)
        meta = {"preset": preset, "config": model.config.model_dump(), "spec": parts["train"].spec.model_dump(),
                "valid_auc": fit.best_valid_auc, "valid_logloss": fit.best_valid_logloss, "best_epoch": fit.best_epoch,
                "calibration": list(fit.calibration), "protocol": parts["train"].protocol, "start": fit.start}
        (Path(out) / "model.json").write_text(json.dumps(meta, indent=1))
    return model, fit


START_FIELDS = ("lr_valid_auc", "cold_valid_auc", "warm_valid_auc", "cold_train_s", "warm_train_s")


def start_fields(fit) -> dict:
    """A row's record of where its model started: `start` ("cold" | "warm") and the valid AUCs behind the choice."""
    start = getattr(fit, "start", None) or {}
    return {"start": start["kept"], **{k: start.get(k) for k in START_FIELDS}} if start else {}


def start_text(row: dict) -> str | None:
    """The table's `start` cell: "cold", "warm", or, when both were trained, the kept one and both valid AUCs."""
    cold, warm = row.get("cold_valid_auc"), row.get("warm_valid_auc")
    kept = row.get("start") or (("warm" if cold is None or warm > cold else "cold") if warm is not None else
                                ("cold" if cold is not None else None))  # rows that lost their string (`homefeed train`)
    if kept is None or warm is None or cold is None:
        return kept
    return f"{kept} (cold {cold:.3f}, warm {warm:.3f})"


def score(model, samples: Samples, settings: TrainSettings = TrainSettings()) -> dict[str, float]:
    """The test metrics of a trained model on `samples` (the METRICS keys)."""
    p = predict(model, samples, batch_size=settings.eval_batch_size, bf16=settings.bf16)
    m = ctr_metrics(samples.tensors["label"].numpy(), p, samples.tensors["user"].numpy())
    return {k: m[k] for k in METRICS}


def constant_row(parts: dict[str, Samples]) -> dict[str, float]:
    """The constant predictor: the train part's positive rate for every test row."""
    rate = float(parts["train"].tensors["label"].double().mean())
    test = parts["test"]
    m = ctr_metrics(test.tensors["label"].numpy(), np.full(len(test), rate), test.tensors["user"].numpy())
    return {k: m[k] for k in METRICS} | {"train_rate": rate}


def _trained_row(preset: str, parts: dict[str, Samples], settings: RankSettings, say: Callable[[str], None],
                 lr_model=None) -> tuple[dict, Any]:
    say(f"train {preset}")
    model, fit = fit_preset(preset, parts, settings, lr_model=lr_model, say=say, progress=lambda r: say(
        f"train {preset}: epochs {r.get('epochs', r['epoch']):g} valid AUC {r['valid_auc']:.4f} logloss {r['valid_logloss']:.4f}"))
    return model, score(model, parts["test"], settings.train) | {
        "valid_auc": fit.best_valid_auc, "valid_logloss": fit.best_valid_logloss, "best_epoch": fit.best_epoch,
        "calibration_scale": fit.calibration[0], "train_s": fit.train_seconds, "samples_per_s": fit.samples_per_s,
        **(start_fields(fit) if preset != "lr" else {})}


def baseline_rows(parts: dict[str, Samples], settings: RankSettings = RankSettings(), *,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{"constant": ..., "lr": ...} on prepared samples; LR is trained with `settings.train` and no model overrides."""
    say = progress or (lambda text: None)
    lr_settings = settings.model_copy(update={"model": {}})
    return {"constant": constant_row(parts), "lr": _trained_row("lr", parts, lr_settings, say)[1]}


def check_baselines(rows: dict[str, dict], *, margin: float = AUC_MARGIN) -> list[str]:
    """Set each non-baseline row's `check` ("ok", or what failed) against rows "constant" and "lr"; return warning lines."""
    const, lr = rows.get("constant"), rows.get("lr")
    warnings = []
    for name, row in rows.items():
        if name in BASELINES:
            row["check"] = "baseline"
            continue
        failed = []
        if const is not None and row["logloss"] > const["logloss"]:
            failed.append(("logloss > constant", f"test logloss {row['logloss']:.4f} is above the constant predictor's "
                                                 f"{const['logloss']:.4f}: it predicts worse than the train rate"))
        if lr is not None and row["auc"] < lr["auc"] - margin:
            failed.append((f"AUC < LR - {margin}", f"test AUC {row['auc']:.4f} is below LR's {lr['auc']:.4f} by more than {margin}"))
        row["check"] = ", ".join(short for short, _ in failed) or "ok"
        warnings += [f"warning: {name}: {text}" for _, text in failed]
    return warnings


def evaluate_rank(dataset: Dataset, presets: list[str], settings: RankSettings = RankSettings(), *,
                  samples: dict[str, Samples] | None = None, progress: Callable[[str], None] | None = None,
                  baselines: bool = True, lr_model=None) -> RankResults:
    """Train and test each preset on one set of samples; rows: the baselines (constant, lr), then `presets` in order.

    The LR model trained here (or `lr_model`, reused when given) is `results.lr_model`: the warm start of the presets
    (`rank.train.warm_start`: trained again from it when "auto" finds a cold model below LR on valid).
    """
    from homefeed.rank.model import PRESETS

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown model preset(s) {unknown}; valid presets: {', '.join(PRESETS)}")
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    parts = samples or build_all(dataset, settings.samples)
    build_s = time.perf_counter() - t0
    rows: dict[str, dict] = {}
    lr_settings = settings.model_copy(update={"model": {}})
    if baselines:
        rows["constant"] = constant_row(parts)
    if "lr" in presets or baselines or (settings.train.warm_start is not False and lr_model is None):
        lr_model, rows["lr"] = _trained_row("lr", parts, lr_settings, say)  # the start of warm-started presets
    for preset in presets:
        if preset != "lr":
            rows[preset] = _trained_row(preset, parts, settings, say, lr_model)[1]
    if "lr" in rows and not baselines and "lr" not in presets:
        del rows["lr"]
    if "lr" in rows:  # baselines first, whatever the order of `presets`
        rows = {name: rows[name] for name in [n for n in BASELINES if n in rows] + [n for n in rows if n not in BASELINES]}
    warnings = check_baselines(rows) if baselines else []
    test = parts["test"]
    meta = {"protocol": test.protocol, "why": test.report.get("why"), "build_samples_s": build_s, "warnings": warnings,
            "samples": {p: {k: s.report.get(k) for k in ("rows", "positives", "ctr", "removed")} for p, s in parts.items()},
            "fields": {"sparse": len(test.spec.sparse), "dense": len(test.spec.dense), "max_len": test.spec.max_len}}
    results = RankResults(rows, meta)
    results.lr_model = lr_model
    return results


def rank_table(results: RankResults, *, title: str | None = None):
    """A rich Table of the results (homefeed.evaluate.report layout), protocol in the title."""
    from homefeed.evaluate.report import metrics_table

    protocol = getattr(results, "meta", {}).get("protocol")
    title = title or (f"rank: test metrics ({protocol} protocol)" if protocol else "rank: test metrics")
    shown = {name: dict(row) | {"start": start_text(row)} for name, row in results.items()}
    return metrics_table(shown, title=title, columns=COLUMNS, name_header="model")
