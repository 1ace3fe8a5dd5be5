"""One composable CTR model: the classic rankers are presets of the same `RankModel`.

The seed system keeps LR, WDL, DeepFM, PNN, NFM, DCN, DCN-V2, DeepResNet, DIN and BST in one
framework ("Union-DeepModel"); here too a new model is a new `ModelConfig`, not a new file of copies.
Blocks live in `blocks.py` (fields) and `blocks_sequence.py` (behaviour sequences).

    >>> model = build_model(spec, "deepfm", embed_dim=8)       # a preset with an override
    >>> model = RankModel(spec, ModelConfig(sequence="bst", cross="v2", deep="mlp"))  # BST + cross
    >>> logits = model(batch)                                  # (B,) float32; sigmoid -> CTR

Structural mistakes (a product layer without a deep tower, DIN on a spec without sequences, an
unknown key) raise ValueError when the model is built, never deep in training.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from homefeed.config import Section
from homefeed.rank.blocks import FM, MLP, BiInteraction, CrossNet, FieldEmbedding, InnerProduct, OuterProduct, ResidualMLP, Wide
from homefeed.rank.blocks_sequence import BST, MeanPool, TargetAttention
from homefeed.rank.first_layer import FieldLookupLinear
from homefeed.rank.spec import FeatureSpec


EMBED_STD = 0.05  # field embeddings' init std (ModelConfig.embed_std None) ...
FM_EMBED_STD = 0.01  # ... and with the FM term, whose pair sum turns a large init into logit noise


class ModelConfig(Section):
    """The blocks a RankModel assembles and their sizes; any combination that reaches the logit is legal."""

    embed_dim: int = Field(16, ge=1)  # D: width of every field embedding
    # std of the field embeddings' normal init; None: FM_EMBED_STD when the FM term reads them, else EMBED_STD.
    # Why smaller with FM: its logit term sums P = F(F-1)/2 products of random vectors, ~std^2 sqrt(P D) of init
    # noise (0.11 logit at 0.05, F=16, D=16) that one epoch's few lazy updates per rare code never unlearn
    # (benchmarks/rank.py, 500k rows, 2 seeds: DeepFM test AUC .6065 at 0.05, .6133 at 0.01, deepctr-torch .6129;
    # DeepFM without its FM term .6137). The cross network wants the larger init (DCN .6153 at 0.05, .6107 at 0.01):
    # its cross terms are x0-scaled, so a small x0 slows them. DeepFM's test AUC at 0.01 vs 0.05, mean over seeds:
    # tiny shop .8320 vs .8302 (2 seeds), Taobao tail .8105 vs .8083 (3 seeds; its valid AUC .760 vs .779).
    embed_std: float | None = Field(None, gt=0.0)
    linear: bool = False  # wide term: one weight per code + a linear map of the dense values
    fm: bool = False  # factorisation machine second-order term
    cross: Literal["v1", "v2"] | None = None  # cross network on the flat input, beside the deep tower
    cross_layers: int = Field(3, ge=1)
    product: Literal["inner", "outer"] | None = None  # PNN product layer, fed to the deep tower
    bi_interaction: bool = False  # NFM bi-interaction pool, fed to the deep tower
    deep: Literal["mlp", "resnet"] | None = None  # deep tower
    deep_fields: bool = True  # feed the flat input x to the deep tower (NFM: False, only the pool)
    hidden: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)  # MLP widths; resnet: width hidden[0], a unit each
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    sequence: Literal["mean", "din", "bst"] | None = None  # behaviour sequence block
    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1)  # DIN activation unit
    heads: int = Field(2, ge=1)  # BST attention heads (must divide E = S * D)
    transformer_layers: int = Field(1, ge=1)  # BST
    ffn_dim: int = Field(128, ge=1)  # BST feed-forward width
    sparse_grad: bool = False  # embedding tables give sparse gradients (train them with SparseAdam/Adagrad)

    @model_validator(mode="after")
    def _check_structure(self):
        deep_x = self.deep is not None and self.deep_fields
        if not (self.linear or self.fm or self.cross or self.deep):
            raise ValueError("nothing reaches the logit: enable at least one of linear, fm, cross, deep")
        for name in ("product", "bi_interaction"):
            if getattr(self, name) and self.deep is None:
                raise ValueError(f"{name} feeds the deep tower: set deep='mlp' or 'resnet'")
        if self.deep is not None and not (self.deep_fields or self.product or self.bi_interaction):
            raise ValueError("the deep tower gets no input: set deep_fields=True, product or bi_interaction")
        if self.sequence is not None and not (deep_x or self.cross):
            raise ValueError(f"sequence={self.sequence!r} output reaches the logit only through the deep tower "
                             "(with deep_fields=True) or the cross network")
        return self


class RankModel(nn.Module):
    """A CTR model assembled from blocks; `forward(batch) -> logits (B,)`.

    Notation: B batch, F sparse fields, D embedding dim, Dn dense values, L sequence length,
    S sequence fields, E = S * D token width, P = F(F-1)/2 field pairs, K = F * D + Dn (+ E) flat width.

        e     = embedding(sparse)                                  (B, F, D)
        s     = sequence(target token, history tokens, gaps)       (B, E)   history: (B, L, S) or (1, L, S)
        x     = [flatten(e), dense, s]                             (B, K)
        logit = bias + wide(sparse, dense) + fm(e) + head([cross(x), deep([x, product(e), bi(e)])])
        out   = logit * calibration[0] + calibration[1]                     (B,)  Platt scaling, fitted after training

    One user's request may pass its history once, `seq` (1, L, S) and `seq_gap` (1, L), for all B rows:
    in eval mode the user-side sequence work is then done once (same logits as the history repeated).

    Attributes: spec, config, input_names (the batch keys the model reads, in export order).
    """

    def __init__(self, spec: FeatureSpec, config: ModelConfig | None = None):
        super().__init__()
        c = self.config = config if config is not None else ModelConfig()
        self.spec = spec
        n_fields, d, n_dense = len(spec.sparse), c.embed_dim, len(spec.dense)
        vocab = [f.vocab_size for f in spec.sparse]
        if c.sequence is not None and not spec.sequence:
            raise ValueError(f"sequence={c.sequence!r} needs sequence fields in the feature spec; it has none")
        self.n_dense = n_dense
        only_wide = not (c.fm or c.cross or c.deep)  # LR reads no field embeddings: no table, no lookup
        self.embedding = FieldEmbedding(vocab, d, sparse=c.sparse_grad, std=self._embed_std(c)) if not only_wide else None
        self.wide = Wide(vocab, n_dense, sparse=c.sparse_grad) if c.linear else None
        self.fm = FM() if c.fm else None
        self.sequence = self._sequence_block(spec, c)
        if self.sequence is not None:
            self.register_buffer("seq_offsets", self.embedding.offsets[spec.target_indices].clone(), persistent=False)
            self.register_buffer("target_fields", torch.tensor(spec.target_indices), persistent=False)
        width = n_fields * d + n_dense + (len(spec.sequence) * d if self.sequence is not None else 0)  # K
        products = {"inner": lambda: InnerProduct(n_fields), "outer": lambda: OuterProduct(n_fields, d)}
        self.product = products[c.product]() if c.product else None
        self.bi = BiInteraction() if c.bi_interaction else None
        deep_in = width * c.deep_fields + (self.product.n_pairs if self.product else 0) + (d if self.bi else 0)
        tower = {"mlp": MLP, "resnet": ResidualMLP}.get(c.deep or "")
        self.deep = tower(deep_in, c.hidden, dropout=c.dropout) if tower else None
        self.cross = CrossNet(width, c.cross_layers, version=c.cross) if c.cross else None
        head_in = (self.cross.out_dim if self.cross else 0) + (self.deep.out_dim if self.deep else 0)
        self.head = nn.Linear(head_in, 1, bias=False) if head_in else None
        self._small_fields(vocab, c)
        self._train_small_fields(vocab, c, deep_in)
        self.bias = nn.Parameter(torch.zeros(1))
        # (scale, shift) applied to the final logit: identity while training, then fitted on the validation
        # part (Platt scaling, `train.calibrate`) so predicted CTRs match observed rates; ranking is unchanged
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        self.input_names = ["sparse"] + ["dense"] * (n_dense > 0) + ["seq"] * (c.sequence is not None) + ["seq_gap"] * (c.sequence == "bst")

    def _small_fields(self, vocab: list[int], c: ModelConfig) -> None:
        """Buffers for the eval-mode deep tower's first layer by field (`deep_first_layer`): fields of at most
        SMALL_VOCAB codes (`small`, their table rows padded to the largest such vocabulary) and the others (`large`)."""
        small = [i for i, v in enumerate(vocab) if v <= SMALL_VOCAB] if self.deep is not None and c.deep_fields else []
        self.small_batch = 2 * max((vocab[i] for i in small), default=0)  # the bmm pays for itself from here
        width = max((vocab[i] for i in small), default=1)
        rows = [[int(self.embedding.offsets[i]) + min(j, vocab[i] - 1) for j in range(width)] for i in small]
        self.register_buffer("small", torch.tensor(small, dtype=torch.int64), persistent=False)  # (S,)
        self.register_buffer("large", torch.tensor([i for i in range(len(vocab)) if i not in small], dtype=torch.int64),
                             persistent=False)
        self.register_buffer("small_rows", torch.tensor(rows, dtype=torch.int64).reshape(len(small), width), persistent=False)
        self.register_buffer("small_base", torch.arange(len(small), dtype=torch.int64) * width, persistent=False)

    def _train_small_fields(self, vocab: list[int], c: ModelConfig, deep_in: int) -> None:
        """Buffers for the training-mode first layer by code (`first_layer.FieldLookupLinear`): the fields of at most
        TRAIN_SMALL_VOCAB codes, their codes on one grid of slots (`train_sizes` per field, from `train_base`) with the
        table row of each slot (`train_rows`), and the first layer's columns of those fields (`train_small_cols`) and
        of the rest (`train_rest_cols`: the large fields, then the tail)."""
        d = c.embed_dim
        small = [i for i, v in enumerate(vocab) if v <= TRAIN_SMALL_VOCAB] if self.deep is not None and c.deep_fields else []
        self.train_sizes = [vocab[i] for i in small]
        self.train_min_rows = 2 * max(self.train_sizes, default=0)  # smaller batches take the plain Linear
        rows = [int(self.embedding.offsets[i]) + j for i in small for j in range(vocab[i])]
        large = [i for i in range(len(vocab)) if i not in small]
        cols = lambda fields: [f * d + k for f in fields for k in range(d)]  # noqa: E731
        self.register_buffer("train_small", torch.tensor(small, dtype=torch.int64), persistent=False)  # (S,)
        self.register_buffer("train_large", torch.tensor(large, dtype=torch.int64), persistent=False)
        self.register_buffer("train_rows", torch.tensor(rows, dtype=torch.int64), persistent=False)  # (sum V_s,)
        base = [sum(self.train_sizes[:s]) for s in range(len(small))]
        self.register_buffer("train_base", torch.tensor(base, dtype=torch.int64), persistent=False)  # (S,)
        self.register_buffer("train_small_cols", torch.tensor(cols(small), dtype=torch.int64), persistent=False)
        rest = cols(large) + list(range(len(vocab) * d, deep_in)) if small else []
        self.register_buffer("train_rest_cols", torch.tensor(rest, dtype=torch.int64), persistent=False)

    @staticmethod
    def _embed_std(c: ModelConfig) -> float:
        """The field embeddings' init std: the config's, else by whether the FM term multiplies them (ModelConfig.embed_std)."""
        return c.embed_std if c.embed_std is not None else FM_EMBED_STD if c.fm else EMBED_STD

    @staticmethod
    def _sequence_block(spec: FeatureSpec, c: ModelConfig) -> nn.Module | None:
        dim = len(spec.sequence) * c.embed_dim  # E
        if c.sequence == "mean":
            return MeanPool()
        if c.sequence == "din":
            return TargetAttention(dim, c.attention_hidden)
        if c.sequence == "bst":
            if dim % c.heads:
                raise ValueError(f"BST token width E = {len(spec.sequence)} sequence fields x embed_dim {c.embed_dim} = {dim} "
                                 f"is not divisible by heads={c.heads}")
            return BST(dim, n_gap_buckets=spec.n_gap_buckets, heads=c.heads, n_layers=c.transformer_layers,
                       ffn_dim=c.ffn_dim, dropout=c.dropout)
        return None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.embedding is None:  # LR
            logit = self.bias + self.wide(batch["sparse"], *self._dense(batch))
        else:
            e, by_code = self._embed(batch["sparse"])  # (B, F, D)
            tail = self._dense(batch) + self._pool_sequence(batch, e)  # x = [flatten(e), *tail]
            terms = self._shallow(batch, e) + self._over(e, tail, by_code, batch["sparse"])  # [(B,), ...]
            logit = self.bias + torch.stack(terms).sum(dim=0)  # (B,)
        return logit * self.calibration[0] + self.calibration[1]

    def _embed(self, sparse: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """e (B, F, D), and in training with small fields (`first_layer`) (e_read, read, slots): the slots of
        the small fields' code grid the batch reads, looked up in the same call as e (one sparse gradient for the table)."""
        if not (self.training and self.train_small.numel() > 0 and sparse.size(0) >= self.train_min_rows):
            return self.embedding(sparse), None
        n, n_fields = sparse.shape
        slots = sparse.index_select(1, self.train_small) + self.train_base  # (B, S)
        read = torch.bincount(slots.reshape(-1), minlength=self.train_rows.numel()).nonzero().squeeze(1)  # (R,)
        codes = torch.cat([(sparse + self.embedding.offsets).reshape(-1), self.train_rows.index_select(0, read)])
        looked = self.embedding.table(codes)  # (B * F + R, D)
        return looked[: n * n_fields].reshape(n, n_fields, -1), (looked[n * n_fields :], read, slots)

    def _dense(self, batch: dict[str, Tensor]) -> list[Tensor]:
        return [batch["dense"]] if self.n_dense else []  # [(B, Dn)]

    def _pool_sequence(self, batch: dict[str, Tensor], e: Tensor) -> list[Tensor]:
        """[the sequence block's (B, E) vector]; the target token is the target fields' embeddings.

        batch["seq"] is (B, L, S), or (1, L, S) when every row is the same user (a serving request):
        then the history is embedded, and its target-free part encoded, once (`blocks_sequence`).
        """
        if self.sequence is None:
            return []
        seq = batch["seq"]  # (U, L, S), U = B or 1
        keys = self.embedding.lookup(seq, self.seq_offsets).flatten(2)  # (U, L, E)
        query = e[:, self.target_fields].flatten(1)  # (B, E)
        gaps = batch["seq_gap"] if "seq_gap" in self.input_names else seq[..., 0]  # only BST reads the gaps
        pooled = self.sequence(query, keys, gaps, seq[..., 0] > 0)  # a step is real <=> its first field != 0
        return [pooled.expand(e.size(0), -1)]  # (B, E); MeanPool of a shared history gives (1, E)

    def _shallow(self, batch: dict[str, Tensor], e: Tensor) -> list[Tensor]:
        """[wide(sparse, dense), fm(e)] for the enabled terms, each (B,)."""
        wide = [self.wide(batch["sparse"], *self._dense(batch))] if self.wide is not None else []
        return wide + ([self.fm(e)] if self.fm is not None else [])

    def _over(self, e: Tensor, tail: list[Tensor], by_code: tuple[Tensor, Tensor, Tensor] | None, sparse: Tensor) -> list[Tensor]:
        """[head([cross(x), deep([x, product(e), bi(e)])])] -> [(B,)], or [] without cross and deep; x = [flatten(e), *tail]."""
        plain = self.deep is not None and by_code is None and (self.training or not self.config.deep_fields or self.small.numel() == 0)
        x = torch.cat([e.flatten(1)] + tail, dim=1) if self.cross is not None or (plain and self.config.deep_fields) else None
        parts = [self.cross(x)] if self.cross is not None else []
        if self.deep is not None:
            extra = [m(e) for m in (self.product, self.bi) if m is not None]
            if by_code is not None:  # training: the small fields' part of the first layer by code (same function, less work)
                first, (e_read, read, slots) = self.deep.first_layer(), by_code
                x_rest = torch.cat([e.index_select(1, self.train_large).flatten(1)] + tail + extra, dim=1)
                h = FieldLookupLinear.apply(e_read, first.weight, first.bias, x_rest, slots, read, self.train_sizes,
                                            self.train_small_cols, self.train_rest_cols)
                parts.append(self.deep.after_first(h))
            elif plain:
                parts.append(self.deep(torch.cat([x] * self.config.deep_fields + extra, dim=1)))  # x: (B, K)
            else:  # eval: the small fields' part of the first layer by lookup (same function, a third of the work)
                first = self.deep.first_layer()
                tail = torch.cat(tail + extra, dim=1) if tail or extra else e.new_zeros(e.size(0), 0)  # [dense, sequence, product, bi]
                lookup, w_large_t = self._first_layer_tables(first)
                h = deep_first_layer(e, tail, sparse, first.weight, first.bias, self.small, self.large,
                                     self.small_base, lookup, w_large_t, self.small_batch)
                parts.append(self.deep.after_first(h))
        return [self.head(torch.cat(parts, dim=1)).squeeze(-1)] if parts else []

    def _first_layer_tables(self, first: nn.Module) -> tuple[Tensor, Tensor]:
        """The eval-mode first layer's weight-only parts: the small fields' lookup (S * V, H), every code's W_f e_f,
        and the large fields' + tail's weight transposed (K', H). They read the weights only (shapes from the spec,
        not the batch), so a frozen TorchScript export (`torch.jit.freeze`, as `serve.ranker` loads it) folds them
        into constants once instead of building them on every call."""
        weight, n_fields, dim = first.weight, len(self.spec.sparse), self.config.embed_dim
        width = weight.size(0)
        head = weight[:, : n_fields * dim].reshape(width, n_fields, dim)  # (H, F, D)
        lookup = torch.bmm(self.embedding.table.weight[self.small_rows], head.index_select(1, self.small).permute(1, 2, 0))
        w_large = torch.cat([head.index_select(1, self.large).reshape(width, -1), weight[:, n_fields * dim:]], 1)
        return lookup.reshape(-1, width).contiguous(), w_large.t().contiguous()

    def embedding_rows(self, batch: dict[str, Tensor]) -> list[tuple[nn.Embedding, Tensor]]:
        """[(table, rows)]: the rows of each embedding table this batch reads, repeats kept (M,) int64.

        What `train.RowPenalty` regularises: field codes, the real sequence steps, the wide weights.
        """
        sparse = batch["sparse"]  # (B, F)
        out = []
        if self.embedding is not None:
            rows = [(sparse + self.embedding.offsets).reshape(-1)]
            if self.sequence is not None:
                seq = batch["seq"]  # (B, L, S)
                rows.append((seq + self.seq_offsets)[seq[..., 0] > 0].reshape(-1))
            out.append((self.embedding.table, torch.cat(rows)))
        if self.wide is not None:
            out.append((self.wide.weights.table, (sparse + self.wide.weights.offsets).reshape(-1)))
        return out

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (sparse gradients when config.sparse_grad); the rest is `dense_parameters`."""
        tables = [self.embedding] if self.embedding is not None else []
        tables += [self.wide.weights] if self.wide is not None else []
        return [t.table.weight for t in tables]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


_MLP = {"deep": "mlp"}
TRAIN_SMALL_VOCAB = 512  # fields with at most this many codes enter the training-mode deep tower by code (`first_layer`)
SMALL_VOCAB = 64  # fields with at most this many codes enter the eval-mode deep tower by lookup (`deep_first_layer`)


@torch.jit.script_if_tracing  # the branch on the batch size stays a branch in a TorchScript trace
def deep_first_layer(e: Tensor, tail: Tensor, sparse: Tensor, weight: Tensor, bias: Tensor, small: Tensor, large: Tensor,
                     base: Tensor, lookup: Tensor, w_large_t: Tensor, min_rows: int) -> Tensor:
    """The deep tower's first Linear on [flatten(e), tail] (B, H), computed by field in eval mode.

    A field of V codes contributes W_f e_f, one of only V vectors: for the small fields these are
    precomputed per model (`RankModel._first_layer_tables`: lookup (S * V, H)), then summed per row by
    lookup (`embedding_bag`); the GEMM keeps the large fields and the tail (w_large_t (K', H)). Serving
    500 candidates of the small shop's DIN, 22 of 27 fields are small (profile, context, cross counts):
    the layer's multiply-adds fall from 60M to about 23M. Same function as the plain Linear (float
    rounding aside); batches under `min_rows` take the plain Linear.
    """
    n, n_fields, dim = e.shape
    if small.numel() == 0 or n < min_rows:
        return torch.nn.functional.linear(torch.cat([e.reshape(n, n_fields * dim), tail], 1), weight, bias)
    out = torch.nn.functional.embedding_bag(sparse.index_select(1, small) + base, lookup, mode="sum")
    x_large = torch.cat([e.index_select(1, large).reshape(n, large.numel() * dim), tail], 1)  # (B, K')
    return torch.addmm(out + bias, x_large, w_large_t)


PRESETS: dict[str, ModelConfig] = {
    "lr": ModelConfig(linear=True),
    "wdl": ModelConfig(linear=True, **_MLP),  # Wide & Deep, Cheng et al. 2016
    "deepfm": ModelConfig(linear=True, fm=True, **_MLP),  # Guo et al. 2017
    "pnn": ModelConfig(product="inner", **_MLP),  # IPNN, Qu et al. 2016
    "nfm": ModelConfig(linear=True, bi_interaction=True, deep_fields=False, **_MLP),  # He & Chua 2017
    "dcn": ModelConfig(cross="v1", **_MLP),  # Wang et al. 2017
    "dcnv2": ModelConfig(cross="v2", **_MLP),  # Wang et al. 2021
    "deepresnet": ModelConfig(deep="resnet"),  # Deep Crossing residual units, Shan et al. 2016
    "din": ModelConfig(sequence="din", **_MLP),  # Zhou et al. 2018
    "bst": ModelConfig(sequence="bst", **_MLP),  # Chen et al. 2019
}


def model_config(preset: str, **overrides) -> ModelConfig:
    """The preset's config with overrides applied; unknown presets or keys raise ValueError naming them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    unknown = [k for k in overrides if k not in ModelConfig.model_fields]
    if unknown:
        raise ValueError(f"unknown model setting {unknown[0]!r}; valid settings: {', '.join(ModelConfig.model_fields)}")
    return ModelConfig.model_validate(PRESETS[preset].model_dump() | overrides)


def build_model(spec: FeatureSpec, preset: str, **overrides) -> RankModel:
    """`RankModel(spec, model_config(preset, **overrides))`."""
    return RankModel(spec, model_config(preset, **overrides))
