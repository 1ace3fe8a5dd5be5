"""The bundle's rank part: train the configured preset, export it, and score candidates at request time.

Offline, `build_rank_part` builds samples from the dataset (exposures, or the DIN protocol without
them), trains the preset with early stopping, reports test AUC/GAUC/logloss, exports TorchScript
(checked equal to the eager model) and a dynamic int8 variant, which is served only when it loses
at most `rank.max_quant_auc_loss` AUC.

Online, `ServedRanker.score` computes the features of one user's candidates with the very same
point-in-time feature code used for training (on a one-user slice of data), so training and
serving cannot drift apart, then scores them in one batch.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from homefeed.config import Config
from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR, BEHAVIORS, EVENTS, EXPOSURES
from homefeed.data.user_state import UserState
from homefeed.data.vocab import Vocab
from homefeed.evaluate.metrics import ctr_metrics
from homefeed.rank.encoders import Encoders
from homefeed.rank.evaluate import RankSettings, fit_preset
from homefeed.rank.export import export_torchscript, load_torchscript, quantize_dynamic
from homefeed.rank.features import point_in_time
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, predict

PROFILE = ("gender", "age", "city", "purchase_power")


def rank_settings(cfg: Config) -> RankSettings:
    """The `[rank]` section's knob tables as the rank stage's settings (unknown keys are errors there)."""
    r = cfg.rank
    samples = SampleSettings(**r.samples)
    if r.features:
        samples = samples.model_copy(update={"features": type(samples.features)(**(samples.features.model_dump() | r.features))})
    return RankSettings(samples=samples, train=TrainSettings(**r.train), model=dict(r.model))


def build_rank_part(ds: Dataset, folder: Path, cfg: Config, *, items: pl.DataFrame) -> dict:
    """Train, evaluate and export the configured preset into `folder`; return its metrics."""
    r = cfg.rank
    ds = Dataset(events=ds.events, items=items, users=ds.users, exposures=ds.exposures, split=ds.split, vocabs=ds.vocabs)
    settings = rank_settings(cfg)
    parts = build_all(ds, settings.samples)
    folder.mkdir(parents=True, exist_ok=True)
    model, fit = fit_preset(r.preset, parts, settings, out=folder)
    model.eval()
    test = parts["test"]
    y = test.tensors["label"].numpy()
    p = predict(model, test)
    metrics = {"preset": r.preset, "protocol": test.protocol, **ctr_metrics(y, p, test.tensors["user"].numpy()),
               "valid_auc": fit.best_valid_auc, "train_rows": len(parts["train"])}
    example = parts["train"].take(torch.arange(min(64, len(parts["train"]))))
    export_torchscript(model, example, folder / "model.pt")
    served = "model.pt"
    if r.quantize:
        quant = quantize_dynamic(model)
        q = predict(quant, test)
        metrics["int8_auc"] = ctr_metrics(y, q)["auc"]
        metrics["int8_auc_loss"] = metrics["auc"] - metrics["int8_auc"]
        if metrics["int8_auc_loss"] <= r.max_quant_auc_loss:
            export_torchscript(quant, example, folder / "model_int8.pt")
            served = "model_int8.pt"
    metrics["served"] = served
    (folder / "served.json").write_text(json.dumps({"model": served, "preset": r.preset, "inputs": list(model.input_names)}))
    return metrics


class ServedRanker:
    """Scores one user's candidates with the exported model and the training-time feature code."""

    def __init__(self, model, encoders: Encoders, items: pl.DataFrame, users: pl.DataFrame, vocabs: dict[str, Vocab],
                 inputs: list[str]):
        self.model, self.encoders, self.items, self.vocabs, self.inputs = model, encoders, items, vocabs, inputs
        self.users = users
        self._empty_exposures = pl.DataFrame(schema={c.name: c.dtype for c in EXPOSURES.columns if c.required})
        far = 2**62
        self._split = TimeSplit(train_end=far, valid_end=far)

    @classmethod
    def load(cls, folder: Path, *, items: pl.DataFrame, users: pl.DataFrame, vocabs: dict[str, Vocab]) -> "ServedRanker":
        served = json.loads((folder / "served.json").read_text())
        model = load_torchscript(folder / served["model"])
        model.eval()
        return cls(model, Encoders.load(folder), items, users, vocabs, served["inputs"])

    def _user_frame(self, state: UserState) -> pl.DataFrame:
        row = {"user_id": [state.user_id]}
        for c in PROFILE:
            if c in self.users.columns:
                row[c] = pl.Series(c, [state.profile.get(c)], dtype=self.users.schema[c])
        return pl.DataFrame(row)

    def score(self, state: UserState, cands, context: dict) -> np.ndarray:
        """(n,) click probabilities for the merged candidates `cands` of `state`'s user."""
        events = EVENTS.conform(pl.DataFrame({
            "user_id": np.full(state.items.size, state.user_id, np.int32), "item_id": state.items.astype(np.int32),
            "behavior": pl.Series(np.asarray(BEHAVIORS)[state.behaviors.astype(np.int64)], dtype=pl.String).cast(BEHAVIOR),
            "ts": state.ts.astype(np.int64)}))
        n = len(cands)
        rows = pl.DataFrame({
            "user_id": np.full(n, state.user_id, np.int32), "item_id": cands.items.astype(np.int32),
            "ts": np.full(n, state.now, np.int64), "channel": cands.channel_names().astype(str),
            "position": np.zeros(n, np.int32), "page": np.full(n, int(context.get("page", 0)), np.int32),
            "trigger_item": np.where(cands.triggers > 0, cands.triggers, 0).astype(np.int32)})
        ds = Dataset(events=events, items=self.items, users=self._user_frame(state), split=self._split,
                     vocabs=self.vocabs, exposures=self._empty_exposures)
        raw = point_in_time(ds, rows, self.encoders.settings)
        batch = self.encoders.transform(raw)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # int8 kernels warn that torch.ao quantization is deprecated
            logits = self.model({k: batch[k] for k in self.inputs})
        return torch.sigmoid(logits).numpy()
