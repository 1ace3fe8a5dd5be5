"""The `mind` and `mind1` recall channels: K interest vectors per request, each searched in the item index.

fit: training events -> samples (`samples.py`) -> MIND trained with label-aware attention and sampled
softmax (`model.py`, `train.py`) -> every item's vector from the item tower -> an inner-product ANN
index (`recall.ann.AnnIndex`). recall: the user's behaviour list at request time (`UserState`) ->
the user tower's K'_u interests in one forward pass (K'_u's shift picked on the validation days: a log of
short histories serves fewer, `interests.py`) -> each interest queries the index, and the lists
are interleaved with a quota per interest in proportion to the behaviours it explains (`merge_interests`,
"quota"; merged on raw scores, one interest took most slots), items the user bought are dropped, and
the user's other history is served as the validation days said pays on this log (`history.py`: as
scored, dropped, or first; on a Taobao log nearly every hit is a repeat, on movie ratings none is).
`recall_with_interests` also says which interest recalled each item; the candidate's trigger is
the behaviour that interest drew most of its routing weight from ("because you viewed t").

`mind1` is the same code with K = 1: one vector per user from pooled behaviours, the YouTube-DNN
style baseline the paper compares against. On the small synthetic shop (default settings, 8,397 test
users) both beat Item-CF and EGES by far (HitRate@50 mind 0.63, mind1 0.65, itemcf 0.50, eges 0.40)
but MIND-4 does not beat MIND-1: its interest vectors are purer (a planted two-interest world is
recovered, `tests/test_mind_planted.py`), yet a user's last 30 behaviours hold ~1.8 of their ~2.7 true
interests and the extra vectors also chase one-off exploration sessions.

    >>> rec = MIND(settings=MINDSettings(train={"epochs": 1})).fit(ds)            # doctest: +SKIP
    >>> rows, interest = rec.recall_with_interests(state, 50)                     # doctest: +SKIP
    >>> rec.interests(state)[0].shape                                             # (K'_u, D)
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import UserState
from homefeed.recall.ann import AnnIndex
from homefeed.recall.base import Candidates, Recaller
from homefeed.recall.graph.eges import SideInfo, side_information
from homefeed.recall.mind import history
from homefeed.recall.mind.export import check_torchscript, export_torchscript, load_torchscript, trace
from homefeed.recall.mind.interests import InterestMerge, merge_interests, pick_shift
from homefeed.recall.mind.model import MINDModel
from homefeed.recall.mind.profile import ProfileVocab
from homefeed.recall.mind.samples import NegativeSampler, build_sequences, check_behaviors, state_behaviors
from homefeed.recall.mind.train import Parallel, TrainSettings, train_mind
from homefeed.recall.mind.validate import Validation, holdout_split
from homefeed.threads import torch_threads

log = logging.getLogger("homefeed.recall.mind")


class ModelSettings(Section):
    """The towers."""

    dim: int = Field(64, ge=2)  # D, item and interest vector size
    interests: int = Field(4, ge=1)  # K, the most interests per user (K'_u = max(1, min(K, log2 |I_u|)))
    max_len: int = Field(30, ge=1)  # L, behaviours read per user
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS))  # event types that are behaviours and labels
    side_fields: list[str] = Field(default_factory=lambda: ["leaf_category", "brand", "shop"])  # item columns pooled with the id
    profile_dim: int = Field(8, ge=1)  # size of each profile field's embedding
    hidden: list[int] = Field(default_factory=lambda: [128])  # ReLU layers after [capsule; profile]
    iterations: int = Field(3, ge=1)  # routing iterations
    routing_sigma: float = Field(1.0, gt=0)  # std of the initial routing logits
    routing_start: Literal["random", "farthest"] = "random"  # starting logits: random draws (the paper) or seeded by
    # the behaviours, farthest point from the newest (`routing.py`: on short histories the random start decides the split)
    power: float = Field(2.0, ge=0)  # p of label-aware attention: 0 averages the interests, large picks one
    attend_negatives: bool = True  # score negatives by their own label-aware attention (False: the target's, the paper)
    residual: bool = True  # interest = capsule + MLP([capsule; profile]), S = I and the MLP's last layer 0 at start
    pooled: bool = False  # with K > 1, one more interest pooled from every behaviour (the K = 1 capsule) before the routed ones
    seed: int = 0

    @field_validator("behaviors")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        check_behaviors(v)
        return v


class ServeSettings(Section):
    """The index and request-time filters."""

    ann_spec: str = "auto"  # faiss factory string ("Flat", "HNSW32", ...) or "auto" (Flat below 100k items)
    ann_params: str = ""  # faiss search parameters, e.g. "efSearch=128"
    keep_bought: bool = False  # keep items the user already bought (default: drop them)
    history: Literal["auto", "score", "drop", "first", "recent"] = "auto"  # items the user acted on: ranked as scored,
    # dropped, first (by score) or first (newest first); "auto": the best on the validation days, picked at fit (`history.py`)
    interest_merge: InterestMerge = "quota"  # how the interests' lists become one (see `merge_interests`)
    interest_shift: int | Literal["auto"] = "auto"  # served K'_u = max(1, min(K, floor(log2 |I_u|) - shift)); training
    # routes with 0 (the paper); "auto": the best on the validation days, picked at fit (`interests.py`)
    threads: int | None = Field(1, ge=1)  # torch threads of the calling thread during one request's forward pass; None = as is


    @field_validator("interest_shift")
    @classmethod
    def _shift(cls, v):
        if v != "auto" and v < 0:
            raise ValueError(f"interest_shift must be 'auto' or an integer >= 0, got {v}")
        return v


class MINDSettings(Section):
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()


class MIND1Settings(MINDSettings):
    """MINDSettings whose `model.interests` defaults to 1 (also when other model keys are given)."""

    model: ModelSettings = ModelSettings(interests=1)

    @field_validator("model", mode="before")
    @classmethod
    def _one_interest(cls, v):
        return {**v, "interests": v.get("interests", 1)} if isinstance(v, dict) else v


class MIND(Recaller):
    """MIND multi-interest recall.

    Attributes (after fit or load):
        model_: MINDModel in eval mode.
        tower_: the user tower traced to TorchScript (what requests run; checked against model_.user).
        profiles_: ProfileVocab turning a state's raw profile into codes.
        vectors_: (n_items, D) float32 item tower output per item code.
        index_: AnnIndex over the vectors of item codes >= 1.
        log_: training counters (samples, seconds, samples/s, loss per epoch).
    """

    name = "mind"
    Settings = MINDSettings

    def __init__(self, *, settings: MINDSettings | None = None):
        self.settings = settings if settings is not None else self.Settings()
        if not isinstance(self.settings, MINDSettings):
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__}, got {type(self.settings).__name__}")
        self.model_ = self.tower_ = self.profiles_ = self.vectors_ = self.index_ = None
        self.log_: dict = {}
        self.history_, self.history_scores_ = "score", {}  # the fitted "auto" history mode and its validation scores
        self.shift_, self.shift_scores_ = 0, {}  # the fitted "auto" interest shift and its validation scores

    def _build(self, n_items: int, side_codes: np.ndarray, side_sizes: list[int], profile_sizes: list[int]) -> MINDModel:
        m = self.settings.model
        torch.manual_seed(m.seed)
        return MINDModel(n_items=n_items, side_codes=side_codes, side_sizes=side_sizes, profile_sizes=profile_sizes,
                         dim=m.dim, interests=m.interests, max_len=m.max_len, profile_dim=m.profile_dim,
                         hidden=tuple(m.hidden), iterations=m.iterations, sigma=m.routing_sigma, power=m.power,
                         attend_negatives=m.attend_negatives, pooled=m.pooled, residual=m.residual,
                         start=m.routing_start, seed=m.seed)

    def fit(self, dataset: Dataset, *, progress=None, parallel: Parallel | None = None) -> "MIND":
        """Train on `dataset.events_in("train")`, stopping on HitRate of the validation days (`validate.py`);
        `progress(step, done, total)` is called during training; `parallel` shares it between data-parallel
        processes (`homefeed.distributed.mind_train`; None: this process alone).

        Without validation days the last `train.holdout` of the training events pick the epoch count, then the
        model is refitted on the whole training part for that many epochs."""
        t = self.settings.train
        if not t.early_stopping:
            return self._fit(dataset, None, progress, parallel)
        check = Validation.of(dataset, max_users=t.valid_users, k=t.valid_k, seed=t.seed)
        if check is not None:
            return self._fit(dataset, check, progress, parallel)
        inner = holdout_split(dataset, t.holdout)
        check = Validation.of(inner, max_users=t.valid_users, k=t.valid_k, seed=t.seed) if inner is not None else None
        if check is None:
            log.warning("%s: no user with a history acts in the validation part or the last %.0f%% of training; "
                        "training a fixed %d epochs", self.name, 100 * t.holdout, t.epochs)
            return self._fit(dataset, None, progress, parallel)
        holdout_log = self._fit(inner, check, progress, parallel).log_  # also picks the history mode
        self._fit(dataset, None, progress, parallel, epochs=holdout_log["best_epoch"])
        self.log_["holdout"] = holdout_log
        return self

    def _fit(self, dataset: Dataset, check: Validation | None, progress, parallel: Parallel | None = None, *,
             epochs: int | None = None) -> "MIND":
        """One training run on the training part: early stopping on `check` if given, else `epochs` (default: train.epochs)."""
        m, t = self.settings.model, self.settings.train
        seqs = build_sequences(dataset.events_in("train"), max_len=m.max_len, behaviors=tuple(m.behaviors),
                               max_samples_per_user=t.max_samples_per_user)
        n_items = dataset.n_items
        side = informative_sides(side_information(dataset.items, n_items, fields=m.side_fields))
        self.profiles_ = ProfileVocab.fit(dataset.users)
        self.model_ = self._build(n_items, side.codes, side.sizes, self.profiles_.sizes)
        self.tower_ = self.model_.user  # the eager tower answers validation requests; traced once trained
        sampler = NegativeSampler(seqs.counts(n_items), kind=t.sampler, power=t.unigram_power)
        profiles = self.profiles_.encode_users(dataset.users, max(dataset.n_users, 1))
        validate = (lambda: self._score(check)) if check is not None else None
        settings = t if epochs is None else t.model_copy(update={"epochs": epochs})
        self.log_ = train_mind(self.model_, seqs, profiles, sampler, settings=settings, progress=progress, validate=validate,
                               parallel=parallel)
        self._index()
        if check is not None:
            self._pick(check, parallel if parallel is not None else Parallel())
        self._serve_shift(self.model_, self.served_shift())
        self.tower_ = trace(self.model_.user, *example_inputs(self.model_.user, self.profiles_.sizes))
        return self

    def _pick(self, check: Validation, share: Parallel) -> None:
        """The "auto" serve choices on the validation queries: the history mode, then the interest shift (with
        K > 1), then the history mode again if the shift moved (the eager tower answers; traced afterwards)."""
        s = self.settings.serve

        def score(**serve) -> float:
            return share.score(lambda: check.score(self.with_serve(**serve), tie_break=True))

        def pick_history() -> None:
            if s.history == "auto":
                self.history_, self.history_scores_ = history.pick(lambda mode: score(history=mode))

        pick_history()
        shift = ""
        if s.interest_shift == "auto" and self.settings.model.interests > 1:
            self.shift_, self.shift_scores_ = pick_shift(lambda v: score(interest_shift=v), max_len=self.settings.model.max_len)
            self._serve_shift(self.model_, self.shift_)
            shift = f", interest shift {self.shift_} (validation HitRate@{check.k} {self.shift_scores_})"
            if self.shift_ != 0:
                pick_history()
        if s.history == "auto" or shift:
            log.info("%s: history mode %s (validation HitRate@%d %s)%s", self.name, self.history_, check.k,
                     self.history_scores_, shift)

    def served_shift(self) -> int:
        """The shift of K'_u requests are served with: the setting, or the one picked at fit when "auto"."""
        s = self.settings.serve.interest_shift
        return self.shift_ if s == "auto" else int(s)

    @staticmethod
    def _serve_shift(model: MINDModel, shift: int) -> None:
        model.user.routing.shift.fill_(float(shift))

    def _score(self, check: Validation) -> float:
        """The validation score of the model as it is now: its item vectors indexed, its tower answering."""
        self._index()
        return check.score(self, head_weight=self.settings.train.valid_head_weight)

    def _index(self) -> None:
        self.vectors_ = self.model_.item_vectors()
        ids = np.arange(1, self.vectors_.shape[0])
        s = self.settings.serve
        self.index_ = AnnIndex.build(self.vectors_[ids], ids=ids, spec=s.ann_spec, params=s.ann_params)

    def _fitted(self) -> None:
        if self.model_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(dataset) or load(path) first")

    def inputs(self, state: UserState) -> tuple[torch.Tensor, torch.Tensor]:
        """The user tower's inputs for one state: (behaviours (1, L) int64, profile (1, F) int64)."""
        m = self.settings.model
        behaviors = state_behaviors(state, max_len=m.max_len, behaviors=tuple(m.behaviors))
        return torch.from_numpy(behaviors[None]), torch.from_numpy(self.profiles_.encode(state.profile)[None])

    @torch.inference_mode()
    def interests(self, state: UserState) -> tuple[np.ndarray, np.ndarray]:
        """(interest vectors (K'_u, D) float32, trigger (K'_u,) int32: the behaviour each drew most weight from, -1 if none)."""
        self._fitted()
        with torch_threads(self.settings.serve.threads):  # one user's tensors are tiny: a parallel region costs more than it saves
            vectors, mask, triggers = self.tower_(*self.inputs(state))  # (1, K, D), (1, K), (1, K)
        k_u = int(mask.sum())
        triggers = triggers[0, :k_u].numpy().astype(np.int32)
        return vectors[0, :k_u].numpy(), np.where(triggers > 0, triggers, -1).astype(np.int32)

    def recall_with_interests(self, state: UserState, k: int) -> tuple[Candidates, np.ndarray]:
        """(candidates, interest (n,) int64): the index of the interest vector that scores each candidate best."""
        self._fitted()
        vectors, triggers = self.interests(state)
        mode = self.history_ if self.settings.serve.history == "auto" else self.settings.serve.history
        bought = state.recent(behaviors=("buy",)) if not self.settings.serve.keep_bought else np.zeros(0, np.int32)
        seen = np.unique(state.items) if mode != "score" else np.zeros(0, np.int32)
        exclude = np.union1d(bought, seen) if bought.size or seen.size else None
        how = self.settings.serve.interest_merge
        weights = self.interest_weights(state, vectors) if how == "quota" else None
        rows = merge_interests(self.index_, vectors, k, channel=self.name, exclude=exclude, how=how, weights=weights)
        if mode == "first":
            rows = history.history_first(rows, np.setdiff1d(seen, bought), self.vectors_, vectors, k)
        elif mode == "recent":
            newest = history.newest_first(state.items)
            rows = history.history_first(rows, newest[~np.isin(newest, bought)], self.vectors_, vectors, k, by="given")
        if len(rows) == 0:
            return rows, np.zeros(0, np.int64)
        interest = (self.vectors_[rows.items] @ vectors.T).argmax(1)  # (n,)
        return Candidates(rows.items, rows.scores, triggers[interest], self.name), interest

    def interest_weights(self, state: UserState, vectors: np.ndarray) -> np.ndarray:
        """(K'_u,) float64: 1 + how many of the user's behaviours each interest explains best (inner product of the
        behaviour's item vector with the interest), the attention the user gives it; the "quota" merge's weights."""
        m = self.settings.model
        behaviors = state_behaviors(state, max_len=m.max_len, behaviors=tuple(m.behaviors))
        behaviors = behaviors[behaviors > 0]
        if behaviors.size == 0 or len(vectors) == 0:
            return np.ones(len(vectors))
        best = (self.vectors_[behaviors] @ vectors.T).argmax(1)
        return 1.0 + np.bincount(best, minlength=len(vectors)).astype(np.float64)

    def with_serve(self, **changes) -> "MIND":
        """A copy of this fitted channel with other serve settings (same model and index when the index spec is kept;
        a copy of the model, its tower traced anew, when the interest shift changes)."""
        twin = copy.copy(self)
        twin.settings = self.settings.model_copy(update={"serve": ServeSettings(**{**self.settings.serve.model_dump(), **changes})})
        if {"ann_spec", "ann_params"} & set(changes) and self.vectors_ is not None:
            twin._index()
        if self.model_ is not None and twin.served_shift() != int(self.model_.user.routing.shift):
            twin.model_ = copy.deepcopy(self.model_)
            self._serve_shift(twin.model_, twin.served_shift())
            twin.tower_ = trace(twin.model_.user, *example_inputs(twin.model_.user, self.profiles_.sizes))
        return twin

    def recall(self, state: UserState, k: int) -> Candidates:
        return self.recall_with_interests(state, k)[0]

    def save(self, path: str | Path) -> None:
        """Write settings.json, meta.json (table sizes, profile vocabulary, training log), model.npz (weights),
        vectors.npz (item vectors), index/ (faiss) and user_tower.pt (TorchScript, checked against the model)."""
        self._fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "settings.json").write_text(json.dumps(self.settings.model_dump(), indent=1))
        items = self.model_.items
        meta = {"n_items": int(items.ids.weight.shape[0]), "side_sizes": [int(t.weight.shape[0]) for t in items.sides],
                "profile": json.loads(self.profiles_.to_json()), "log": self.log_,
                "history": self.history_, "history_scores": self.history_scores_,
                "interest_shift": self.shift_, "interest_shift_scores": self.shift_scores_}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))
        with open(path / "model.npz", "wb") as f:
            np.savez(f, **{k: v.detach().numpy() for k, v in self.model_.state_dict().items()})
        with open(path / "vectors.npz", "wb") as f:
            np.savez(f, vectors=self.vectors_)
        self.index_.save(path / "index")
        behaviors, profile = example_inputs(self.model_.user, self.profiles_.sizes)
        export_torchscript(self.model_.user, behaviors, profile, path / "user_tower.pt", traced=self.tower_)

    @classmethod
    def load(cls, path: str | Path) -> "MIND":
        path = Path(path)
        if not (path / "model.npz").exists():
            raise FileNotFoundError(f"{path} holds no MIND model (model.npz); save a fitted {cls.__name__} there")
        rec = cls(settings=cls.Settings.model_validate_json((path / "settings.json").read_text()))
        meta = json.loads((path / "meta.json").read_text())
        rec.profiles_ = ProfileVocab.from_json(json.dumps(meta["profile"]))
        with np.load(path / "model.npz", allow_pickle=False) as z:
            state = {k: torch.from_numpy(z[k]) for k in z.files}
        state.setdefault("user.routing.shift", torch.zeros(()))  # saved before the served shift existed: the paper's K'_u
        rec.model_ = rec._build(meta["n_items"], state["items.codes"].numpy(), meta["side_sizes"], rec.profiles_.sizes)
        rec.model_.load_state_dict(state)
        rec.model_.eval()
        check_torchscript(rec.model_.user, path / "user_tower.pt", *example_inputs(rec.model_.user, rec.profiles_.sizes))
        rec.tower_ = load_torchscript(path / "user_tower.pt")
        with np.load(path / "vectors.npz", allow_pickle=False) as z:
            rec.vectors_ = z["vectors"]
        rec.index_ = AnnIndex.load(path / "index")
        rec.log_ = meta.get("log", {})
        rec.history_, rec.history_scores_ = meta.get("history", "score"), meta.get("history_scores", {})
        rec.shift_, rec.shift_scores_ = meta.get("interest_shift", 0), meta.get("interest_shift_scores", {})
        return rec


