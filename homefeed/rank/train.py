"""Training a ranking model: pre-tensorised batches, Adam, early stopping on valid AUC, checkpoints.

The samples arrive as whole tensors (`homefeed.rank.samples.Samples`), so an epoch is one random
permutation gathered once, then batches are views: no per-sample Python, no DataLoader workers.
Each epoch ends with the validation AUC; the best epoch's weights are kept (in memory and, with
`checkpoint_dir`, as `best.npz` + `best.json`) and training stops after `patience` epochs
without improvement. Same seed, same threads -> the same weights and the same AUC.

Embedding tables may use their own optimiser: `embedding_optimizer="sparse_adam"` or `"adagrad"`
switches the `nn.Embedding` modules to sparse gradients, so a step only touches the looked-up rows
(the dense Adam state of a million-row table costs more than its lookups). `bf16=True` runs the
forward pass under CPU bfloat16 autocast (AMX on recent Xeons); the loss stays float32.

    >>> torch.manual_seed(0); model = build_model(train.spec, "deepfm")                 # doctest: +SKIP
    >>> result = train(model, train, valid, TrainSettings(epochs=5))             # doctest: +SKIP
    >>> result.best_valid_auc, predict(model, test)[:3]                                # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from homefeed.config import Section
from homefeed.evaluate.metrics import auc
from homefeed.rank.samples import Samples


class TrainSettings(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the dense parameters")
    embedding_optimizer: Literal["adam", "sparse_adam", "adagrad"] = "adam"
    embedding_lr: float | None = Field(None, description="learning rate of the embeddings; None = lr (x10 for adagrad)")
    patience: int = Field(2, ge=1, description="epochs without a better valid AUC before stopping")
    seed: int = 0
    bf16: bool = Field(False, description="bfloat16 autocast for the forward pass")
    threads: int | None = Field(None, description="torch CPU threads; None leaves torch's default")
    eval_batch_size: int = Field(16384, ge=1)
    checkpoint_dir: str | None = Field(None, description="folder for best.npz/best.json; None = memory only")


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_auc: float
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, valid_auc, seconds, samples_per_s
    train_seconds: float = 0.0
    samples_per_s: float = 0.0  # training throughput over all epochs
    checkpoint: Path | None = None


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _optimizers(model: nn.Module, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    """Adam for everything, or Adam for dense parameters + SparseAdam/Adagrad for the embeddings."""
    if settings.embedding_optimizer == "adam":
        return [torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)]
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if hasattr(model, "sparse_parameters"):  # the model names its big tables (RankModel does)
        named = {id(p) for p in model.sparse_parameters()}
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
        opts.append(torch.optim.SparseAdam(list(emb.values()), lr=settings.embedding_lr or settings.lr))
    else:
        opts.append(torch.optim.Adagrad(list(emb.values()), lr=settings.embedding_lr or 10 * settings.lr))
    return opts


@torch.inference_mode()
def predict(model: nn.Module, samples: Samples, *, batch_size: int = 16384, bf16: bool = False) -> np.ndarray:
    """(N,) float64 click probabilities of every sample, in order."""
    model.eval()
    out = []
    for batch in samples.batches(batch_size):
        with _autocast(bf16):
            out.append(torch.sigmoid(model(batch).float()))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def train(model: nn.Module, train_samples: Samples, valid_samples: Samples,
          settings: TrainSettings = TrainSettings()) -> TrainResult:
    """Fit `model` on the train samples, keep the epoch with the best valid AUC; the model ends with those weights."""
    train, valid = train_samples, valid_samples
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"training needs samples in both parts; got {len(train)} train and {len(valid)} valid")
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _fit(model, train, valid, settings)
    finally:
        torch.set_num_threads(threads)


def _fit(model: nn.Module, train: Samples, valid: Samples, settings: TrainSettings) -> TrainResult:
    torch.manual_seed(settings.seed)
    order_rng = torch.Generator().manual_seed(settings.seed)
    opts = _optimizers(model, settings)
    loss_fn = nn.BCEWithLogitsLoss()
    best = TrainResult(best_epoch=-1, best_valid_auc=float("-inf"))
    best_state, stale, seen, t_train = None, 0, 0, 0.0
    for epoch in range(settings.epochs):
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        for batch in train.batches(settings.batch_size, order=torch.randperm(len(train), generator=order_rng)):
            with _autocast(settings.bf16):
                logits = model(batch)
            loss = loss_fn(logits.float(), batch["label"])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            total, steps = total + float(loss.detach()), steps + 1
        seconds = time.perf_counter() - t0
        t_train, seen = t_train + seconds, seen + len(train)
        valid_auc = auc(valid.tensors["label"].numpy(), predict(model, valid, batch_size=settings.eval_batch_size, bf16=settings.bf16))
        best.history.append({"epoch": epoch, "loss": total / max(steps, 1), "valid_auc": valid_auc,
                             "seconds": seconds, "samples_per_s": len(train) / seconds})
        if valid_auc > best.best_valid_auc:
            best.best_epoch, best.best_valid_auc, stale = epoch, valid_auc, 0
            best_state = copy.deepcopy(model.state_dict())
            if settings.checkpoint_dir:
                best.checkpoint = save_checkpoint(model, Path(settings.checkpoint_dir) / "best", meta=best.history[-1])
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    best.train_seconds, best.samples_per_s = t_train, seen / t_train if t_train else 0.0
    return best


def save_checkpoint(model: nn.Module, stem: str | Path, *, meta: dict | None = None) -> Path:
    """Weights as `<stem>.npz` (float32 arrays by parameter name) and `meta` as `<stem>.json`; no pickle."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
              for k, v in model.state_dict().items()}
    np.savez(stem.with_suffix(".npz"), **arrays)
    stem.with_suffix(".json").write_text(json.dumps(meta or {}, indent=1))
    return stem.with_suffix(".npz")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by `save_checkpoint` into `model` (names and shapes must match)."""
    with np.load(path, allow_pickle=False) as arrays:
        state = model.state_dict()
        extra = sorted(set(arrays.files) - set(state))
        missing = sorted(set(state) - set(arrays.files))
        if extra or missing:
            raise ValueError(f"{path}: checkpoint does not fit {type(model).__name__}: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        model.load_state_dict({k: torch.from_numpy(arrays[k]).to(state[k].dtype) for k in state})
    return model
