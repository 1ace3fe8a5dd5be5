"""Training a ranking model: pre-tensorised batches, Adam, regularisation, early stopping on valid, checkpoints.

The samples arrive as whole tensors (`homefeed.rank.samples.Samples`), so an epoch is one random
permutation gathered once, then batches are views: no per-sample Python, no DataLoader workers.

Why the defaults are what they are: real logs are small and sparse next to the models (most item
ids appear once or twice), so an unregularised deep model memorises its train days and ends
worse than logistic regression, often with a test logloss above a constant predictor's. Hence:

* **early stopping** on the validation part: valid AUC and logloss are scored `checks_per_epoch`
  times in the first epoch (4 by default; each check a row of `history`), then less often
  (`checks_in_epoch`: 4, 2, 2, then once an epoch); the best check by `monitor` is kept (in memory
  and, with `checkpoint_dir`, as `best.npz` + `best.json`) and training stops once `patience`
  epochs have passed since the kept check. Checks inside the first epoch matter on small logs: on
  the Taobao tail (11k train rows, 20 steps an epoch) every deep preset was best after its first
  epoch and already overfitting at its end (DeepFM valid AUC .768 after epoch 1, .717 after epoch
  2), so the best weights lay inside the first epoch, where a once-an-epoch check cannot stop. A
  model that is still improving after a few epochs changes slowly, and its peak is broad: scoring
  valid 4 times in every epoch there only costs time (the tiny shop's LR was scored 120 times
  for 30 epochs, 35 now).
  `monitor="auc"` by default: the ranking is what the model is for, and the calibration step
  below then brings the kept epoch's logloss down (`"logloss"` picks by logloss instead);
* **embedding L2** (`embedding_l2`, off by default): DIN's mini-batch aware regularisation (Zhou
  et al., KDD 2018, 4.3.1): each embedding row looked up in a batch is penalised in proportion to
  1 / its train frequency, so over an epoch every row pays the same `embedding_l2 * ||w||^2`
  whatever its frequency, at the cost of the rows the batch reads. It helped logs with item
  attributes (Amazon Toys: DIN test AUC +0.016 at 1e-4) but stalled a log of bare ids (Amazon
  Video Games: at 1e-5, DIN never left AUC 0.50, since ids start near 0 and their first gradients
  are smaller than the penalty), so it is opt-in; early stopping and calibration are the defaults
  that held on every log;
* **weight decay** of the dense parameters (towers, attention, cross layers);
* **calibration** (`calibrate`): the kept weights' logits get a scale and shift fitted on the
  validation part (Platt scaling, Platt 1999; Guo et al. 2017 for neural nets), stored in the
  model's `calibration` buffer and exported with it. Ranking (AUC) is unchanged, while the
  predicted CTR matches the observed rate of the most recent days: an over-confident deep model
  no longer pays for it in logloss. A scale that does not pay on held-out valid users (two-fold
  cross-fitting) is set to 0: the model then predicts the valid rate, a constant, instead of
  noise, and its test AUC of 0.5 says so;
* **a minimum of `min_steps_per_epoch` steps**: a small train set gets smaller batches, so a
  few thousand samples still get enough updates (a 2,048 batch would make 5 steps an epoch).

Same seed, same threads -> the same weights and the same metrics.

Embedding tables may use their own optimiser: `embedding_optimizer="sparse_adam"` or `"adagrad"`
switches the `nn.Embedding` modules to sparse gradients, so a step only touches the looked-up rows
(the dense Adam state of a million-row table costs more than its lookups). `bf16=True` runs the
forward pass under CPU bfloat16 autocast (AMX on recent Xeons); the loss stays float32.

    >>> torch.manual_seed(0); model = build_model(train.spec, "deepfm")                 # doctest: +SKIP
    >>> result = train(model, train, valid, TrainSettings(epochs=5))             # doctest: +SKIP
    >>> result.best_valid_logloss, result.best_valid_auc, predict(model, test)[:3]     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from scipy.special import expit
from torch import Tensor, nn

from homefeed.config import Section
from homefeed.evaluate.metrics import auc, logloss
from homefeed.rank.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401  (re-exported: rank.train's API)
from homefeed.rank.optim import RowAdam
from homefeed.rank.samples import Samples
from homefeed.threads import torch_threads


class TrainSettings(Section):
    epochs: int = Field(30, ge=1, description="at most; early stopping usually ends sooner")
    batch_size: int = Field(2048, ge=1)
    min_steps_per_epoch: int = Field(20, ge=1, description="smaller batches (down to 64) when the train set is small")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay of the dense parameters")
    embedding_l2: float = Field(0.0, ge=0, description="mini-batch aware L2 of the embedding rows (DIN 4.3.1); 0 = off")
    embedding_optimizer: Literal["adam", "sparse_adam", "adagrad"] = "adam"
    embedding_lr: float | None = Field(None, description="learning rate of the embeddings; None = lr (x10 for adagrad)")
    monitor: Literal["auc", "logloss"] = Field("auc", description="valid metric that picks the best epoch")
    calibrate: bool = Field(True, description="fit the logit's scale and shift on valid (Platt) after training")
    patience: int = Field(3, ge=1, description="epochs trained since the best monitored valid check before stopping")
    warm_start: bool | Literal["auto"] = Field("auto", description="where a deep preset starts (`homefeed.rank.start`): "
                                               "false = random (cold); true = as the trained LR (warm, a wide term added "
                                               "when the preset has none); \"auto\" = cold, then warm again only when the "
                                               "cold model's valid AUC is below LR's, keeping the better on valid")
    check_start: bool = Field(False, description="also score valid before the first step: a warm-started model "
                              "(`evaluate.fit_preset`) may already be the best one")
    checks_per_epoch: int = Field(4, ge=1, description="valid is scored this many times in the first epoch (evenly spaced "
                                  "steps), then fewer: checks_in_epoch")
    seed: int = 0
    bf16: bool = Field(False, description="bfloat16 autocast for the forward pass")
    threads: int | None = Field(None, description="torch CPU threads; None leaves torch's default")
    eval_batch_size: int = Field(16384, ge=1)
    checkpoint_dir: str | None = Field(None, description="folder for best.npz/best.json; None = memory only")

    @field_validator("warm_start", mode="before")
    @classmethod
    def _start(cls, value):
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f"warm_start must be true, false or \"auto\"; got {value!r}")


@dataclass
class TrainResult:
    best_epoch: float  # epochs trained at the kept check: 0.25 = a quarter of the first epoch, 1.0 = all of it
    best_valid_auc: float  # at the best epoch
    best_valid_logloss: float = float("inf")  # at the best epoch
    history: list[dict] = field(default_factory=list)  # per check: epoch, epochs, loss, valid_auc, valid_logloss, seconds, samples_per_s
    best_check: int = -1  # index of the kept check in `history`
    train_seconds: float = 0.0
    samples_per_s: float = 0.0  # training throughput over all epochs
    batch_size: int = 0  # the batch size used (see TrainSettings.min_steps_per_epoch)
    calibration: tuple[float, float] = (1.0, 0.0)  # (scale, shift) of the logit fitted on valid; identity if not calibrated
    checkpoint: Path | None = None
    start: dict = field(default_factory=dict)  # where training started (`homefeed.rank.start.fit_started`): kept, valid AUCs


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _optimizers(model: nn.Module, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    """Adam for everything, or Adam for dense parameters + lazy Adam (`optim.RowAdam`)/Adagrad for the embeddings.

    Embedding tables named by the model (`sparse_parameters`) get no weight decay: a decay of the
    whole table each step would shrink rows no batch read; `embedding_l2` regularises them instead.
    """
    named = {id(p) for p in model.sparse_parameters()} if hasattr(model, "sparse_parameters") else set()
    if settings.embedding_optimizer == "adam":
        tables = [p for p in model.parameters() if id(p) in named]
        dense = [p for p in model.parameters() if id(p) not in named]
        groups = [{"params": dense, "weight_decay": settings.weight_decay}] + ([{"params": tables, "weight_decay": 0.0}] if tables else [])
        return [torch.optim.Adam(groups, lr=settings.lr)]
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if named:  # the model names its big tables (RankModel does)
        tables = [m for m in tables if id(m.weight) in named]
    if not tables:
        raise ValueError(f"embedding_optimizer={settings.embedding_optimizer!r} needs nn.Embedding tables; "
                         f"{type(model).__name__} has none")
    for m in tables:
        m.sparse = True  # F.embedding now yields sparse gradients for this table
    emb = {id(m.weight): m.weight for m in tables}
    dense = [p for p in model.parameters() if id(p) not in emb]
    opts = [torch.optim.Adam(dense, lr=settings.lr, weight_decay=settings.weight_decay)] if dense else []
    if settings.embedding_optimizer == "sparse_adam":
        opts.append(RowAdam(list(emb.values()), lr=settings.embedding_lr or settings.lr))  # SparseAdam's update, no sort
    else:
        opts.append(torch.optim.Adagrad(list(emb.values()), lr=settings.embedding_lr or 10 * settings.lr))
    return opts


class RowPenalty:
    """DIN's mini-batch aware L2: sum over the batch's looked-up rows r of ||w_r||^2 / n_r, scaled by N / B.

    n_r is how often row r is read in the N train samples, so the penalty's expectation over
    batches is l2 * sum_r ||w_r||^2 (every row with data, once): plain L2 on the tables, paid only
    for the rows a batch reads. Works with any model that has `embedding_rows(batch)` ->
    [(nn.Embedding, rows int64 tensor)] (RankModel does); other models get no penalty.
    """

    def __init__(self, model: nn.Module, train: Samples, l2: float, batch_size: int):
        self.model, self.l2, self.n = model, l2, len(train)
        self.inverse: list[Tensor] = []
        if l2 <= 0 or not hasattr(model, "embedding_rows"):
            return
        counts: list[Tensor] | None = None
        for batch in train.batches(max(batch_size, 16384)):
            looked = model.embedding_rows(batch)
            if counts is None:
                counts = [torch.zeros(table.num_embeddings) for table, _ in looked]
            for c, (table, rows) in zip(counts, looked):
                c += torch.bincount(rows.reshape(-1), minlength=table.num_embeddings)
        self.inverse = [1.0 / c.clamp(min=1.0) for c in counts or []]

    def __call__(self, batch: dict[str, Tensor]) -> Tensor | None:
        if not self.inverse:
            return None
        total = None
        for inv, (table, rows) in zip(self.inverse, self.model.embedding_rows(batch)):
            rows = rows.reshape(-1)
            w = F.embedding(rows, table.weight, sparse=table.sparse)  # (M, D): gradients reach only these rows
            term = (w.square().sum(dim=1) * inv[rows]).sum()
            total = term if total is None else total + term
        return self.l2 * self.n / len(batch["label"]) * total


@torch.inference_mode()
def predict_logits(model: nn.Module, samples: Samples, *, batch_size: int = 16384, bf16: bool = False) -> np.ndarray:
    """(N,) float64 logits of every sample, in order."""
    model.eval()
    out = []
    for batch in samples.batches(batch_size):
        with _autocast(bf16):
            out.append(model(batch).float())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def predict(model: nn.Module, samples: Samples, *, batch_size: int = 16384, bf16: bool = False) -> np.ndarray:
    """(N,) float64 click probabilities of every sample, in order."""
    return expit(predict_logits(model, samples, batch_size=batch_size, bf16=bf16))


def _log_odds(y: np.ndarray) -> float:
    rate = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
    return math.log(rate / (1 - rate))


def fit_platt(logits: np.ndarray, y: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """(scale a >= 0, shift b) minimising the logloss of sigmoid(a * logit + b) against labels y.

    A two-parameter logistic regression on one feature: convex, solved by Newton steps with a
    backtracking line search (never a step that raises the loss), from the constant predictor
    (a = 0, b = the labels' log-odds). The scale is kept >= 0: a negative one would reverse the ranking.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    if z.shape != y.shape or z.size == 0:
        raise ValueError(f"fit_platt needs as many labels as logits (> 0); got {z.shape} and {y.shape}")

    def loss(a: float, b: float) -> float:
        t = a * z + b
        return float(np.mean(np.logaddexp(0.0, t) - y * t))  # logloss of sigmoid(t), stable for any t

    a, b = 0.0, _log_odds(y)
    current = loss(a, b)
    for _ in range(iterations):
        p = expit(a * z + b)
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.dot(p - y, z), np.sum(p - y)]) / z.size
        h = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), w.sum()]]) / z.size + 1e-9 * np.eye(2)
        step, t = np.linalg.solve(h, g), 1.0
        while t > 1e-6:
            a2, b2 = max(a - t * step[0], 0.0), b - t * step[1]
            new = loss(a2, b2)
            if new <= current:
                break
            t /= 2
        if t <= 1e-6 or current - new < 1e-12:
            break
        a, b, current = a2, b2, new
    return float(a), float(b)


