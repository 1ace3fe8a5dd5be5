"""Field-level building blocks of the ranking model: embeddings, shallow interactions, deep towers.

Every classic CTR model is a combination of a few parts over the same field embeddings
(Zhang et al., "Deep Learning for Click-Through Rate Estimation", 2021, draws the family tree):

    FieldEmbedding  all sparse fields in ONE table, field f's code c at row offsets[f] + c
    Wide            per-code weights + a linear map of the dense values (LR; the "wide" of WDL)
    FM              second-order factorisation machine term (Rendle 2010; DeepFM, Guo 2017)
    BiInteraction   the FM pool kept as a vector (NFM, He & Chua 2017)
    InnerProduct    <e_i, e_j> for every field pair (PNN, Qu et al. 2016)
    OuterProduct    e_i^T W_ij e_j, a kernel per field pair (PNN's kernel product, Qu et al. 2018)
    CrossNet        explicit bounded-degree crosses (DCN, Wang 2017; DCN-V2, Wang 2021)
    MLP             the deep tower
    ResidualMLP     residual units (Deep Crossing, Shan et al. 2016; "DeepResNet")

Notation: B batch, F sparse fields, D embedding dim, P = F(F-1)/2 field pairs, K input width.
Ids stay int64 from the batch to the table (DeepCTR-Torch casts them to float: wrong past 2^24).
One table and one lookup serve all fields, so no forward pass loops over fields in Python.

    >>> emb = FieldEmbedding([5, 3], 4)                 # field 0: codes 0..4, field 1: codes 0..2
    >>> emb(torch.tensor([[4, 2]])).shape               # rows 4 and 5 + 2 of the shared table
    torch.Size([1, 2, 4])
    >>> FM()(torch.ones(1, 3, 4)).item()                # 3 pairs x <1, 1> over 4 dims
    12.0
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FieldEmbedding(nn.Module):
    """One embedding table for all sparse fields; per-field offsets place each vocabulary.

    Parameters: vocab_sizes, one per field (codes 0..n-1, 0 = unknown); dim D; sparse=True makes the
    table produce sparse gradients (train it with SparseAdam or Adagrad: only looked-up rows move).
    Attributes: weight (sum(vocab_sizes), D) float32; offsets (F,) int64 first row of each field.
    """

    def __init__(self, vocab_sizes: list[int], dim: int, *, sparse: bool = False, std: float = 0.05):
        super().__init__()
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"every field needs a vocabulary of at least 1 code; got sizes {vocab_sizes}")
        sizes = torch.tensor(vocab_sizes, dtype=torch.int64)
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)  # (F,)
        self.table = nn.Embedding(int(sizes.sum()), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=std)

    def forward(self, codes: Tensor) -> Tensor:
        """(B, F) int64 codes of all fields -> (B, F, D)."""
        return self.table(codes + self.offsets)

    def lookup(self, codes: Tensor, offsets: Tensor) -> Tensor:
        """(..., k) codes of the k fields whose offsets are given (k,) -> (..., k, D); e.g. sequences."""
        return self.table(codes + offsets)


class Wide(nn.Module):
    """Linear term: one weight per sparse code plus a linear map of the dense values -> (B,).

    The per-code weights are a FieldEmbedding of width 1, so LR costs one lookup too.
    """

    def __init__(self, vocab_sizes: list[int], n_dense: int, *, sparse: bool = False):
        super().__init__()
        self.weights = FieldEmbedding(vocab_sizes, 1, sparse=sparse, std=0.01)
        self.dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        if self.dense is not None:  # LR starts at the bias alone, as logistic regression does (not at a random tilt)
            nn.init.zeros_(self.dense.weight)

    def forward(self, sparse: Tensor, dense: Tensor | None = None) -> Tensor:
        """sparse (B, F) int64, dense (B, Dn) float32 (None when Dn = 0) -> (B,)."""
        out = self.weights(sparse).sum(dim=(1, 2))  # (B,)
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(-1)
        return out


def _pair_pool(e: Tensor) -> Tensor:
    """sum_{i<j} e_i * e_j in O(F D): half of (sum e)^2 - sum e^2.  (B, F, D) -> (B, D)."""
    return 0.5 * (e.sum(dim=1).square() - e.square().sum(dim=1))


class FM(nn.Module):
    """Factorisation machine second-order term sum_{i<j} <e_i, e_j>.  (B, F, D) -> (B,)."""

    def forward(self, e: Tensor) -> Tensor:
        return _pair_pool(e).sum(dim=-1)


class BiInteraction(nn.Module):
    """NFM's bi-interaction pooling: the FM pairs kept per dimension.  (B, F, D) -> (B, D)."""

    def forward(self, e: Tensor) -> Tensor:
        return _pair_pool(e)


