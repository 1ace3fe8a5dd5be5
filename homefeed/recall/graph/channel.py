"""The graph-embedding recall channels: `deepwalk` (ids only) and `eges` (ids + side information).

fit: training events -> item graph -> walks -> skip-gram item vectors -> ANN index -> for every item
its `top_n` best items, as an `I2ITable`. recall: the same trigger expansion as Item-CF and Swing
(`I2IRecaller`), so the merge, evaluation and server treat it like any i2i channel.

Which items are "best" for item i (`similarity`):
- "context": the largest h_i . z_j, skip-gram's own score for "j turns up near i" (z the context
  vectors; their length carries j's popularity), stored as sigmoid(h_i . z_j). On the small synthetic shop this doubles HitRate@50
  over cosine (0.43 vs 0.21), so it is the default. Only items seen in walks have a z, so only they
  are candidates; every item with a vector (cold ones too) gets a row as a trigger.
- "cosine": the largest cosine of the items' similarity vectors (H + z for warm items, `embed.py`; the
  paper's cos(H_i, H_j) with `vectors="centre"`): symmetric, popularity-blind, long-tail heavy, and able
  to list cold items (side-information vectors) as candidates.

The EGES channel also has vectors for items nobody has clicked yet, from side information alone
(`eges.py`): a new item of a known brand and category gets neighbours from day one.

    >>> rec = EGES(settings=EGESSettings(walks={"walks_per_node": 5})).fit(ds)   # doctest: +SKIP
    >>> rec.recall(state, 50).items[:5]                                          # doctest: +SKIP
    >>> rec.vectors_.shape                                                       # (n_items, D)
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.loaded import UNKNOWN_RAW
from homefeed.recall.ann import AnnIndex, i2i_table
from homefeed.recall.graph.eges import Mode, side_information
from homefeed.recall.graph.embed import Embedding, PartitionSettings, embed_graph
from homefeed.recall.graph.graph import GraphSettings, build_graph
from homefeed.recall.graph.skipgram import Shard, TrainSettings
from homefeed.recall.graph.walks import WalkSettings
from homefeed.recall.i2i import I2IRecaller, TriggerSettings


class DeepWalkSettings(Section):
    """Graph, walks, training, partitioning, the ANN index and trigger expansion."""

    graph: GraphSettings = GraphSettings()
    walks: WalkSettings = WalkSettings()
    train: TrainSettings = TrainSettings()
    partition: PartitionSettings = PartitionSettings()
    ann_spec: str = "auto"  # faiss factory string ("Flat", "HNSW32", "IVF1024,Flat") or "auto"
    ann_params: str = ""  # faiss search parameters, e.g. "efSearch=128"
    top_n: int = Field(100, ge=1)  # neighbours kept per item in the i2i table
    similarity: Literal["context", "cosine"] = "context"  # h_i . z_j (skip-gram's own score) or cosine of `vectors`
    vectors: Literal["sum", "centre"] = "sum"  # what the cosine compares: H + z of warm items, or H alone (the paper's)
    # pick the training cycles (1..3) and EGES's side start (kappa or information gain) on held-out edges of the
    # training graph (`validation.py`); False: one cycle, train.side_measure and train.side_prior as given
    pick_on_validation: bool = True
    pick_max_edges: int = Field(1_000_000, ge=0)  # larger graphs train once as set: the pick costs 3-5 trainings
    triggers: TriggerSettings = TriggerSettings()


class EGESSettings(DeepWalkSettings):
    """DeepWalk's settings plus the side information."""

    mode: Literal["eges", "ges"] = "eges"  # learned per-item weights, or equal weights
    side_fields: list[str] | None = None  # items columns used; None = leaf, standard category (if any), brand, shop, price band
    price_bands: int = Field(5, ge=1)  # equal-frequency price bands within each leaf category