def platt_generalises(logits: np.ndarray, y: np.ndarray, users: np.ndarray) -> bool:
    """Whether a Platt fit on half of the users beats the constant (that half's rate) on the other half, both ways.

    Valid days can rank a little better than chance by luck; a scale fitted to such noise makes the
    test logloss worse than a constant's. Two-fold cross-fitting by user (users' rows are correlated,
    so the halves split users, not rows) keeps the scale only when it pays on users it was not fitted on.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    half = np.asarray(users) % 2 == 0
    fitted = constant = 0.0
    for fit_on in (half, ~half):
        held = ~fit_on
        if not fit_on.any() or not held.any() or y[fit_on].min() == y[fit_on].max():
            return True  # a half with one class (or none): too little to judge, keep the fit
        a, b = fit_platt(z[fit_on], y[fit_on])
        fitted += logloss(y[held], expit(a * z[held] + b))
        constant += logloss(y[held], np.full(int(held.sum()), np.mean(y[fit_on])))
    return fitted < constant


def calibrate(model: nn.Module, valid: Samples, *, batch_size: int = 16384, bf16: bool = False) -> tuple[float, float]:
    """Fit the model's `calibration` buffer (logit scale, shift) on `valid`; returns (scale, shift).

    When the fit does not generalise across valid users (`platt_generalises`), the scale is 0 and the
    shift the valid log-odds: the model then predicts the valid rate, a constant, and says so in its scale.
    """
    buffer = getattr(model, "calibration", None)
    if buffer is None:
        raise ValueError(f"{type(model).__name__} has no `calibration` buffer to fit")
    with torch.no_grad():
        buffer.copy_(torch.tensor([1.0, 0.0]))
        z, y = predict_logits(model, valid, batch_size=batch_size, bf16=bf16), valid.tensors["label"].numpy()
        scale, shift = fit_platt(z, y)
        if scale > 0 and not platt_generalises(z, y, valid.tensors["user"].numpy()):
            scale, shift = 0.0, _log_odds(y)
        buffer.copy_(torch.tensor([scale, shift]))
    return scale, shift


def train(model: nn.Module, train_samples: Samples, valid_samples: Samples,
          settings: TrainSettings = TrainSettings(), *, progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Fit `model` on the train samples, keep the epoch with the best valid `monitor`; the model ends with those weights.

    `progress`, if given, receives each epoch's history row as it ends.
    """
    train, valid = train_samples, valid_samples
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"training needs samples in both parts; got {len(train)} train and {len(valid)} valid")
    with torch_threads(settings.threads):
        return _fit(model, train, valid, settings, progress or (lambda row: None))


