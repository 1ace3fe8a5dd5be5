"""Sequence blocks: turn the user's behaviour sequence into one vector, given the target item.

All three share one signature, so the model can swap them:

    block(query (B, E), keys (U, L, E), gaps (U, L) int64, mask (U, L) bool) -> (B, E)  (MeanPool: (U, E))

query is the target item's token (its item id, category... embeddings concatenated, E = S * D),
keys the tokens of the last L behaviours (oldest first), gaps their time-gap buckets before the
sample time, and mask is True at real steps, False at padding. Padded steps never change the result.

U is B (a sequence per row, as in training) or 1: at serving every row of a request is the same
user, so the sequence is passed once and broadcast. In eval mode the blocks then do the user-side
work once per request instead of once per candidate: the key projections (DIN's C k, BST's K/V of
the behaviour tokens with their position embeddings), with the same result. Only what does not
depend on the target is shared: DIN's activation unit and BST's attention row of the target token
are still per candidate. (BST with several layers is not shared: there the behaviour tokens of the
first layer attend to the target, so later layers' behaviour tokens differ per candidate.)

    MeanPool         the average of the real steps (the YouTube DNN / WDL+Seq baseline)
    TargetAttention  DIN (Zhou et al., KDD 2018): an activation unit scores each step against the
                     target; the weighted SUM (not softmax) keeps the intensity of the interest
    BST              Behaviour Sequence Transformer (Chen et al., Alibaba, DLP-KDD 2019): the target is
                     appended to the sequence, each token gets a time-gap position embedding, then
                     multi-head self-attention and a feed-forward net, each with residual + layer norm;
                     the target token's output is the result

    >>> keys, mask = torch.ones(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])
    >>> MeanPool()(keys[:, 0], keys, torch.zeros(2, 3, dtype=torch.long), mask).shape
    torch.Size([2, 4])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MeanPool(nn.Module):
    """Average of the real sequence steps; zeros for an empty sequence.  -> (B, E)."""

    def forward(self, query: Tensor, keys: Tensor, gaps: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(keys.dtype)  # (B, L, 1)
        return (keys * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class TargetAttention(nn.Module):
    """DIN: weight_t = MLP([q, k_t, q - k_t, q * k_t]); output = sum_t weight_t * k_t.  -> (B, E).

    The first layer of the activation unit is linear in [q, k, q - k, q * k], so it is computed as
    A q + C k + G (q * k): the query part once per row instead of once per step (same function,
    half the work). PReLU activations as in the paper.
    """

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        if not hidden:
            raise ValueError("DIN's activation unit needs at least one hidden layer width")
        self.query = nn.Linear(dim, hidden[0])  # A: [q, q] parts of [q, k, q - k, q * k]
        self.key = nn.Linear(dim, hidden[0], bias=False)  # C
        self.product = nn.Linear(dim, hidden[0], bias=False)  # G
        layers: list[nn.Module] = [nn.PReLU()]
        for a, b in zip(hidden, hidden[1:]):
            layers += [nn.Linear(a, b), nn.PReLU()]
        self.score = nn.Sequential(*layers, nn.Linear(hidden[-1], 1))

    def forward(self, query: Tensor, keys: Tensor, gaps: Tensor, mask: Tensor) -> Tensor:
        if self.training:
            q = query.unsqueeze(1)  # (B, 1, E)
            h = self.query(q) + self.key(keys) + self.product(q * keys)  # (B, L, H)
            w = self.score(h).squeeze(-1) * mask.to(keys.dtype)  # (B, L), 0 at padding
            return torch.bmm(w.unsqueeze(1), keys).squeeze(1)  # (B, E)
        h, keys, mask = _first_layer(query, keys, mask, self.query.weight, self.query.bias, self.key.weight, self.product.weight)
        w = self.score(h).squeeze(-1) * mask.to(keys.dtype)  # (B, L'), 0 at padding
        return torch.einsum("bl,ble->be", w, keys)  # U = 1: one (B, L') x (L', E) product, keys never repeated


@torch.jit.script_if_tracing  # the branch on U stays a branch in a TorchScript trace
def _first_layer(query: Tensor, keys: Tensor, mask: Tensor, a: Tensor, a_bias: Tensor, c: Tensor, g: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """DIN's first activation layer A q + b + C k + G (q * k) in eval mode -> (h (B, L', H), keys (U, L', E),
    weight (U, L') float: 1/0 for real/padded steps, or how often a step repeats in one user's history).

    One user's history (U = 1) for B > 1 targets: only its real steps are kept (padding weighs 0
    anyway), and the layer is one (B, E) x (E, L' H) product whose bias holds the user-side part:
    h[b, l] = q_b (A^T + diag(k_l) G^T) + (C k_l + b), so neither q * k (B, L, E) nor the two
    (B, L, H) sums are built. Per-row histories (U = B) take the plain formula.
    """
    if keys.size(0) == 1 and query.size(0) > 1:
        real = torch.nonzero(mask[0]).squeeze(1)  # (L',)
        k, counts = torch.unique(keys[0].index_select(0, real), dim=0, return_counts=True)  # (L'', E): a repeated step once
        weight = a.t().unsqueeze(0) + k.unsqueeze(-1) * g.t().unsqueeze(0)  # (L', E, H)
        bias = torch.nn.functional.linear(k, c) + a_bias  # (L', H)
        n, width = k.size(0), a.size(0)
        h = torch.addmm(bias.reshape(-1), query, weight.permute(1, 0, 2).reshape(query.size(1), n * width))
        return h.view(query.size(0), n, width), k.unsqueeze(0), counts.unsqueeze(0).to(k.dtype)  # weight x count
    q = query.unsqueeze(1)  # (B, 1, E)
    h = torch.nn.functional.linear(q, a, a_bias) + torch.nn.functional.linear(keys, c) + torch.nn.functional.linear(q * keys, g)
    return h, keys, mask.to(keys.dtype)  # float in both branches (an ONNX If needs one type)


class TransformerLayer(nn.Module):
    """Post-norm transformer layer (as in BST): x = LN(x + MHSA(x)); x = LN(x + FFN(x)).

    x (B, T, E), real (B, T) bool: padded keys are masked out of every attention row.
    With last_only=True only the last position is computed as a query, (B, 1, E): exact when
    only the last token's output is used, and it makes a one-layer BST cost O(T) per row, not O(T^2).
    `attend_target` is the same last-only layer with the tokens before the last given once per user.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, *, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token width {dim} is not divisible by {heads} attention heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.LeakyReLU(), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, T, E) -> (B, H, T, E/H)

    def forward(self, x: Tensor, real: Tensor, last_only: bool = False) -> Tensor:
        xq = x[:, -1:] if last_only else x  # (B, Tq, E)
        k, v = self.kv(x).chunk(2, dim=-1)  # (B, T, E) each
        att = F.scaled_dot_product_attention(
            self._split(self.q(xq)), self._split(k), self._split(v),
            attn_mask=real[:, None, None, :], dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, Tq, E/H)
        return self._after_attention(xq, att)

    def attend_target(self, target: Tensor, context: Tensor, real: Tensor) -> Tensor:
        """`forward(cat([context, target], 1), cat([real, True], 1), last_only=True)` without building that input.

        target (B, 1, E): the last token, one per row; context (U, L, E), real (U, L): the tokens before
        it, U = B or 1 (one user's behaviours shared by every row: their K/V are projected once).
        Eval only (no attention dropout). -> (B, 1, E).
        """
        q = self._split(self.q(target))  # (B, H, 1, d)
        k_t, v_t = (self._split(t) for t in self.kv(target).chunk(2, dim=-1))  # (B, H, 1, d) each
        k_c, v_c = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))  # (U, H, L, d) each
        scale = q.size(-1) ** -0.5
        # einsum, not matmul: a size-1 U is contracted as one (H, B, d) x (H, d, L) product, never expanded to B
        s_c = torch.einsum("bhqd,bhld->bhql", q, k_c).mul(scale)  # (B, H, 1, L)
        s_c = s_c.masked_fill(~real[:, None, None, :], float("-inf"))
        s_t = (q * k_t).sum(dim=-1, keepdim=True).mul(scale)  # (B, H, 1, 1): the target attends to itself
        p = torch.softmax(torch.cat([s_c, s_t], dim=-1), dim=-1)  # (B, H, 1, L + 1), the target is always real
        att = torch.einsum("bhql,bhld->bhqd", p[..., :-1], v_c) + p[..., -1:] * v_t  # (B, H, 1, d)
        return self._after_attention(target, att)

    def _after_attention(self, xq: Tensor, att: Tensor) -> Tensor:
        """Output projection, residual + norm, feed-forward, residual + norm.  att (B, H, Tq, d) -> (B, Tq, E)."""
        x = self.norm1(xq + self.out(att.transpose(1, 2).flatten(2)))  # (B, Tq, E)
        return self.norm2(x + F.dropout(self.ffn(x), self.dropout, self.training))


