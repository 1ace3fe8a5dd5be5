"""Skip-gram with negative sampling (SGNS) over walks, in PyTorch with a hand-written sparse SGD.

word2vec (Mikolov et al., NIPS 2013) learns a vector h(c) per centre node and z(x) per context node
so that nodes that walk together score high: for a centre c, a context x within `window` steps of
it in a walk, and K negatives n_k drawn from the unigram distribution raised to 0.75,

    loss(c, x) = -log sigmoid(h(c) . z(x)) - sum_k log sigmoid(-h(c) . z(n_k))

The encoder h is pluggable (`encode(items) -> (h, leaves)`): a plain id table for DeepWalk, the
attention-weighted sum of id and side-information vectors for EGES (`eges.py`).

Like gensim: the window is shrunk at random per centre (nearer contexts count more), frequent nodes
are down-sampled (keep probability (sqrt(f / (s T)) + 1) s T / f for frequency f of T tokens), and
the learning rate falls linearly from `lr` to `lr * 1e-4` over training.

Batches are centre-major: B centres, each with its (up to 2 window) contexts and K negatives shared
by those contexts, weighted so that every positive pair still meets K negatives. A centre then reads
2 window + K context rows instead of n (1 + K), which is most of the speed.

Training is a sparse SGD written by hand: each batch gathers only the rows it uses (`index_select`,
several times faster than `table[rows]` on CPU), the gradients are written out by hand (SGNS here, the
encoder's in its `backward`, fed -lr * d loss / d h since it is linear), and `index_add_` adds
`-lr * grad` into the tables (id and context rows used twice in a batch get both updates, as in
Hogwild word2vec; rows of shared side tables get the mean). No dense gradient of a whole table ever
exists and nothing needs a sparse-tensor coalesce. The dot products can run under bf16 autocast.
Single-process fp32 steps score and update the context rows in one numba kernel instead (`sgns_kernel.py`:
the same maths, ~1.2-1.4x the words/s on a 200k-node graph), and the row updates are numba scatter-adds.

Negatives: "dynamic" (the default) draws new negatives every epoch; "static" replays the same pairs
and negatives each epoch. `hard_negatives > 0` swaps that share of negatives for near neighbours of
the centre under the current model, mined again before every epoch after the first.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numba
import numpy as np
import torch
from numba import njit, prange
from pydantic import Field

from homefeed.config import Section
from homefeed.recall.graph.sgns_kernel import scatter_add, sgns_step
from homefeed.recall.graph.walks import PAD, WalkCorpus, splitmix, uniform
from homefeed.threads import numba_threads, torch_threads


class TrainSettings(Section):
    """Skip-gram training knobs (gensim's names where they exist)."""

    dim: int = Field(64, ge=2)  # vector size D
    window: int = Field(5, ge=1)  # largest distance between centre and context
    negatives: int = Field(5, ge=1)  # K negatives per pair
    epochs: int = Field(2, ge=1)  # passes over the walk corpus (see WalkSettings for the token budget)
    batch_size: int = Field(1024, ge=1)  # centres per SGD step (each with up to 2 window contexts); at most half the nodes
    lr: float = Field(0.025, gt=0)  # start rate; falls linearly to lr * 1e-4
    attention_lr: float = Field(1.0, gt=0)  # multiplier of lr for the EGES attention logits
    # EGES: item v's mix starts in proportion to [d_v, side_prior * g_j]: its distinct graph neighbours against how
    # much each side field tells about neighbours, g_j Cohen's kappa (`side_agreement`) or the information gain in
    # nats (`side_information_gain`); side_prior 0 = all equal, as in the paper. Link AUC (cosine / context score):
    # 5 x kappa: Toys .750 / -, Taobao tail .948 / -; 25 x gain: Toys .764 / .798 (GES .762), Taobao tail .927 / .968
    side_prior: float = Field(5.0, ge=0)
    side_measure: Literal["kappa", "information"] = "kappa"
    subsample: float = Field(1e-3, ge=0)  # frequent-node down-sampling threshold s; 0 = off
    negative_power: float = Field(0.75, gt=0)  # negatives ~ count ** power
    negatives_mode: Literal["dynamic", "static"] = "dynamic"  # re-draw negatives each epoch, or replay them
    hard_negatives: float = Field(0.0, ge=0, le=1)  # share of negatives mined from the centre's near neighbours
    hard_pool: int = Field(20, ge=1)  # near neighbours kept per node for hard negatives
    bf16: bool = False  # run the dot products under bf16 autocast (AMX on recent Xeons)
    chunk_walks: int = Field(8192, ge=1)  # walks read from the corpus at a time
    threads: int = Field(1, ge=0)  # torch intra-op threads while training, restored after (1: parallelism from workers); 0 = as is
    seed: int = 0


class Encoder(Protocol):
    """What the trainer needs of a model: centre vectors, their gradients by row, and the context table."""

    context: torch.Tensor  # (N, D) float32

    def encode(self, items: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(h (B, D) centre vectors of items (B,), saved state for `backward`)."""

    def backward(self, saved: tuple, grad_h: torch.Tensor) -> list:
        """[RowGrad(table, rows, grad, lr_scale, shared), ...] from d loss / d h (B, D), one row per centre each;
        linear in grad_h, so the trainer passes -lr * d loss / d h and adds the results to the rows as they are.

        `shared` marks a table many items use (side information): its rows move by the *mean* of their
        gradients in a batch, not the sum, which would overshoot when hundreds of centres share a brand.
        """

    def item_vectors(self) -> np.ndarray:
        """(N, D) float32 current centre vectors of every node."""


@dataclass(frozen=True)
class Shard:
    """This process's part of data-parallel training (`homefeed.distributed.graph_train`).

    Every rank reads the same walks, windows and negatives and gathers the whole batch's centre vectors;
    rank r scores only the r-th of `world` slices of it (`torch.tensor_split`: the logits and their
    gradients, most of the arithmetic), `gather` hands every rank all slices' gradients (B, C + K) and
    (B, D) in rank order, and every rank applies the whole batch's update: the single-process step, so
    all ranks keep the same tables. `gather(tensors, sizes)`: this rank's (n_r, w) float32 tensors and
    every rank's n_r -> the (sum n_r, w) tensors. `total` sums a float over the ranks (the loss).
    """

    rank: int
    world: int
    gather: Callable[[list[torch.Tensor], list[int]], list[torch.Tensor]]
    total: Callable[[float], float]

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard rank {self.rank} is outside 0..{self.world - 1}")

    def rows(self, n: int) -> tuple[slice, list[int]]:
        """(this rank's rows of a batch of n, every rank's row count)."""
        sizes = [n // self.world + (r < n % self.world) for r in range(self.world)]
        start = sum(sizes[:self.rank])
        return slice(start, start + sizes[self.rank]), sizes


@njit(cache=True, inline="always")
def _walk_state(seed, w):
    st, _ = splitmix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(w))
    return st


@njit(cache=True, parallel=True)
def _window_kernel(walks, keep, window, seed, offsets, centers, contexts):
    """Pass 1 (centers is None-sized, offsets[w + 1] = kept tokens of walk w) or pass 2 (fill rows)."""
    fill = centers.size > 0
    for w in prange(walks.shape[0]):
        state = _walk_state(seed, w)
        kept = np.empty(walks.shape[1], np.int32)
        n = 0
        for t in range(walks.shape[1]):
            x = walks[w, t]
            if x == PAD:
                break
            state, u = uniform(state)
            if u < keep[x]:
                kept[n] = x
                n += 1
        if not fill:
            offsets[w + 1] = n
            continue
        for t in range(n):
            row = offsets[w] + t
            centers[row] = kept[t]
            state, u = uniform(state)
            b = 1 + min(int(u * window), window - 1)
            col = 0
            for s in range(max(t - b, 0), min(t + b, n - 1) + 1):
                if s != t:
                    contexts[row, col] = kept[s]
                    col += 1


def window_contexts(walks: np.ndarray, *, window: int, keep: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centers (n,) int64, contexts (n, 2 window) int64, -1 padded) of a (W, L) walk block: each node is
    dropped with prob 1 - keep[node], then every kept token is a centre and its contexts are the kept
    tokens within a random window b ~ U{1..window} of it. Seeded per walk (same seed, same output)."""
    walks = np.ascontiguousarray(walks, np.int32)
    offsets = np.zeros(walks.shape[0] + 1, np.int64)
    empty = np.zeros(0, np.int64)
    _window_kernel(walks, keep, window, seed, offsets, empty, np.zeros((0, 2 * window), np.int64))
    np.cumsum(offsets, out=offsets)
    centers, contexts = np.empty(offsets[-1], np.int64), np.full((offsets[-1], 2 * window), -1, np.int64)
    _window_kernel(walks, keep, window, seed, offsets, centers, contexts)
    return centers, contexts


def keep_probability(counts: np.ndarray, subsample: float) -> np.ndarray:
    """(N,) float64 word2vec down-sampling keep probability per node (1 where subsample is 0)."""
    if subsample <= 0:
        return np.ones(counts.size)
    threshold = subsample * max(counts.sum(), 1)
    f = np.maximum(counts, 1).astype(np.float64)
    return np.minimum((np.sqrt(f / threshold) + 1.0) * threshold / f, 1.0)


def unigram_table(counts: np.ndarray, *, power: float = 0.75, size: int = 1 << 22) -> torch.Tensor:
    """(size,) int64 node codes in proportion to counts ** power: a uniform index into it is a negative."""
    p = np.asarray(counts, np.float64) ** power
    if p.sum() <= 0:
        raise ValueError("no node occurs in the walks: cannot draw negatives")
    cum = np.cumsum(p / p.sum())
    return torch.from_numpy(np.searchsorted(cum, (np.arange(size) + 0.5) / size).clip(0, counts.size - 1))


def sgd_step(model: Encoder, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor, lr: float,
             *, bf16: bool = False, shard: Shard | None = None, fused: bool = True) -> float:
    """One sparse SGD step on B centres, each with up to C contexts ((B, C), -1 = none) and K negatives ((B, K))
    shared by its contexts; returns the summed loss (of this rank's rows, with `shard`).

    A centre with n contexts weighs its negatives by n, so every positive pair still meets K negatives
    (word2vec's balance) while the centre gathers C + K context rows instead of n (1 + K). Every update is
    computed at the point before the step and applied after it. With `shard`, this rank scores its slice of
    the centres and `shard.gather` brings the other slices' gradients (see `Shard`). Without `shard` or `bf16`
    the scoring and the context update run as one numba kernel (`sgns_kernel.sgns_step`; `fused=False`: torch).
    """
    h, saved = model.encode(centers)  # (B, D)
    if fused and shard is None and not bf16:  # one numba kernel: same maths, fewer passes over memory (sgns_kernel)
        h = h.contiguous()
        step_h = torch.empty_like(h)
        loss = sgns_step(model.context.numpy(), h.numpy(), contexts.contiguous().numpy(),
                         negatives.contiguous().numpy(), np.float32(lr), step_h.numpy(), numba.get_num_threads())
        apply_updates(model.backward(saved, step_h))
        return float(loss)
    mine, sizes = (slice(None), []) if shard is None else shard.rows(centers.numel())
    hm, cm, nm = h[mine], contexts[mine], negatives[mine]  # this rank's centres
    positive = cm >= 0  # (b, C)
    z = model.context.index_select(0, torch.cat([cm.clamp(min=0), nm], 1).reshape(-1)).view(hm.shape[0], -1, h.shape[1])
    n_pos = positive.sum(1, keepdim=True).float()  # (b, 1)
    weight = torch.cat([positive.float(), n_pos.expand(-1, nm.shape[1])], 1)  # (b, C + K)
    label = torch.zeros_like(weight)
    label[:, :cm.shape[1]] = 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = torch.bmm(z, hm.unsqueeze(2)).squeeze(2).float()  # (b, C + K)
        step = (torch.sigmoid(logits) - label) * (weight * -lr)  # -lr * d loss / d logit
        step_h = torch.bmm(step.unsqueeze(1), z).squeeze(1).float()  # (b, D) -lr * d loss / d h
    loss = (torch.nn.functional.softplus(torch.where(label > 0, -logits, logits)) * weight).sum()
    if shard is not None:  # data parallel: every rank's gradients of the whole batch, in rank order
        step, step_h = shard.gather([step.float(), step_h], sizes)
    targets = torch.cat([contexts.clamp(min=0), negatives], 1).reshape(-1)  # (B (C + K),)
    step_z = step.unsqueeze(2) * h.unsqueeze(1)  # (B, C + K, D)
    model.context.index_add_(0, targets, step_z.view(-1, h.shape[1]))
    apply_updates(model.backward(saved, step_h))
    return float(loss)


def apply_updates(updates) -> None:
    """table[rows] += update for each RowGrad (already times -lr; `backward` is linear in its input), the mean
    update per row for shared tables. No `alpha=` in index_add_: torch's alpha path is ~4x slower on CPU."""
    for table, rows, update, scale, shared in updates:
        if table.dtype == torch.float32 and update.dtype == torch.float32 and not update.requires_grad:
            scatter_add(table.numpy(), rows.numpy(), update.numpy(), float(scale), bool(shared))
            continue
        if shared:
            update = update / torch.bincount(rows, minlength=table.shape[0]).index_select(0, rows).unsqueeze(1)
        table.index_add_(0, rows, update if scale == 1.0 else update * scale)


def draw_negatives(table: torch.Tensor, centers: torch.Tensor, k: int, gen: torch.Generator, *,
                   hard: torch.Tensor | None = None, hard_share: float = 0.0) -> torch.Tensor:
    """(B, k) int64 negatives from the unigram table; with `hard` ((N, P) near neighbours, -1 = none) a
    `hard_share` of the columns come from the centre's own neighbour list."""
    neg = table.index_select(0, torch.randint(0, table.numel(), (centers.numel() * k,), generator=gen)).view(-1, k)
    n_hard = int(round(hard_share * k))
    if hard is not None and n_hard:
        pick = hard[centers[:, None], torch.randint(0, hard.shape[1], (centers.numel(), n_hard), generator=gen)]
        neg[:, :n_hard] = torch.where(pick >= 0, pick, neg[:, :n_hard])
    return neg


class TrainLog:
    """Counters of one training run: pairs, tokens, seconds, and the mean loss per epoch."""

    def __init__(self):
        self.pairs = self.tokens = 0
        self.seconds = 0.0
        self.epoch_loss: list[float] = []

    def as_dict(self) -> dict:
        s = max(self.seconds, 1e-9)
        return {"pairs": self.pairs, "tokens": self.tokens, "seconds": self.seconds,
                "pairs_per_s": self.pairs / s, "words_per_s": self.tokens / s, "epoch_loss": self.epoch_loss}


def train_skipgram(model: Encoder, corpus: WalkCorpus, *, settings: TrainSettings | None = None,
                   counts: np.ndarray | None = None, negative_counts: np.ndarray | None = None,
                   hard_miner: Callable[[np.ndarray, int], np.ndarray] | None = None,
                   shard: Shard | None = None) -> TrainLog:
    """Train `model` in place on the walks of `corpus`; returns a TrainLog.

    Parameters:
        counts: (N,) node counts in the corpus (default: counted here); they set down-sampling and, unless
            `negative_counts` is given, the negatives.
        negative_counts: (N,) counts the negatives are drawn by (e.g. the whole graph's, when the corpus is one part).
        hard_miner: (vectors (N, D), pool) -> (N, pool) int64 near neighbours (-1 = none); needed when
            `hard_negatives > 0`.
        shard: score this rank's slice of every batch and apply the whole batch's updates (data parallel, `Shard`).
    """
    s = settings if settings is not None else TrainSettings()
    n_nodes = model.context.shape[0]
    counts = corpus.counts(n_nodes) if counts is None else counts
    table = unigram_table(counts if negative_counts is None else negative_counts, power=s.negative_power)
    keep = keep_probability(counts, s.subsample)
    if s.hard_negatives > 0 and hard_miner is None:
        raise ValueError("hard_negatives > 0 needs a hard_miner (near neighbours of every node)")
    with torch_threads(s.threads), numba_threads(s.threads):
        return _epochs(model, corpus, s, table, keep, counts, hard_miner, shard)


def _epochs(model: Encoder, corpus: WalkCorpus, s: TrainSettings, table: torch.Tensor, keep: np.ndarray,
            counts: np.ndarray, hard_miner, shard: Shard | None) -> TrainLog:
    """The training loop of `train_skipgram`: every epoch over the corpus, in shuffled centre-major batches."""
    # Hogwild needs sparse updates: a batch of more centres than the corpus has nodes adds dozens of gradients,
    # all taken at the same point, into each row at once, and a small graph diverges; cap it
    batch_size = min(s.batch_size, max(8, int(np.count_nonzero(counts)) // 2))
    log, total = TrainLog(), s.epochs * max(len(corpus), 1)
    start = time.perf_counter()
    hard = None
    for epoch in range(s.epochs):
        if s.hard_negatives > 0 and epoch > 0:
            hard = torch.from_numpy(np.asarray(hard_miner(model.item_vectors(), s.hard_pool), np.int64))
        replay = 0 if s.negatives_mode == "static" else epoch
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + replay)
        loss_sum, pairs_epoch, done = 0.0, 0, 0
        for c, walks in enumerate(corpus.chunks(s.chunk_walks)):
            centers, contexts = window_contexts(walks, window=s.window, keep=keep, seed=(s.seed + 7919 * replay) * 100_003 + c)
            order = torch.randperm(centers.size, generator=gen)
            centers, contexts = torch.from_numpy(centers).index_select(0, order), torch.from_numpy(contexts).index_select(0, order)
            for lo in range(0, centers.numel(), batch_size):
                progress = (epoch * len(corpus) + done + walks.shape[0] * lo / max(centers.numel(), 1)) / total
                lr = s.lr * max(1.0 - progress, 1e-4)
                cb, xb = centers[lo:lo + batch_size], contexts[lo:lo + batch_size]
                neg = draw_negatives(table, cb, s.negatives, gen, hard=hard, hard_share=s.hard_negatives)
                loss_sum += sgd_step(model, cb, xb, neg, lr, bf16=s.bf16, shard=shard)
            done += walks.shape[0]
            pairs_epoch += int((contexts >= 0).sum())
            log.tokens += int(np.count_nonzero(walks != PAD))
        log.pairs += pairs_epoch
        log.epoch_loss.append((loss_sum if shard is None else shard.total(loss_sum)) / max(pairs_epoch, 1))
    log.seconds = time.perf_counter() - start
    return log