def batch_size_for(n: int, settings: TrainSettings) -> int:
    """`batch_size`, made smaller (not under 64) so that an epoch of n samples takes `min_steps_per_epoch` steps."""
    return max(1, min(settings.batch_size, max(64, math.ceil(n / settings.min_steps_per_epoch))))


def checks_in_epoch(epoch: int, per_epoch: int) -> int:
    """How many valid checks epoch `epoch` (0-based) gets: `per_epoch` in the first, then per_epoch / (epoch + 1), at least 1.

    Small logs peak inside the first epoch, so it is scored densely; later epochs only refine a
    broad peak, and a dense schedule there would multiply the valid passes of a long run.
    """
    return max(1, math.ceil(per_epoch / (epoch + 1)))


def check_steps(steps_per_epoch: int, per_epoch: int) -> set[int]:
    """The steps of an epoch (1-based) after which valid is scored: `per_epoch` evenly spaced ones, the last step always."""
    n = max(1, min(per_epoch, steps_per_epoch))
    return {max(1, round(steps_per_epoch * (j + 1) / n)) for j in range(n)}


def _valid_metrics(model: nn.Module, valid: Samples, y_valid: np.ndarray, settings: TrainSettings) -> dict:
    p = predict(model, valid, batch_size=settings.eval_batch_size, bf16=settings.bf16)
    return {"valid_auc": auc(y_valid, p), "valid_logloss": logloss(y_valid, p)}


