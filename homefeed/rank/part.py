"""The rank stage as one bundle part: train the configured preset, choose fp32 or int8 on valid, export.

`RankPart.fit(dataset, settings)` builds samples (exposures, or the DIN protocol without them),
trains the preset with early stopping on the validation days, and decides whether the dynamic int8
copy is served by its AUC loss *on the validation days* (the test days stay untouched by every
choice, so the test metrics in `metrics` are clean). `save(folder)` writes what serving loads
(`serve/ranker.py`): the TorchScript model(s), the encoders and `served.json`.

    >>> part = RankPart().fit(dataset, RankPartSettings.from_section(cfg.rank))   # doctest: +SKIP
    >>> part.save(bundle / "rank"); part.metrics["auc"]                          # doctest: +SKIP
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from homefeed.config import Section, typed
from homefeed.data.dataset import Dataset
from homefeed.evaluate.metrics import auc, calibration_bins, ctr_metrics, logloss
from homefeed.rank.evaluate import RankSettings, fit_preset, score, start_fields
from homefeed.rank.export import export_torchscript, quantize_int8
from homefeed.rank.features import FeatureSettings
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, predict

PROFILE = ("gender", "age", "city", "purchase_power")


class RankPartSettings(Section):
    """The `[rank]` section, typed: every knob table is checked here, when the config loads."""

    preset: str = "din"
    model: dict[str, Any] = Field(default_factory=dict)
    features: FeatureSettings | None = None  # None: the samples' defaults
    samples: SampleSettings = SampleSettings()
    train: TrainSettings = TrainSettings()
    quantize: bool = True
    max_quant_auc_loss: float = Field(0.002, ge=0.0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from homefeed.rank.model import PRESETS

        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r}; valid presets: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _model_overrides(self) -> "RankPartSettings":
        from homefeed.rank.model import model_config

        model_config(self.preset, **self.model)  # unknown or invalid overrides raise, naming the key
        return self

    @classmethod
    def from_section(cls, section) -> "RankPartSettings":
        """The `homefeed.config.Rank` section (plain knob tables) as typed settings."""
        samples = typed(SampleSettings, section.samples, "rank.samples")
        features = None
        if section.features:
            features = typed(FeatureSettings, samples.features.model_dump() | section.features, "rank.features")
        return cls(preset=section.preset, model=dict(section.model), features=features, samples=samples,
                   train=typed(TrainSettings, section.train, "rank.train"), quantize=section.quantize,
                   max_quant_auc_loss=section.max_quant_auc_loss)

    def rank_settings(self) -> RankSettings:
        """What `evaluate_rank` / `fit_preset` take."""
        samples = self.samples if self.features is None else self.samples.model_copy(update={"features": self.features})
        return RankSettings(samples=samples, train=self.train, model=dict(self.model))


class RankPart:
    """The trained ranker of one bundle: fit, save, load, and its test metrics."""

    name = "rank"

    def __init__(self):
        self.metrics: dict = {}
        self._folder: Path | None = None  # fit writes here (a temporary folder) until `save` copies it

    def fit(self, dataset: Dataset, settings: RankPartSettings = RankPartSettings()) -> "RankPart":
        """Train on the training days, stop early and choose the served variant on valid, score on test.

        LR is trained first on the same samples: its test metrics are `metrics["baselines"]["lr"]` and it is
        the warm start of `rank.train.warm_start` ("auto": used only when the cold preset is below LR on valid;
        `metrics["start"]` and the valid AUCs say which start was kept).
        """
        rank = settings.rank_settings()
        parts = build_all(dataset, rank.samples)
        self._folder = Path(tempfile.mkdtemp(prefix="homefeed_rank_"))
        lr_model = None  # the LR baseline, trained on the same samples: reported, and the start of "auto"/warm presets
        if settings.preset != "lr":
            lr_model, _ = fit_preset("lr", parts, rank.model_copy(update={"model": {}}))
        model, fit = fit_preset(settings.preset, parts, rank, out=self._folder, lr_model=lr_model)
        model.eval()
        valid, test = parts["valid"], parts["test"]
        y_valid = valid.tensors["label"].numpy()
        served, chosen = "model.pt", model
        metrics: dict = {"preset": settings.preset, "protocol": test.protocol, "valid_auc": fit.best_valid_auc,
                         "train_rows": len(parts["train"])}
        example = parts["train"].take(torch.arange(min(64, len(parts["train"]))))
        export_torchscript(model, example, self._folder / "model.pt")
        if settings.quantize:
            quant = quantize_int8(model)
            metrics["int8_valid_auc_loss"] = auc(y_valid, predict(model, valid)) - auc(y_valid, predict(quant, valid))
            if metrics["int8_valid_auc_loss"] <= settings.max_quant_auc_loss:  # chosen on valid, never on test
                export_torchscript(quant, example, self._folder / "model_int8.pt")
                served, chosen = "model_int8.pt", quant
        y, p = test.tensors["label"].numpy(), predict(chosen, test)
        metrics |= ctr_metrics(y, p, test.tensors["user"].numpy())
        bins = calibration_bins(y, p)  # the reliability diagram, for the console's bundle view
        metrics["calibration_bins"] = {k: [None if v != v else float(v) for v in a] for k, a in bins.items()}
        rate = float(parts["train"].tensors["label"].numpy().mean())  # the constant predictor: train CTR
        metrics["baselines"] = {"constant": {"auc": 0.5, "logloss": logloss(y, np.full(y.shape, rate))},
                                "lr": score(lr_model if lr_model is not None else model, test, rank.train)}
        metrics["served"] = served
        metrics |= start_fields(fit)  # after the test metrics: `homefeed build` prints the first few
        # exported by this code, the model takes one user's history once for all rows (checked by the export)
        (self._folder / "served.json").write_text(json.dumps({
            "model": served, "preset": settings.preset, "inputs": list(model.input_names),
            "shared_sequence": "seq" in model.input_names}))
        self.metrics = metrics
        return self

    def save(self, folder: str | Path) -> Path:
        if self._folder is None:
            raise RuntimeError("RankPart.save before fit")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for path in self._folder.iterdir():
            shutil.copy2(path, folder / path.name)
        shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = folder
        (folder / "metrics.json").write_text(json.dumps(self.metrics, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RankPart":
        """The saved part (its files and metrics); `serve.ranker.ServedRanker.load` reads the model itself."""
        part = cls()
        part._folder = Path(folder)
        part.metrics = json.loads((part._folder / "metrics.json").read_text())
        return part

