"""MIND's towers and training loss: item tower, user tower (routing + profile), label-aware attention, sampled softmax.

Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall" (CIKM 2019).

    item tower   e_v = mean(E_id[v], E_leaf[leaf(v)], E_brand[brand(v)], E_shop[shop(v)])      (D,)
    user tower   behaviours (L items) -> item tower -> B2I routing (`routing.py`) -> K capsules;
                 each capsule is concatenated with the profile embedding (gender, age band, city,
                 purchase power) and passed through ReLU layers and a last linear map: V_u (K, D);
                 with `residual` (the channels' default) V_u = capsules + that MLP, S starting at the identity and
                 the last map at 0, so each interest starts as its behaviours' routed sum in the item
                 space and learns what to add (on small real logs the item space is most of the signal)
    training     label-aware attention picks the interests that explain the target item t:
                     v_u = V_u softmax(p * V_u^T e_t)
                 (the paper writes softmax(pow(V_u^T e_t, p)); raising the softmax weights to the power p
                 and renormalising is exactly softmax(p * scores), which stays defined for negative inner
                 products: p -> 0 averages the interests, p -> inf picks the best one.)
                 loss = sampled softmax of v_u . e_t against S negatives drawn from the item corpus, each
                 logit corrected by - log Q(item) (Jean et al. 2015; the TensorFlow sampled_softmax_loss).
                 With `attend_negatives` (the default) every negative c is scored the same way, by the
                 user vector its own attention builds, V_u softmax(p * V_u^T e_c) . e_c. The paper scores
                 the negatives with the target's v_u, so an interest the target did not pick is never
                 told to keep away from negatives; yet serving takes every item's best interest, and
                 those unchecked interests fill the list with junk. Attending the negatives makes the
                 training logits the serving scores (exactly so as p grows). K = 1 is unchanged.
    serving      V_u in one forward pass; each interest queries the item index by inner product.

The item tower is used for the behaviours, the targets, the negatives and the index alike: one
embedding space. The side-information codes live in the tower as a buffer, so the user tower takes
only item codes and profile codes and exports as one program.

    >>> model = MINDModel(n_items=100, side_codes=np.zeros((100, 0), np.int64), side_sizes=[],
    ...                   profile_sizes=[3, 8, 5, 6], dim=8, interests=2, max_len=10)
    >>> v, mask, triggers = model.user(torch.randint(1, 100, (4, 10)), torch.zeros(4, 4, dtype=torch.int64))
    >>> v.shape, mask.shape
    (torch.Size([4, 2, 8]), torch.Size([4, 2]))

Notation: B users, L behaviour slots, D dimensions, K interests, F profile fields, S negatives, N items.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from homefeed.recall.mind.routing import CapsuleRouting


def _table(rows: int, dim: int, std: float) -> nn.Embedding:
    table = nn.Embedding(max(rows, 1), dim, padding_idx=0)
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class ItemTower(nn.Module):
    """Item code -> mean of its id embedding and its side-information embeddings (unknown side value 0 adds zeros).

    Args:
        side_codes: (N, m) int64 side-information codes per item code (see `graph.eges.side_information`).
        side_sizes: rows of each side field's table.
    """

    def __init__(self, n_items: int, side_codes: np.ndarray, side_sizes: list[int], dim: int, *, init_std: float = 0.05):
        super().__init__()
        if side_codes.shape != (n_items, len(side_sizes)):
            raise ValueError(f"side codes of shape {side_codes.shape}, expected ({n_items}, {len(side_sizes)})")
        self.ids = _table(n_items, dim, init_std)
        self.sides = nn.ModuleList(_table(size, dim, init_std) for size in side_sizes)
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(side_codes, np.int64)))

    def forward(self, items: Tensor) -> Tensor:
        """(...) int64 item codes -> (..., D) float32."""
        out = self.ids(items)
        for j, table in enumerate(self.sides):
            out = out + table(self.codes[items, j])
        return out / (1 + len(self.sides))


class UserTower(nn.Module):
    """Behaviours + profile -> K interest vectors (B, K, D) and their mask (B, K): MIND's multi-interest extractor.

    Args:
        items: the shared ItemTower.
        profile_sizes: rows of each profile field's table (F fields).
        hidden: widths of the ReLU layers after [capsule; profile]; a last linear layer maps to D.
    """

    def __init__(self, items: ItemTower, profile_sizes: list[int], *, dim: int, interests: int, max_len: int,
                 profile_dim: int = 8, hidden: tuple[int, ...] = (128,), iterations: int = 3, sigma: float = 1.0,
                 pooled: bool = False, residual: bool = False, start: str = "random", seed: int = 0):
        super().__init__()
        self.items, self.max_len, self.residual = items, max_len, residual
        self.profile = nn.ModuleList(_table(size, profile_dim, 0.05) for size in profile_sizes)
        self.routing = CapsuleRouting(dim, interests, max_len, iterations=iterations, sigma=sigma, pooled=pooled,
                                      start=start, seed=seed)
        layers, width = [], dim + profile_dim * len(profile_sizes)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, dim))
        if residual:  # interest = capsule + MLP: starts as the routed mean of the behaviours, in the item space
            with torch.no_grad():
                self.routing.bilinear.weight.copy_(torch.eye(dim))
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    def encode(self, behaviors: Tensor, profile: Tensor, logits: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(interests (B, K, D), routing weights (B, L, K), mask (B, K) bool) from item codes (B, L) (0 = padding)
        and profile codes (B, F); `logits` (B, L, K) are the routing's starting logits (None: its own draw).
        Interests past K'_u are zero vectors."""
        real = behaviors > 0  # (B, L)
        capsules, weights, mask = self.routing(self.items(behaviors), real, logits)  # (B, K, D), (B, L, K), (B, K)
        parts = [table(profile[:, f]) for f, table in enumerate(self.profile)]  # F x (B, P)
        x = capsules
        if parts:
            prof = torch.cat(parts, 1).unsqueeze(1).expand(-1, capsules.shape[1], -1)  # (B, K, F P)
            x = torch.cat([capsules, prof], 2)
        interests = self.mlp(x) + capsules if self.residual else self.mlp(x)
        interests = interests * mask.unsqueeze(2).to(capsules.dtype)  # (B, K, D)
        return interests, weights, mask

    def forward(self, behaviors: Tensor, profile: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The served and exported program: (interests (B, K, D) float32, mask (B, K) bool, triggers (B, K) int64),
        a trigger being the behaviour (item code) each interest drew most routing weight from, 0 if none."""
        interests, weights, mask = self.encode(behaviors, profile)
        best, slot = weights.max(dim=1)  # (B, K): the largest weight of each interest and its slot
        triggers = torch.where(best > 0, torch.gather(behaviors, 1, slot), torch.zeros_like(slot))
        return interests, mask, triggers


def label_aware_attention(interests: Tensor, mask: Tensor, target: Tensor, power: float) -> Tensor:
    """(B, D) user vector: interests (B, K, D) weighted by softmax(power * interests . target), masked (B, K)."""
    scores = torch.bmm(interests, target.unsqueeze(2)).squeeze(2)  # (B, K)
    weights = torch.softmax((power * scores).masked_fill(~mask, float("-inf")), dim=1)  # (B, K)
    return torch.bmm(weights.unsqueeze(1), interests).squeeze(1)


def attended_scores(interests: Tensor, mask: Tensor, candidates: Tensor, power: float) -> Tensor:
    """(B, C) label-aware scores of C candidates (C, D) shared by the batch: each candidate is scored by the user
    vector its own attention builds, softmax(power * V_u^T e_c) . V_u^T e_c (power -> inf: the best interest's score)."""
    scores = torch.einsum("bkd,cd->bkc", interests, candidates)  # (B, K, C)
    weights = torch.softmax((power * scores).masked_fill(~mask.unsqueeze(2), float("-inf")), dim=1)  # (B, K, C)
    return (weights * scores).sum(1)


def sampled_softmax_loss(user: Tensor, target: Tensor, target_ids: Tensor, target_logq: Tensor,
                         negatives: Tensor, negative_ids: Tensor, negative_logq: Tensor) -> Tensor:
    """Mean sampled-softmax cross entropy with the log Q correction and accidental hits removed.

    Args:
        user: (B, D) user vectors; target: (B, D) target item vectors; target_ids, target_logq: (B,).
        negatives: (S, D) vectors of S negatives shared by the batch; negative_ids, negative_logq: (S,).
    """
    return sampled_softmax_from_scores((user * target).sum(1), target_ids, target_logq, user @ negatives.T,
                                       negative_ids, negative_logq)


def sampled_softmax_from_scores(pos: Tensor, target_ids: Tensor, target_logq: Tensor, neg: Tensor,
                                negative_ids: Tensor, negative_logq: Tensor) -> Tensor:
    """The same loss from the scores: pos (B,) of the targets, neg (B, S) of the shared negatives."""
    pos = pos - target_logq  # (B,)
    neg = neg - negative_logq.unsqueeze(0)  # (B, S)
    neg = neg.masked_fill(negative_ids.unsqueeze(0) == target_ids.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], 1)  # (B, 1 + S)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.int64))


class MINDModel(nn.Module):
    """The item tower, the user tower and the training loss of MIND (K = 1 gives the YouTube-DNN-style baseline).

    Attributes:
        items: ItemTower, shared by behaviours, targets, negatives and the serving index.
        user: UserTower, the exported program.
    """

    def __init__(self, *, n_items: int, side_codes: np.ndarray, side_sizes: list[int], profile_sizes: list[int],
                 dim: int = 64, interests: int = 4, max_len: int = 30, profile_dim: int = 8,
                 hidden: tuple[int, ...] = (128,), iterations: int = 3, sigma: float = 1.0, power: float = 2.0,
                 attend_negatives: bool = True, pooled: bool = False, residual: bool = False, start: str = "random",
                 seed: int = 0):
        super().__init__()
        if power < 0:
            raise ValueError(f"label-aware attention power must be >= 0, got {power}")
        self.power, self.attend_negatives = power, attend_negatives
        self.items = ItemTower(n_items, side_codes, side_sizes, dim)
        self.user = UserTower(self.items, profile_sizes, dim=dim, interests=interests, max_len=max_len,
                              profile_dim=profile_dim, hidden=tuple(hidden), iterations=iterations, sigma=sigma,
                              pooled=pooled and interests > 1, residual=residual, start=start, seed=seed)

    def forward(self, behaviors: Tensor, profile: Tensor, targets: Tensor, target_logq: Tensor,
                negatives: Tensor, negative_logq: Tensor, routing_logits: Tensor | None = None) -> Tensor:
        """Training loss of a batch (a forward that returns the loss, so DDP can wrap the model): behaviours (B, L),
        profile (B, F), targets (B,), negatives (S,) item codes; `routing_logits` (B, L, K) the routing's starting
        logits (None: drawn from torch's global generator)."""
        interests, _, mask = self.user.encode(behaviors, profile, routing_logits)  # (B, K, D), (B, K)
        target = self.items(targets)  # (B, D)
        user = label_aware_attention(interests, mask, target, self.power)  # (B, D)
        if not self.attend_negatives:  # the paper: negatives scored by the user vector the target's attention built
            return sampled_softmax_loss(user, target, targets, target_logq, self.items(negatives), negatives, negative_logq)
        neg = attended_scores(interests, mask, self.items(negatives), self.power)  # (B, S)
        return sampled_softmax_from_scores((user * target).sum(1), targets, target_logq, neg, negatives, negative_logq)

    loss = forward

    def draw_routing(self, batch: int, generator: torch.Generator) -> Tensor:
        """(B, L, K) starting routing logits for a training batch of B samples, from `generator`."""
        return self.user.routing.draw_logits(batch, self.user.max_len, generator)

    @torch.no_grad()
    def item_vectors(self, *, batch: int = 65_536) -> np.ndarray:
        """(N, D) float32 item tower output of every item code (row 0, the unknown item, included)."""
        n = self.items.ids.weight.shape[0]
        return torch.cat([self.items(torch.arange(lo, min(lo + batch, n))) for lo in range(0, n, batch)]).numpy()