def _better(row: dict, best: TrainResult, monitor: str) -> bool:
    if monitor == "auc":
        return row["valid_auc"] > best.best_valid_auc
    return row["valid_logloss"] < best.best_valid_logloss


def _fit(model: nn.Module, train: Samples, valid: Samples, settings: TrainSettings,
         progress: Callable[[dict], None]) -> TrainResult:
    torch.manual_seed(settings.seed)
    order_rng = torch.Generator().manual_seed(settings.seed)
    if hasattr(model, "calibration"):  # train the raw logit; calibration is fitted afterwards
        with torch.no_grad():
            model.calibration.copy_(torch.tensor([1.0, 0.0]))
    batch_size = batch_size_for(len(train), settings)
    opts = _optimizers(model, settings)
    penalty = RowPenalty(model, train, settings.embedding_l2, batch_size)
    loss_fn = nn.BCEWithLogitsLoss()
    y_valid = valid.tensors["label"].numpy()
    best = TrainResult(best_epoch=-1, best_valid_auc=float("-inf"), batch_size=batch_size)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    state = {"best": None, "stop": False}
    seen, t_train = 0, 0.0

    def keep(row: dict) -> None:
        best.history.append(row)
        progress(row)
        best.best_check, best.best_epoch = len(best.history) - 1, row["epochs"]
        best.best_valid_auc, best.best_valid_logloss = row["valid_auc"], row["valid_logloss"]
        state["best"] = copy.deepcopy(model.state_dict())
        if settings.checkpoint_dir:
            best.checkpoint = save_checkpoint(model, Path(settings.checkpoint_dir) / "best", meta=row)

    if settings.check_start:  # the weights as given, before any step
        keep({"epoch": 0, "epochs": 0.0, "loss": None, **_valid_metrics(model, valid, y_valid, settings),
              "seconds": 0.0, "samples_per_s": 0.0})
    for epoch in range(settings.epochs):
        checks = check_steps(steps_per_epoch, checks_in_epoch(epoch, settings.checks_per_epoch))
        model.train()
        t0, total, steps, done = time.perf_counter(), 0.0, 0, 0
        for batch in train.batches(batch_size, order=torch.randperm(len(train), generator=order_rng)):
            with _autocast(settings.bf16):
                logits = model(batch)
            loss = loss_fn(logits.float(), batch["label"])
            reg = penalty(batch)
            for o in opts:
                o.zero_grad(set_to_none=True)
            (loss if reg is None else loss + reg).backward()
            for o in opts:
                o.step()
            total, steps = total + float(loss.detach()), steps + 1
            if steps not in checks:
                continue
            seconds, since = time.perf_counter() - t0, min(steps * batch_size, len(train)) - done  # rows of every rank
            t_train, seen, done = t_train + seconds, seen + since, done + since
            row = {"epoch": epoch, "epochs": round(epoch + steps / steps_per_epoch, 4), "loss": total / steps,
                   **_valid_metrics(model, valid, y_valid, settings), "seconds": seconds, "samples_per_s": since / seconds}
            if state["best"] is None or _better(row, best, settings.monitor):
                keep(row)
            else:
                best.history.append(row)
                progress(row)
                if row["epochs"] - best.best_epoch >= settings.patience - 1e-9:  # `patience` epochs since the kept check
                    state["stop"] = True
                    break
            model.train()
            t0 = time.perf_counter()
        if state["stop"]:
            break
    best_state = state["best"]
    model.load_state_dict(best_state)
    if settings.calibrate and hasattr(model, "calibration"):
        best.calibration = calibrate(model, valid, batch_size=settings.eval_batch_size, bf16=settings.bf16)
        p = predict(model, valid, batch_size=settings.eval_batch_size, bf16=settings.bf16)
        best.best_valid_logloss = logloss(y_valid, p)
        if settings.checkpoint_dir:
            best.checkpoint = save_checkpoint(model, Path(settings.checkpoint_dir) / "best",
                                              meta=best.history[best.best_check] | {"calibration": list(best.calibration)})
    best.train_seconds, best.samples_per_s = t_train, seen / t_train if t_train else 0.0
    return best
