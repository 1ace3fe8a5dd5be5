"""The graph-embedding recall channels: `deepwalk` (ids only) and `eges` (ids + side information).

fit: training events -> item graph -> walks -> skip-gram item vectors -> ANN index -> for every item
its `top_n` nearest items by cosine, as an `I2ITable`. recall: the same trigger expansion as Item-CF
and Swing (`I2IRecaller`), so the merge, evaluation and server treat it like any i2i channel.

The EGES channel also fills rows for items nobody has clicked yet: their vectors come from side
information alone (`eges.py`), so a new item of a known brand and category is recalled from day one.

    >>> rec = EGES(settings=EGESSettings(walks={"walks_per_node": 5})).fit(ds)   # doctest: +SKIP
    >>> rec.recall(state, 50).items[:5]                                          # doctest: +SKIP
    >>> rec.vectors_.shape                                                       # (n_items, D)
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.recall.ann import AnnIndex, i2i_table
from homefeed.recall.graph.eges import Mode, side_information
from homefeed.recall.graph.embed import Embedding, PartitionSettings, embed_graph
from homefeed.recall.graph.graph import GraphSettings, build_graph
from homefeed.recall.graph.skipgram import TrainSettings
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
    triggers: TriggerSettings = TriggerSettings()


class EGESSettings(DeepWalkSettings):
    """DeepWalk's settings plus the side information."""

    mode: Literal["eges", "ges"] = "eges"  # learned per-item weights, or equal weights
    side_fields: list[str] | None = None  # items columns used; None = leaf, standard category (if any), brand, shop, price band
    price_bands: int = Field(5, ge=1)  # equal-frequency price bands within each leaf category


class DeepWalk(I2IRecaller):
    """Item vectors from walks on the session graph (ids only), recalled through their i2i table.

    Attributes (after fit or load):
        table_: I2ITable of each item's nearest items by cosine.
        vectors_: (n_items, D) float32 unit vectors; zero rows have none.
        warm_: (n_items,) bool items that were in the training walks.
        log_: training counters (walk steps, pairs, words/s, loss per epoch).
    """

    name = "deepwalk"
    Settings = DeepWalkSettings
    mode: Mode = "deepwalk"

    def __init__(self, *, settings: Section | None = None):
        super().__init__(settings=settings)
        self.vectors_: np.ndarray | None = None
        self.warm_: np.ndarray | None = None
        self.log_: dict = {}

    def _side(self, dataset: Dataset):
        return None

    def embed(self, dataset: Dataset) -> Embedding:
        """Train item vectors on the training part of `dataset` (no table, no index)."""
        s = self.settings
        graph = build_graph(dataset.events_in("train"), dataset.n_items, settings=s.graph)
        return embed_graph(graph, self._side(dataset), mode=self.mode, walks=s.walks, train=s.train, partition=s.partition)

    def fit(self, dataset: Dataset) -> "DeepWalk":
        emb = self.embed(dataset)
        self.vectors_, self.warm_, self.log_ = emb.vectors, emb.warm, emb.log
        self.table_ = self.build_table()
        return self

    def index(self) -> AnnIndex:
        """The ANN index over every item that has a vector (ids = item codes)."""
        if self.vectors_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(dataset) or load(path) first")
        ids = np.flatnonzero(np.any(self.vectors_ != 0, axis=1))
        return AnnIndex.build(self.vectors_[ids], ids=ids, spec=self.settings.ann_spec, params=self.settings.ann_params)

    def build_table(self):
        index = self.index()
        return i2i_table(index, self.vectors_[index.ids], index.ids, self.vectors_.shape[0], top_n=self.settings.top_n)

    def save(self, path: str | Path) -> None:
        """Write table.npz and settings.json (as every i2i channel) plus vectors.npz (vectors, warm)."""
        super().save(path)
        with open(Path(path) / "vectors.npz", "wb") as f:
            np.savez(f, vectors=self.vectors_, warm=self.warm_)

    @classmethod
    def load(cls, path: str | Path) -> "DeepWalk":
        rec = super().load(path)
        if not (Path(path) / "vectors.npz").exists():
            raise FileNotFoundError(f"{path} holds no item vectors (vectors.npz); save a fitted {cls.__name__} there")
        with np.load(Path(path) / "vectors.npz", allow_pickle=False) as z:
            rec.vectors_, rec.warm_ = z["vectors"], z["warm"]
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
        return side_information(items, dataset.n_items, fields=self.settings.side_fields,
                                n_price_bands=self.settings.price_bands)
