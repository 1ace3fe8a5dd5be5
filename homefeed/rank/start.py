"""Where a ranking preset starts training: cold (random weights) or warm (as the trained LR), and the "auto" rule.

`rank.train.warm_start` (`TrainSettings.warm_start`):

* `false`: cold, the preset's own random initialisation;
* `true`: warm (`warm_start`): the model starts as the trained LR (LR's calibrated weights in its
  wide term, its deep head at zero) and its valid is also scored before the first step, so the kept
  check is never below LR's valid ranking; the deep parts learn what LR leaves;
* `"auto"` (the default): cold first; only when the cold model's **served valid AUC** (its
  calibrated predictions: 0.5 when calibration turned it into a constant) is below LR's, train again
  from the warm start and keep whichever of the two has the higher served valid AUC (cold on a tie).

Why "auto": a warm start costs the deep gains where deep models learn (Taobao tail DeepFM test AUC
.802 warm vs .820 cold, LR .791), while where nothing beats LR cold deep models fall to a constant
(Amazon Video Games, 1,000 users: every cold preset .500, LR .528; warm DIN .528). The rule reads only
valid AUCs of the samples at hand, never the log; where the cold model wins the warm model is not even
trained. Measured with all nine presets (`benchmarks/real_logs_rank.py`): on Video Games (1,000 users)
all eight deep presets fell back (cold valid AUC .495-.509 < LR .528) and every one then met LR on test
(.526-.528 instead of .500); it trained a warm model for one preset on Toys (1,000 users: NFM) and the
Taobao tail (DeepResNet), none on the Taobao slice (1,000 users), and on the tiny shop for NFM alone.

A preset without a wide term (DIN, BST, PNN, DCN, DeepResNet) cannot start as LR, so its warm model
is the preset **plus a wide term** (`linear=True`, `warm_overrides`): the one way it can begin as
LR's ranking, and the wide term is an ordinary `RankModel` block, so the kept model saves
(`model.json` records `linear: true`), exports to TorchScript/int8 and serves like any other. Leaving
such presets cold would leave exactly the models that fell to a constant on Video Games unprotected.

    >>> model, fit = fit_started("din", parts, TrainSettings(), {}, lr_model=lr)   # doctest: +SKIP
    >>> fit.start                                                                    # doctest: +SKIP
    {'mode': 'auto', 'kept': 'warm', 'lr_valid_auc': 0.531, 'cold_valid_auc': 0.5, 'warm_valid_auc': 0.533}
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from homefeed.evaluate.metrics import auc
from homefeed.rank.checkpoint import save_checkpoint
from homefeed.rank.samples import Samples
from homefeed.rank.train import TrainResult, TrainSettings, predict, train

FM_START_SHRINK = 0.1  # a warm start's embeddings x this when an FM term reads them (Adam's steps do not shrink with them)


def preset_of(model) -> str | None:
    """'lr' for a wide-only model, else None (the deep presets all have an embedding)."""
    return "lr" if getattr(model, "embedding", 0) is None else None


def warm_start(model, lr_model) -> bool:
    """Start `model` as the trained LR: LR's calibrated wide weights and bias copied in, the deep head's weights at 0.

    LR's Platt scaling (a, b) is folded in (weights x a, bias a * bias + b), so the model's first
    logit is LR's calibrated one: LR's own logits are small when it stopped early. An FM term of
    the random embeddings would still add noise (Amazon Video Games, 1,000 users: DeepFM's start
    had valid AUC .518 against LR's .528), so its embeddings start `FM_START_SHRINK` times smaller. The deep parts
    then learn what LR leaves, and a step-0 valid check (`TrainSettings.check_start`) keeps LR's
    ranking when no later check beats it. False, and nothing changed, for a model without a wide
    term or with one of another shape.
    """
    wide, lr_wide = getattr(model, "wide", None), getattr(lr_model, "wide", None)
    if wide is None or lr_wide is None or preset_of(model) == "lr":
        return False
    theirs, mine = lr_wide.state_dict(), wide.state_dict()
    if set(theirs) != set(mine) or any(theirs[k].shape != mine[k].shape for k in mine):
        return False
    scale, shift = (float(v) for v in lr_model.calibration)
    with torch.no_grad():
        wide.load_state_dict({k: v * scale for k, v in theirs.items()})
        model.bias.copy_(lr_model.bias * scale + shift)
        if getattr(model, "head", None) is not None:
            model.head.weight.zero_()
        if getattr(model, "fm", None) is not None:  # FM's pairwise products of random embeddings: 100x smaller
            model.embedding.table.weight.mul_(FM_START_SHRINK)
    return True


def warm_overrides(preset: str, overrides: dict) -> dict:
    """The model overrides of `preset`'s warm start: its own, plus a wide term (`linear=True`) when it has none."""
    from homefeed.rank.model import model_config

    return dict(overrides) if model_config(preset, **overrides).linear else dict(overrides) | {"linear": True}


def served_valid_auc(model, valid: Samples, settings: TrainSettings = TrainSettings()) -> float:
    """The valid AUC of what `model` serves: its calibrated predictions (0.5 when calibration made it a constant)."""
    p = predict(model, valid, batch_size=settings.eval_batch_size, bf16=settings.bf16)
    return auc(valid.tensors["label"].numpy(), p)


def _fit_one(preset: str, parts: dict[str, Samples], settings: TrainSettings, overrides: dict, lr_model,
             progress: Callable[[dict], None] | None, trainer: Callable) -> tuple[torch.nn.Module, TrainResult]:
    """Seed, build and train one model: cold when `lr_model` is None, else warm from it (a wide term added if needed)."""
    from homefeed.rank.model import build_model

    torch.manual_seed(settings.seed)
    spec = parts["train"].spec
    if lr_model is None:
        model = build_model(spec, preset, **overrides)
    else:
        model = build_model(spec, preset, **warm_overrides(preset, overrides))
        if not warm_start(model, lr_model):
            raise ValueError(f"cannot start {preset!r} from the trained LR: their wide terms differ "
                             "(was LR trained on other samples?)")
        settings = settings.model_copy(update={"check_start": True})
    return model, trainer(model, parts["train"], parts["valid"], settings, progress=progress)


def fit_started(preset: str, parts: dict[str, Samples], settings: TrainSettings, overrides: dict, *, lr_model=None,
                progress: Callable[[dict], None] | None = None,
                say: Callable[[str], None] | None = None, trainer: Callable = train) -> tuple[torch.nn.Module, TrainResult]:
    """Train `preset` from the start `settings.warm_start` asks for -> (model, TrainResult with `start` filled).

    `start`: mode, kept ("cold" | "warm"), lr_valid_auc, cold_valid_auc and warm_valid_auc (None for a model not
    trained: in "auto", no warm model when the cold one was not below LR) and, in "auto", cold_train_s and
    warm_train_s (the fit's `train_seconds` is the kept model's alone).
    `lr_model` (the trained LR on the same samples) is needed unless the preset is "lr" or the mode false.
    With `settings.checkpoint_dir`, `best.npz`/`best.json` there end as the kept model's. `trainer`: `train.train`'s
    signature (`homefeed.distributed` passes its DDP one).
    """
    mode, say, valid = settings.warm_start, say or (lambda text: None), parts["valid"]
    if preset == "lr" or mode is False:
        model, fit = _fit_one(preset, parts, settings, overrides, None, progress, trainer)
        fit.start = {} if preset == "lr" else {
            "mode": False, "kept": "cold", "cold_valid_auc": served_valid_auc(model, valid, settings), "warm_valid_auc": None,
            "lr_valid_auc": None if lr_model is None else served_valid_auc(lr_model, valid, settings)}
        return model, fit
    if lr_model is None:
        raise ValueError(f"warm_start={mode!r} needs the trained LR of the same samples (lr_model) to start {preset!r} from")
    if mode is True:
        model, fit = _fit_one(preset, parts, settings, overrides, lr_model, progress, trainer)
        fit.start = {"mode": True, "kept": "warm", "lr_valid_auc": served_valid_auc(lr_model, valid, settings),
                     "cold_valid_auc": None, "warm_valid_auc": served_valid_auc(model, valid, settings)}
        return model, fit
    cold, cold_fit = _fit_one(preset, parts, settings, overrides, None, progress, trainer)
    start = {"mode": "auto", "kept": "cold", "lr_valid_auc": served_valid_auc(lr_model, valid, settings),
             "cold_valid_auc": served_valid_auc(cold, valid, settings), "warm_valid_auc": None,
             "cold_train_s": cold_fit.train_seconds, "warm_train_s": None}
    cold_fit.start = start
    if not start["cold_valid_auc"] < start["lr_valid_auc"]:
        return cold, cold_fit
    say(f"{preset}: cold valid AUC {start['cold_valid_auc']:.4f} < LR's {start['lr_valid_auc']:.4f}: "
        "training again from the trained LR (warm start)")
    unsaved = settings.model_copy(update={"checkpoint_dir": None})  # the cold best stays on disk until warm wins
    warm, warm_fit = _fit_one(preset, parts, unsaved, overrides, lr_model, progress, trainer)
    start["warm_valid_auc"], start["warm_train_s"] = served_valid_auc(warm, valid, settings), warm_fit.train_seconds
    if not start["warm_valid_auc"] > start["cold_valid_auc"]:
        say(f"{preset}: kept the cold model (warm valid AUC {start['warm_valid_auc']:.4f})")
        return cold, cold_fit
    start["kept"], warm_fit.start = "warm", start
    say(f"{preset}: kept the warm model (valid AUC {start['warm_valid_auc']:.4f} vs cold {start['cold_valid_auc']:.4f})")
    if settings.checkpoint_dir:  # the cold run wrote its own best there: the kept model's replaces it
        warm_fit.checkpoint = save_checkpoint(warm, Path(settings.checkpoint_dir) / "best", meta=(
            warm_fit.history[warm_fit.best_check] | {"calibration": list(warm_fit.calibration), "start": start}))
    return warm, warm_fit
