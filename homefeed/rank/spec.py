"""The contract between ranking features and ranking models: a declared `FeatureSpec` and the batch.

Features produce, and models consume, one dict of tensors per batch (B batch, F sparse fields,
Dn dense values, L sequence length, S sequence fields):

    batch["sparse"]   (B, F)    int64  per-field codes in [0, vocab_size); 0 = unknown/missing
    batch["dense"]    (B, Dn)   float32 standardised numeric features (Dn may be 0)
    batch["seq"]      (B, L, S) int64  behaviour sequence, oldest first, right-padded with 0
    batch["seq_gap"]  (B, L)    int64  time-gap bucket of each sequence step before the sample time
    batch["label"]    (B,)      float32 clicked 0/1
    batch["user"]     (B,)      int64  user code, for GAUC

Sequence field s embeds with the table of the sparse field named by `SequenceField.shares`, so a
clicked item in the sequence and the target item live in one space (what DIN and BST attend over).
The spec is saved with every trained model so serving builds exactly the same tensors.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from homefeed.config import Section

Group = Literal["user", "item", "context", "cross"]


class SparseField(Section):
    name: str
    vocab_size: int  # codes 0..vocab_size-1; 0 is unknown
    group: Group


class DenseField(Section):
    name: str
    group: Group


class SequenceField(Section):
    name: str  # e.g. "hist_item_id"
    shares: str  # sparse field whose embedding table it uses, e.g. "item_id"


class FeatureSpec(Section):
    sparse: list[SparseField]
    dense: list[DenseField] = []
    sequence: list[SequenceField] = []
    max_len: int = 50  # L
    n_gap_buckets: int = 16  # time-gap buckets of sequence steps (bucket 0 = padding)

    @model_validator(mode="after")
    def _check(self):
        names = [f.name for f in self.sparse]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate sparse field names in {names}")
        for s in self.sequence:
            if s.shares not in names:
                raise ValueError(f"sequence field {s.name!r} shares {s.shares!r}, which is not a sparse field; sparse fields: {', '.join(names)}")
        return self

    def sparse_index(self, name: str) -> int:
        for i, f in enumerate(self.sparse):
            if f.name == name:
                return i
        raise KeyError(f"no sparse field {name!r}; sparse fields: {', '.join(f.name for f in self.sparse)}")

    @property
    def target_indices(self) -> list[int]:
        """Index in `sparse` of the target-side field of each sequence field (for attention)."""
        return [self.sparse_index(s.shares) for s in self.sequence]
