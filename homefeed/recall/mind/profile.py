"""User profile codes for MIND's user tower: gender, age band, city and purchase power as small integer codes.

A served `UserState` carries the raw profile (`{"gender": "F", "age": 23, "city": "Hangzhou"}`) and
training reads the users table; both go through the same vocabulary, so the tower sees the same
codes offline and online. Each field's values seen in training get codes 1..n (sorted, so the codes
do not depend on row order); 0 is unknown (a missing value, or one never seen). Age is cut into
bands at `age_bands` edges first.

    >>> vocab = ProfileVocab.fit(users)                                     # doctest: +SKIP
    >>> vocab.encode({"gender": "F", "age": 23}).tolist()                   # doctest: +SKIP
    [1, 2, 0, 0]
"""
from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import polars as pl

FIELDS = ("gender", "age", "city", "purchase_power")
AGE_BANDS = (18, 25, 30, 35, 40, 50)


def _text(value) -> str | None:
    return None if value is None else str(value)


@dataclass
class ProfileVocab:
    """Known values per profile field and the age band edges.

    Attributes:
        values: field -> sorted known values as strings (code = position + 1); "age" holds band numbers.
        age_bands: ascending age edges; band b (1-based) is ages in [edges[b-2], edges[b-1]).
    """

    values: dict[str, list[str]]
    age_bands: tuple[int, ...] = AGE_BANDS

    @property
    def sizes(self) -> list[int]:
        """Rows of each field's embedding table (known values + the unknown code 0), in FIELDS order."""
        return [len(self.values.get(f, [])) + 1 for f in FIELDS]

    def _band(self, age) -> str | None:
        return None if age is None else str(1 + bisect_right(self.age_bands, float(age)))

    @classmethod
    def fit(cls, users: pl.DataFrame, *, age_bands: tuple[int, ...] = AGE_BANDS) -> "ProfileVocab":
        """The vocabulary of every profile column present in `users` (missing columns stay all-unknown)."""
        vocab = cls({}, tuple(age_bands))
        for f in FIELDS:
            if f not in users.columns:
                continue
            raw = users[f].drop_nulls().unique().to_list()
            vocab.values[f] = sorted({vocab._band(a) for a in raw} if f == "age" else {str(v) for v in raw})
        return vocab

    def encode(self, profile: dict) -> np.ndarray:
        """(len(FIELDS),) int64 codes of one raw profile dict; missing or unseen values are 0."""
        out = np.zeros(len(FIELDS), np.int64)
        for j, f in enumerate(FIELDS):
            value = self._band(profile.get(f)) if f == "age" else _text(profile.get(f))
            known = self.values.get(f, [])
            pos = np.searchsorted(known, value) if value is not None and known else len(known)
            out[j] = pos + 1 if pos < len(known) and known[pos] == value else 0
        return out

    def encode_users(self, users: pl.DataFrame, n_users: int) -> np.ndarray:
        """(n_users, len(FIELDS)) int64 codes indexed by user code; users missing from the table get 0s."""
        codes = np.zeros((n_users, len(FIELDS)), np.int64)
        ids = users["user_id"].to_numpy()
        inside = (ids >= 0) & (ids < n_users)
        for j, f in enumerate(FIELDS):
            known = self.values.get(f, [])
            if f not in users.columns or not known:
                continue
            col = pl.col(f)
            if f == "age":
                band = 1 + pl.sum_horizontal([(pl.col(f) >= e).cast(pl.Int32) for e in self.age_bands])
                col = pl.when(pl.col(f).is_not_null()).then(band)
            text = users.select(col.cast(pl.String).alias(f))[f]
            mapped = text.replace_strict(known, list(range(1, len(known) + 1)), default=0, return_dtype=pl.Int64)
            codes[ids[inside], j] = mapped.fill_null(0).to_numpy()[inside]
        return codes

    def to_json(self) -> str:
        return json.dumps({"values": self.values, "age_bands": list(self.age_bands)})

    @classmethod
    def from_json(cls, text: str) -> "ProfileVocab":
        doc = json.loads(text)
        return cls({k: list(v) for k, v in doc["values"].items()}, tuple(doc["age_bands"]))