class MIND1(MIND):
    """MIND with one interest (K = 1): the single-vector, YouTube-DNN-style baseline from the same code."""

    name = "mind1"
    Settings = MIND1Settings


def informative_sides(side: SideInfo) -> SideInfo:
    """The side fields that tell items apart. A field with one value for every item (a log with no brands or
    shops codes them all as one placeholder) would only add a shared vector to every item and dilute its id."""
    keep = [j for j in range(len(side.names)) if np.unique(side.codes[:, j][side.codes[:, j] > 0]).size > 1]
    return SideInfo(side.codes[:, keep], [side.sizes[j] for j in keep], [side.names[j] for j in keep])


def example_inputs(tower, profile_sizes: list[int], n: int = 8, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of n random users for tracing and checks: behaviours (n, L) with 0..L real slots, profile codes (n, F)."""
    g = torch.Generator().manual_seed(seed)
    n_items, length = tower.items.ids.weight.shape[0], tower.max_len
    behaviors = torch.randint(1, max(n_items, 2), (n, length), generator=g)
    real = torch.arange(length).flip(0).unsqueeze(0) < torch.linspace(0, length, n).long().unsqueeze(1)
    profile = torch.stack([torch.randint(0, size, (n,), generator=g) for size in profile_sizes], 1) if profile_sizes \
        else torch.zeros(n, 0, dtype=torch.int64)
    return behaviors * real, profile