class BST(nn.Module):
    """Behaviour Sequence Transformer over [k_1 .. k_L, q] with time-gap position embeddings.  -> (B, E).

    Position of step t is its gap bucket (bucket 0 = padding); the target takes the extra bucket
    n_gap_buckets ("now"). Embeddings are added to the tokens. The result is the target's output.
    In eval mode a one-layer BST projects the behaviour tokens once per user (`attend_target`); in
    training, or with more layers, it runs the layers on the whole (B, L+1, E) token matrix.
    """

    def __init__(self, dim: int, *, n_gap_buckets: int, heads: int = 2, n_layers: int = 1, ffn_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"BST needs at least one transformer layer; got {n_layers}")
        self.now = n_gap_buckets
        self.position = nn.Embedding(n_gap_buckets + 1, dim)
        nn.init.normal_(self.position.weight, std=0.05)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, ffn_dim, dropout=dropout) for _ in range(n_layers))

    def forward(self, query: Tensor, keys: Tensor, gaps: Tensor, mask: Tensor) -> Tensor:
        if not self.training and len(self.layers) == 1:  # serving: behaviour tokens once per user
            context = keys + self.position(gaps)  # (U, L, E)
            target = (query + self.position.weight[self.now]).unsqueeze(1)  # (B, 1, E)
            return self.layers[0].attend_target(target, context, mask)[:, 0]  # (B, E)
        n = query.size(0)
        keys, gaps, mask = keys.expand(n, -1, -1), gaps.expand(n, -1), mask.expand(n, -1)  # a view when U = B
        tokens = torch.cat([keys, query.unsqueeze(1)], dim=1)  # (B, L+1, E)
        positions = torch.cat([gaps, torch.full_like(gaps[:, :1], self.now)], dim=1)  # (B, L+1)
        real = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, L+1), the target is real
        x = tokens + self.position(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, real, last_only=i == len(self.layers) - 1)
        return x[:, -1]  # (B, E)

