"""EGES: item vectors from the item's id *and* its side information, mixed by learned per-item weights.

Wang et al., "Billion-scale Commodity Embedding for E-commerce Recommendation in Alibaba" (KDD 2018).
An item v has an id and m side-information values (leaf category, standard category, brand, shop,
price band, any extra attribute). Each field j has one table W^j shared by all items, and every item
has m + 1 attention logits a_v. The item's vector is the softmax-weighted mix

    H_v = sum_{j=0..m} exp(a_v^j) W^j[s_j(v)] / sum_j exp(a_v^j)        (j = 0 is the id itself)

and H_v is the centre vector of skip-gram over the walks (`skipgram.py`). A field whose value is
unknown for v (code 0) is left out of both sums: a shared "unknown" vector would pull every item
without a brand towards one point. Three modes, as in the paper's comparison:

    "deepwalk"  H_v = W^0[v]                  (BGE: no side information)
    "ges"       H_v = mean_j W^j[s_j(v)]      (equal weights over the known fields)
    "eges"      the softmax mix above         (weights learned per item)

The paper starts every a_v at 0 (GES's equal weights). Trained from there the logits barely move in
a few epochs, so an item seen with hundreds of neighbours kept a third of its vector from a genre
shared by 500 films, and EGES fell below DeepWalk (link AUC .69 vs .77 on MovieLens). So `start_attention`
starts the mix in proportion to [d_v, prior * g_j]: the item's distinct neighbours against how
much each field tells about neighbours (Cohen's kappa, `side_agreement`, by default; or the
information gain in nats, `side_information_gain`); training moves the logits from there. Kappa
misses how specific a value is: on Toys a leaf category of ~12 items (gain .16) and on MovieLens a
genre of hundreds of films (gain .01) have the same kappa (.09, .08), yet only the first helps (GES
.762 vs DeepWalk .751 on Toys, .706 vs .765 on MovieLens). 25 x gain gives EGES .764 on Toys and
.765 on MovieLens, but on Taobao (gain ~1, one or two neighbours an item) nearly all of the mix goes
to the leaf and cosine AUC falls (.948 -> .927 on the tail). Neither suits every log, so by default
`validation.py` picks one per graph on held-out edges of the training graph itself.

A cold-start item (never in a walk) has no trained id vector, so its vector comes from side
information alone: sum_{j>=1} beta_j W^j[s_j(v)], with beta the softmax of the warm items' mean side
logits (equal weights for GES). Items sharing a brand, shop and category then land together.

    >>> side = side_information(items, n_items)                   # doctest: +SKIP
    >>> model = EGESModel(n_items, side, dim=64, mode="eges")     # doctest: +SKIP
    >>> train_skipgram(model, corpus); vectors = model.item_vectors(warm)   # doctest: +SKIP

Notation: N items (codes 0..N-1), m side fields, D dimensions, B a batch of items.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import polars as pl
import torch

Mode = Literal["deepwalk", "ges", "eges"]
MODES: tuple[str, ...] = ("deepwalk", "ges", "eges")
FLOOR = 0.01  # the least weight, in neighbours, that `start_attention` gives a part: small, but it can still grow
AUTO_FIELDS = ("leaf_category", "standard_category", "brand", "shop", "price_band")


class RowGrad(NamedTuple):
    """A gradient for some rows of one table: table[rows] -= lr * lr_scale * grad (mean over repeats if shared)."""

    table: torch.Tensor
    rows: torch.Tensor  # (B,) int64
    grad: torch.Tensor  # (B, ...) float32
    lr_scale: float
    shared: bool  # a table many items use (side information): a row moves by its mean gradient in the batch


@dataclass
class SideInfo:
    """Side-information codes of every item.

    Attributes:
        codes: (N, m) int64; codes[v, j] is item v's value of field j, 0 = unknown.
        sizes: (m,) rows of each field's table (max code + 1).
        names: the m field names.
    """

    codes: np.ndarray
    sizes: list[int]
    names: list[str]

    @property
    def n_fields(self) -> int:
        return len(self.names)


def price_bands(items: pl.DataFrame, n_bands: int) -> pl.Series:
    """Int64 price band 1..(leaves * n_bands) per item: equal-frequency bands of price within its leaf category
    (a cheap phone and a cheap sofa share a band only through their leaf), 0 where price is unknown."""
    leaf = pl.col("leaf_category") if "leaf_category" in items.columns else pl.lit(0)
    rank = (pl.col("price").rank("ordinal").over(leaf) - 1) * n_bands // pl.len().over(leaf)
    band = (leaf.cast(pl.Int64) * n_bands + rank.cast(pl.Int64) + 1)
    return items.select(pl.when(pl.col("price").is_not_null()).then(band).otherwise(0).alias("price_band"))["price_band"]


def side_information(items: pl.DataFrame, n_items: int, *, fields: list[str] | None = None,
                     n_price_bands: int = 5) -> SideInfo:
    """Side-information codes of the items table, one field per name in `fields`.

    Default fields: leaf_category, standard_category (when the items table has it), brand, shop, price_band.
    Any other integer column of `items` (e.g. venue) may be named. Item codes missing from `items` get 0s.
    Code 0 is unknown (it adds nothing to an item's vector). A field with fewer than two known values says
    nothing about any item (a log without brands, without prices) and is left out.
    """
    explicit = fields is not None
    fields = list(fields) if explicit else [f for f in AUTO_FIELDS if f == "price_band" or f in items.columns]
    if "price_band" in fields and "price" in items.columns:
        items = items.with_columns(price_bands(items, n_price_bands))
    codes = np.zeros((n_items, len(fields)), np.int64)
    ids = items["item_id"].to_numpy().astype(np.int64)
    inside = (ids >= 0) & (ids < n_items)
    for j, name in enumerate(fields):
        if name not in items.columns:
            raise ValueError(f"side-information field {name!r} is not an items column; columns: {', '.join(items.columns)}")
        col = items[name]
        if not col.dtype.is_integer():
            raise ValueError(f"side-information field {name!r} must hold integer codes, got {col.dtype}")
        values = col.fill_null(0).to_numpy().astype(np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"side-information field {name!r} has negative code {values.min()}")
        codes[ids[inside], j] = values[inside]
    informative = [j for j in range(len(fields)) if np.unique(codes[:, j][codes[:, j] > 0]).size >= 2]
    codes = np.ascontiguousarray(codes[:, informative])
    return SideInfo(codes, [int(codes[:, j].max(initial=0)) + 1 for j in range(codes.shape[1])],
                    [fields[j] for j in informative])


def side_agreement(side: SideInfo, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(m,) float64 per field: kappa = (P(an edge's ends share the value) - P(two ends drawn at random do)) / (1 - the
    latter), over edges (src, dst) whose ends both know the field; 0 for a field known on no edge. 1 = linked items
    always share it, 0 = no more than chance (Cohen's kappa of the edge's two ends)."""
    out = np.zeros(side.n_fields)
    for j, same, chance in _shared_values(side, src, dst):
        out[j] = (same - chance) / max(1.0 - chance, 1e-12)
    return out


def _shared_values(side: SideInfo, src: np.ndarray, dst: np.ndarray):
    """Per field known at both ends of some edge: (field, P(an edge's ends share the value), P(two ends drawn at
    random from the edges' ends do))."""
    for j in range(side.n_fields):
        c = side.codes[:, j]
        known = (c[src] > 0) & (c[dst] > 0)
        if not known.any():
            continue
        a, b = c[src[known]], c[dst[known]]
        share = np.bincount(np.r_[a, b]) / (2.0 * a.size)
        yield j, float((a == b).mean()), float((share ** 2).sum())


def side_information_gain(side: SideInfo, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(m,) float64 per field: what an edge tells about its ends sharing the field's value, in nats: the KL divergence
    KL(Bernoulli(p_edge) || Bernoulli(p_chance)) of "the two ends share it" over edges (src, dst) whose ends both know
    the field, against two ends drawn at random (as in `side_agreement`); 0 for a field known on no edge.

    Unlike kappa it counts how *specific* a shared value is: a leaf category of 10 items that linked items share 9%
    of the time (chance 0.7%) gives 0.16 nats, a genre of 300 films shared 25% of the time (chance 19%) 0.01, while
    their kappas are alike (0.09, 0.08)."""
    out = np.zeros(side.n_fields)
    for j, same, chance in _shared_values(side, src, dst):
        p0 = float(np.clip(chance, 1e-12, 1 - 1e-12))
        p1 = float(np.clip(same, 1e-12, 1 - 1e-12))
        out[j] = max(p1 * np.log(p1 / p0) + (1 - p1) * np.log((1 - p1) / (1 - p0)), 0.0) if p1 > p0 else 0.0
    return out


def _uniform(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(rows, dim, generator=gen) - 0.5) / dim  # word2vec's initialisation


class EGESModel:
    """The tables of (E)GES / DeepWalk and its skip-gram encoder (see `skipgram.Encoder`).

    Attributes:
        ids: (N, D) float32 id vectors W^0.
        sides: m tables (V_j, D) float32, shared by all items.
        attention: (N, 1 + m) float32 logits a_v (used in "eges" mode).
        context: (N, D) float32 skip-gram context vectors z.
        codes: (N, m) int64 side-information codes (a torch copy of `SideInfo.codes`).
    """

    def __init__(self, n_items: int, side: SideInfo | None, *, dim: int = 64, mode: Mode = "eges",
                 attention_lr: float = 1.0, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        if mode != "deepwalk" and (side is None or side.n_fields == 0):
            raise ValueError(f"mode {mode!r} needs side information (at least one field)")
        side = side if mode != "deepwalk" else SideInfo(np.zeros((n_items, 0), np.int64), [], [])
        if side.codes.shape[0] != n_items:
            raise ValueError(f"side information covers {side.codes.shape[0]} items, expected {n_items}")
        gen = torch.Generator().manual_seed(seed)
        self.mode, self.dim, self.attention_lr, self.side = mode, dim, attention_lr, side
        self.ids = _uniform(n_items, dim, gen)
        self.sides = [_uniform(size, dim, gen) for size in side.sizes]
        self.attention = torch.zeros(n_items, 1 + side.n_fields)
        self.context = torch.zeros(n_items, dim)
        self.codes = torch.from_numpy(np.ascontiguousarray(side.codes, np.int64))
        self.known = self.codes > 0  # (N, m) bool: code 0 is an unknown value and adds nothing

    def start_attention(self, evidence: np.ndarray, agreement: np.ndarray, prior: float) -> "EGESModel":
        """Start item v's mix with weights in proportion to [d_v, prior * g_1, ..., prior * g_m]: d_v = evidence[v]
        (its distinct neighbours in the graph), g_j = agreement[j] >= 0 (how much an edge says about its ends sharing
        field j: `side_information_gain` or `side_agreement`). An empirical-Bayes start: an item seen next to many others trusts its own
        vector, a rare one the fields that really predict its neighbours, and a field that predicts nothing starts
        as FLOOR neighbours (~0). prior 0 keeps the paper's equal start; training then moves the logits."""
        if self.mode != "eges" or prior <= 0 or not self.sides:
            return self
        d = torch.as_tensor(np.asarray(evidence, np.float64), dtype=torch.float32)
        kappa = torch.as_tensor(np.clip(np.asarray(agreement, np.float64), 0.0, None), dtype=torch.float32)
        self.attention[:, 0] = torch.log(d.clamp(min=FLOOR))
        self.attention[:, 1:] = torch.log((prior * kappa).clamp(min=FLOOR))[None, :]
        return self

    def tables(self) -> list[torch.Tensor]:
        """Every trainable table (for sharing between processes)."""
        return [self.ids, *self.sides, self.attention, self.context]

    def share_memory(self) -> "EGESModel":
        for t in self.tables():
            t.share_memory_()
        self.codes.share_memory_()
        self.known.share_memory_()
        return self

    def _mix_weights(self, items: torch.Tensor) -> torch.Tensor:
        """(B, 1 + m) weights of the id and each side field for `items`: 0 where a field is unknown (code 0),
        else equal (GES) or the softmax of the item's logits over its known fields (EGES)."""
        known = torch.cat([torch.ones(items.numel(), 1, dtype=torch.bool), self.known.index_select(0, items)], 1)
        if self.mode == "ges":
            return known.float() / known.sum(1, keepdim=True)
        return torch.softmax(self.attention.index_select(0, items).masked_fill(~known, -torch.inf), 1)

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(h (B, D), saved): the centre vectors of `items` (B,) and what `backward` needs."""
        if self.mode == "deepwalk":  # index_select, not t[items]: several times faster on CPU
            return self.ids.index_select(0, items), (items,)
        rows = self.codes.index_select(0, items).T.contiguous().unbind(0)  # m x (B,)
        parts = torch.stack([self.ids.index_select(0, items), *(t.index_select(0, r) for t, r in zip(self.sides, rows))],
                            1)  # (B, 1 + m, D)
        alpha = self._mix_weights(items)  # (B, 1 + m)
        return (alpha.unsqueeze(2) * parts).sum(1), (items, rows, parts, alpha)  # (bmm is ~2x slower for m ~ 5)

    def backward(self, saved: tuple, grad_h: torch.Tensor) -> list[RowGrad]:
        """Gradients of the gathered rows from d loss / d h (B, D), written out by hand:

            d h / d W^j[s_j]  = alpha_j                 -> grad_j = alpha_j * grad_h
            d loss / d alpha_j = W^j[s_j] . grad_h      -> grad_a = alpha * (g_alpha - sum_j alpha_j g_alpha_j)
        """
        items = saved[0]
        if self.mode == "deepwalk":
            return [RowGrad(self.ids, items, grad_h, 1.0, False)]
        _, rows, parts, alpha = saved
        grad_parts = alpha.T.unsqueeze(2) * grad_h.unsqueeze(0)  # (1 + m, B, D): each field's rows contiguous,
        out = [RowGrad(self.ids, items, grad_parts[0], 1.0, False)]  # which index_add_ needs to be fast
        out += [RowGrad(t, r, grad_parts[j + 1], 1.0, True) for j, (t, r) in enumerate(zip(self.sides, rows))]
        if self.mode == "eges":
            g_alpha = torch.bmm(parts, grad_h.unsqueeze(2)).squeeze(2)  # (B, 1 + m)
            g_logits = alpha * (g_alpha - (alpha * g_alpha).sum(1, keepdim=True))
            out.append(RowGrad(self.attention, items, g_logits, self.attention_lr, False))
        return out

    def field_weights(self, items: np.ndarray | None = None) -> np.ndarray:
        """(len(items), 1 + m) float32 mixing weights per item (id first; 0 for an unknown field); all items by default."""
        idx = torch.arange(self.ids.shape[0]) if items is None else torch.as_tensor(items, dtype=torch.int64)
        if self.mode == "deepwalk":
            return np.ones((idx.numel(), 1), np.float32)
        return self._mix_weights(idx).numpy()

    def side_only(self, items: np.ndarray, warm: np.ndarray | None = None) -> np.ndarray:
        """(len(items), D) float32 cold-start vectors from side information alone (zeros in deepwalk mode).

        Field weights: softmax of the mean side logits over `warm` items (bool (N,)) in eges mode, equal otherwise,
        renormalised over each item's known fields (an item with none gets a zero vector).
        """
        idx = torch.as_tensor(np.asarray(items), dtype=torch.int64)
        if self.mode == "deepwalk" or not self.sides:
            return np.zeros((idx.numel(), self.dim), np.float32)
        beta = torch.from_numpy(self.side_weights(items, warm))
        parts = torch.stack([t[self.codes[idx, j]] for j, t in enumerate(self.sides)], 1)  # (B, m, D)
        return (beta[:, :, None] * parts).sum(1).numpy()

    def side_weights(self, items: np.ndarray, warm: np.ndarray | None = None) -> np.ndarray:
        """(len(items), m) float32 field weights of `side_only`: the softmax of the warm items' mean side logits
        (eges) or equal (ges), renormalised over each item's known fields (all 0 for an item with none)."""
        idx = torch.as_tensor(np.asarray(items), dtype=torch.int64)
        if self.mode == "eges" and warm is not None and warm.any():
            beta = torch.softmax(self.attention[torch.from_numpy(np.flatnonzero(warm)), 1:].mean(0), 0)
        else:
            beta = torch.full((len(self.sides),), 1.0 / max(len(self.sides), 1))
        beta = beta[None, :] * self.known[idx].float()  # (B, m)
        return (beta / beta.sum(1, keepdim=True).clamp(min=1e-12)).numpy()

    @torch.no_grad()
    def item_vectors(self, warm: np.ndarray | None = None) -> np.ndarray:
        """(N, D) float32: H_v for every item; with `warm` (bool (N,)), items not warm get `side_only` vectors."""
        out = np.empty((self.ids.shape[0], self.dim), np.float32)
        for lo in range(0, out.shape[0], 65_536):
            idx = torch.arange(lo, min(lo + 65_536, out.shape[0]))
            out[idx.numpy()] = self.encode(idx)[0].detach().numpy()
        if warm is not None and (~warm).any():
            cold = np.flatnonzero(~warm)
            out[cold] = self.side_only(cold, warm)
        return out