class _FieldPairs(nn.Module):
    """Index buffers rows, cols (P,) of the field pairs i < j."""

    def __init__(self, n_fields: int):
        super().__init__()
        if n_fields < 2:
            raise ValueError(f"a product layer needs at least 2 sparse fields; got {n_fields}")
        rows, cols = torch.triu_indices(n_fields, n_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.n_pairs = rows.numel()


class InnerProduct(_FieldPairs):
    """PNN inner products <e_i, e_j> for all field pairs.  (B, F, D) -> (B, P)."""

    def forward(self, e: Tensor) -> Tensor:
        return (e[:, self.rows] * e[:, self.cols]).sum(dim=-1)


class OuterProduct(_FieldPairs):
    """PNN kernel product e_i^T W_ij e_j, one (D, D) kernel per field pair.  (B, F, D) -> (B, P)."""

    def __init__(self, n_fields: int, dim: int):
        super().__init__(n_fields)
        self.kernel = nn.Parameter(torch.empty(self.n_pairs, dim, dim))  # (P, D, D)
        nn.init.xavier_uniform_(self.kernel)

    def forward(self, e: Tensor) -> Tensor:
        left = torch.einsum("bpd,pde->bpe", e[:, self.rows], self.kernel)  # (B, P, D)
        return (left * e[:, self.cols]).sum(dim=-1)


class CrossNet(nn.Module):
    """Cross network on the flat input x0 (B, K) -> (B, K); each layer raises the cross degree by one.

    v1 (DCN):    x_{l+1} = x0 * (x_l . w_l) + b_l + x_l      (a vector w_l per layer: 2K parameters)
    v2 (DCN-V2): x_{l+1} = x0 * (W_l x_l + b_l) + x_l        (a matrix W_l per layer: K^2 + K)
    """

    def __init__(self, width: int, n_layers: int, *, version: str = "v2"):
        super().__init__()
        if version not in ("v1", "v2"):
            raise ValueError(f"cross network version {version!r}; valid: v1, v2")
        if n_layers < 1:
            raise ValueError(f"a cross network needs at least one layer; got {n_layers}")
        self.version, self.out_dim = version, width
        if version == "v1":
            self.w = nn.Parameter(torch.randn(n_layers, width) / width**0.5)  # (n, K)
            self.b = nn.Parameter(torch.zeros(n_layers, width))  # (n, K)
            self.layers = nn.ModuleList()
        else:
            self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        if self.version == "v1":
            for w, b in zip(self.w, self.b):
                x = x0 * (x @ w).unsqueeze(-1) + b + x  # (B, K)
        else:
            for layer in self.layers:
                x = x0 * layer(x) + x  # (B, K)
        return x


class MLP(nn.Sequential):
    """Deep tower: Linear -> ReLU (-> Dropout) per entry of `hidden`.  (B, K) -> (B, hidden[-1])."""

    def __init__(self, in_dim: int, hidden: list[int], *, dropout: float = 0.0):
        if not hidden:
            raise ValueError("an MLP needs at least one hidden layer width")
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            in_dim = width
        super().__init__(*layers)
        self.out_dim = hidden[-1]

    def first_layer(self) -> nn.Module:
        """The first Linear (its weight and bias let a caller compute its output by parts)."""
        return self[0]

    def after_first(self, h: Tensor) -> Tensor:
        """The tower's output from the first Linear's output h."""
        for layer in list(self)[1:]:
            h = layer(h)
        return h


class ResidualUnit(nn.Module):
    """Deep Crossing residual unit: x -> relu(x + W2 relu(W1 x)).  (B, W) -> (B, W)."""

    def __init__(self, width: int, inner: int, *, dropout: float = 0.0):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, inner), nn.ReLU(), nn.Linear(inner, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.dropout(self.inner(x)))


class ResidualMLP(nn.Module):
    """Residual deep tower: project to width hidden[0], then one residual unit per entry of `hidden`
    (its inner width).  (B, K) -> (B, hidden[0])."""

    def __init__(self, in_dim: int, hidden: list[int], *, dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("a residual MLP needs at least one unit width")
        self.project = nn.Linear(in_dim, hidden[0])
        self.units = nn.Sequential(*(ResidualUnit(hidden[0], inner, dropout=dropout) for inner in hidden))
        self.out_dim = hidden[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.after_first(self.project(x))

    def first_layer(self) -> nn.Module:
        return self.project

    def after_first(self, h: Tensor) -> Tensor:
        return self.units(torch.relu(h))
