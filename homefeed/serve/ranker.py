"""The served ranker: score one user's candidates at request time with the bundle's exported model.

The model is trained and exported offline by `homefeed.rank.part.RankPart`; here it is only loaded, and
frozen (`torch.jit.freeze`: weight-only work such as the int8 copy's dequantisation folded once, same logits).
`ServedRanker.score` computes the features of one user's candidates with
`rank.online.OnlineFeatures` (numpy on item codes precomputed at load: well under a millisecond for
~500 candidates), then scores them in one batch. The user's behaviour history goes in once, not once
per candidate (`served.json: shared_sequence`), so the model encodes its user-side part once. `ServedRanker.exact_features` runs the training
feature code (`point_in_time` + `Encoders.transform`) on a one-user slice instead; the two give the
same tensors (`tests/test_rank_online.py`), so training and serving cannot drift apart.
The pipeline passes the pages it served the user as exposures, so the `item_shown_*` fatigue counts
are live online as they were in training.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR, BEHAVIORS, EVENTS, EXPOSURES
from homefeed.data.user_state import UserState
from homefeed.data.vocab import Vocab
from homefeed.rank.encoders import Encoders
from homefeed.rank.export import load_torchscript
from homefeed.rank.features import point_in_time
from homefeed.rank.online import OnlineFeatures
from homefeed.rank.part import PROFILE


class ServedRanker:
    """Scores one user's candidates with the exported model.

    `features` is the fast online path (`rank.online.OnlineFeatures`, numpy on precomputed item
    codes); `exact_features` runs the training feature code (`point_in_time` + `Encoders.transform`)
    on a one-user slice and is the reference the fast path is tested against. `exact=True` serves
    with the reference path (slow: tens of ms per request).
    """

    def __init__(self, model, encoders: Encoders, items: pl.DataFrame, users: pl.DataFrame, vocabs: dict[str, Vocab],
                 inputs: list[str], *, exact: bool = False, threads: int | None = 1, shared_sequence: bool = False):
        self.model, self.encoders, self.items, self.vocabs, self.inputs = model, encoders, items, vocabs, inputs
        self.users, self.exact, self.threads = users, exact, threads
        self.shared_sequence = shared_sequence  # the model takes the history once, seq (1, L, S) (bundles built since)
        self.model_name = ""  # the served file, e.g. model_int8.pt (set by `load`)
        self._exposure_schema = {c.name: c.dtype for c in EXPOSURES.columns if c.required}
        far = 2**62
        self._split = TimeSplit(train_end=far, valid_end=far)
        schema = {c: users.schema[c] for c in PROFILE if c in users.columns}
        n_items = vocabs["item"].size if "item" in vocabs else 0
        self.online = OnlineFeatures(encoders, items, n_items=n_items, user_schema=schema)
        self.online.warm_profiles(users)  # known users' profile codes: no polars call at request time

    @classmethod
    def load(cls, folder: Path, *, items: pl.DataFrame, users: pl.DataFrame, vocabs: dict[str, Vocab],
             exact: bool = False) -> "ServedRanker":
        served = json.loads((folder / "served.json").read_text())
        # frozen: weights become constants, so the int8 copy's dequantisation (and any other weight-only work
        # outside branches) is folded once here instead of run on every request; the logits are unchanged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is in maintenance mode; freezing still works
            model = torch.jit.freeze(load_torchscript(folder / served["model"]).eval())
        ranker = cls(model, Encoders.load(folder), items, users, vocabs, served["inputs"], exact=exact,
                     shared_sequence=bool(served.get("shared_sequence", False)))
        ranker.model_name = served["model"]
        return ranker

    def _user_frame(self, state: UserState) -> pl.DataFrame:
        row = {"user_id": [state.user_id]}
        for c in PROFILE:
            if c in self.users.columns:
                row[c] = pl.Series(c, [state.profile.get(c)], dtype=self.users.schema[c])
        return pl.DataFrame(row)

    def features(self, state: UserState, cands, context: dict, exposures: tuple[np.ndarray, np.ndarray] | None = None,
                 *, shared_sequence: bool = False) -> dict[str, torch.Tensor]:
        """The model batch for the merged candidates `cands`, by the fast online path.

        shared_sequence=True: the user's history once, seq (1, L, S) and seq_gap (1, L), not repeated
        per candidate (what `score` sends a model exported to take it).
        """
        return self.online.transform(state, cands.items, channels=cands.channels, names=cands.names,
                                     triggers=cands.triggers, page=int(context.get("page", 0)), exposures=exposures,
                                     shared_sequence=shared_sequence)

    def exact_features(self, state: UserState, cands, context: dict,
                       exposures: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """The model batch by the training feature code on a one-user slice (the reference for `features`)."""
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
                     vocabs=self.vocabs, exposures=self._exposure_frame(state.user_id, exposures))
        return self.encoders.transform(point_in_time(ds, rows, self.encoders.settings))

    def _exposure_frame(self, user: int, exposures: tuple[np.ndarray, np.ndarray] | None) -> pl.DataFrame:
        items, ts = exposures if exposures is not None else (np.zeros(0, np.int32), np.zeros(0, np.int64))
        m = len(items)
        return pl.DataFrame({"request_id": np.zeros(m, np.int64), "user_id": np.full(m, user, np.int32),
                             "item_id": np.asarray(items, np.int32), "ts": np.asarray(ts, np.int64),
                             "position": np.zeros(m, np.int32), "page": np.zeros(m, np.int32),
                             "channel": pl.Series([""] * m, dtype=pl.String), "clicked": np.zeros(m, np.int8)},
                            schema=self._exposure_schema)

    def score(self, state: UserState, cands, context: dict, exposures: tuple[np.ndarray, np.ndarray] | None = None
              ) -> np.ndarray:
        """(n,) click probabilities for the merged candidates `cands` of `state`'s user.

        exposures: the user's recently shown (item codes, ts), for the item_shown_* counts (None: none known).
        """
        if self.exact:
            return self.predict(self.exact_features(state, cands, context, exposures))
        return self.predict(self.features(state, cands, context, exposures, shared_sequence=self.shared_sequence))

    def predict(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """(n,) sigmoid of the model's logits on one batch (the calling thread's torch pool capped at `threads`)."""
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            logits = self.model({k: batch[k] for k in self.inputs})
        return torch.sigmoid(logits).numpy()