class DeepWalk(I2IRecaller):
    """Item vectors from walks on the session graph (ids only), recalled through their i2i table.

    Attributes (after fit or load):
        table_: I2ITable of each item's best items (see `similarity`).
        vectors_: (n_items, D) float32 unit similarity vectors (`Embedding.vectors`); zero rows have none.
        norms_: (n_items,) float32 their length before normalising (0 = no vector).
        centre_: (n_items, D) float32 raw centre vectors H (skip-gram's score is H . z).
        context_: (n_items, D) float32 context vectors z (zero rows: never in a walk).
        warm_: (n_items,) bool items that were in the training walks.
        log_: training counters (walk steps, pairs, words/s, loss per epoch).
    """

    name = "deepwalk"
    Settings = DeepWalkSettings
    mode: Mode = "deepwalk"
    ARRAYS = ("vectors_", "norms_", "context_", "warm_", "centre_")

    def __init__(self, *, settings: Section | None = None):
        super().__init__(settings=settings)
        self.vectors_ = self.norms_ = self.context_ = self.warm_ = self.centre_ = None
        self.log_: dict = {}

    def _side(self, dataset: Dataset):
        return None

    def embed(self, dataset: Dataset, *, shard: Shard | None = None) -> Embedding:
        """Train item vectors on the training part of `dataset` (no table, no index); `shard`: as one rank of
        data-parallel training (`homefeed.distributed.graph_train`)."""
        s = self.settings
        graph = build_graph(dataset.events_in("train"), dataset.n_items, settings=s.graph)
        return embed_graph(graph, self._side(dataset), mode=self.mode, walks=s.walks, train=s.train, partition=s.partition,
                           shard=shard, vectors=s.vectors, validate=s.pick_on_validation,
                           validate_max_edges=s.pick_max_edges)

    def fit(self, dataset: Dataset) -> "DeepWalk":
        return self.fit_embedding(self.embed(dataset))

    def fit_embedding(self, emb: Embedding) -> "DeepWalk":
        """Keep the trained vectors of `emb` and build the i2i table from them (what `fit` does after training)."""
        self.vectors_, self.norms_, self.warm_, self.log_ = emb.vectors, emb.norms, emb.warm, emb.log
        self.centre_ = emb.centre
        self.context_ = emb.context().copy()
        self.context_[~emb.warm] = 0.0
        self.table_ = self.build_table()
        return self

    def _fitted(self) -> None:
        if self.vectors_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(dataset) or load(path) first")

    def index(self) -> AnnIndex:
        """The ANN index over every item's unit vector (ids = item codes): cosine search, for request-time queries."""
        self._fitted()
        ids = np.flatnonzero(self.norms_ > 0)
        return AnnIndex.build(self.vectors_[ids], ids=ids, spec=self.settings.ann_spec, params=self.settings.ann_params)

    def context_index(self) -> AnnIndex:
        """The ANN index over the context vectors z of warm items: query with `centre_` H for skip-gram scores h . z."""
        self._fitted()
        ids = np.flatnonzero(self.warm_ & (self.norms_ > 0))
        ids = ids[ids > 0]
        return AnnIndex.build(self.context_[ids], ids=ids, spec=self.settings.ann_spec, params=self.settings.ann_params)

    def build_table(self):
        """The i2i table: a row for every item with a vector, neighbours by `settings.similarity`."""
        queries = np.flatnonzero(self.norms_ > 0)
        if self.settings.similarity == "cosine":
            index, x = self.index(), self.vectors_[queries]
        else:
            index, x = self.context_index(), self.centre_[queries]
        return i2i_table(index, x, queries, self.vectors_.shape[0], top_n=self.settings.top_n,
                         sigmoid=self.settings.similarity == "context")

    def with_similarity(self, similarity: Literal["context", "cosine"]) -> "DeepWalk":
        """A copy of this fitted channel whose table is rebuilt with `similarity` (no retraining)."""
        twin = copy.copy(self)
        twin.settings = self.settings.model_copy(update={"similarity": similarity})
        twin.table_ = twin.build_table()
        return twin

    def save(self, path: str | Path) -> None:
        """Write table.npz and settings.json (as every i2i channel) plus vectors.npz (the fitted arrays)."""
        super().save(path)
        with open(Path(path) / "vectors.npz", "wb") as f:
            np.savez(f, **{a.rstrip("_"): getattr(self, a) for a in self.ARRAYS})

    @classmethod
    def load(cls, path: str | Path) -> "DeepWalk":
        rec = super().load(path)
        if not (Path(path) / "vectors.npz").exists():
            raise FileNotFoundError(f"{path} holds no item vectors (vectors.npz); save a fitted {cls.__name__} there")
        with np.load(Path(path) / "vectors.npz", allow_pickle=False) as z:
            for a in cls.ARRAYS:
                if a.rstrip("_") not in z.files and a == "centre_":  # saved before H + z: vectors were H itself
                    rec.centre_ = z["vectors"] * z["norms"][:, None]
                    continue
                setattr(rec, a, z[a.rstrip("_")])
        return rec


class EGES(DeepWalk):
    """EGES (or GES) item vectors: ids mixed with side information; cold items from side information alone.

    Args:
        settings: EGESSettings.
        standard_categories: (n_items,) item code -> standard category code (0 = unknown), used as a side
            field when the items table has no `standard_category` column.
    """

    name = "eges"
    Settings = EGESSettings

    def __init__(self, *, settings: EGESSettings | None = None, standard_categories: np.ndarray | None = None):
        super().__init__(settings=settings)
        self.standard_categories = standard_categories

    @property
    def mode(self) -> Mode:
        return self.settings.mode

    def _side(self, dataset: Dataset):
        items = dataset.items
        if self.standard_categories is not None and "standard_category" not in items.columns:
            codes = np.asarray(self.standard_categories, np.int64)
            ids = items["item_id"].to_numpy()
            items = items.with_columns(standard_category=pl.Series(np.where(ids < codes.size, codes[np.minimum(ids, codes.size - 1)], 0)))
        return side_information(unknown_as_zero(items, dataset), dataset.n_items, fields=self.settings.side_fields,
                                n_price_bands=self.settings.price_bands)


def unknown_as_zero(items: pl.DataFrame, dataset: Dataset) -> pl.DataFrame:
    """`items` with the code of the raw "not recorded" id (UNKNOWN_RAW: a log without brands or shops) set to 0,
    so side information treats it as unknown rather than as one brand shared by every such item."""
    out = []
    for name, vocab in dataset.vocabs.items():
        code = vocab.code_of(UNKNOWN_RAW) if name in items.columns and name != "item_id" else 0
        if code > 0:
            out.append(pl.when(pl.col(name) == code).then(0).otherwise(pl.col(name)).cast(items[name].dtype).alias(name))
    return items.with_columns(out) if out else items
