"""Early stopping for MIND: the channel's own HitRate@K on the validation days, scored as `evaluate_recall` scores it.

A fixed epoch count cannot fit every log: the small synthetic shop (hundreds of thousands of samples)
is best after two epochs, a Taobao log of a hundred users (6,700 events, 13 batches an epoch) is still
below popularity after two and needs about sixty. So training stops on the metric the channel is
judged by: after every epoch the channel recalls for (a seeded sample of) the users who act in the
validation part, from their state at its start, and HitRate@K against the items they acted on there
is the score (`homefeed.recall.evaluate.relevant_items`, `as_matrix`, `evaluate.metrics.topk_metrics`:
the code `evaluate_recall` runs).

A dataset without validation days (a bundle fits on everything before the test days) gets one from
its own training part: `holdout_split` moves the last `share` of the training days' events into a
validation part; the channel finds its epoch count there and then refits on the whole training part.

    >>> check = Validation.of(ds, max_users=1000, k=50)              # doctest: +SKIP
    >>> check.score(channel)                                         # HitRate@50 of channel.recall_batch
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.user_state import UserState, states_at
from homefeed.evaluate.metrics import topk_metrics


@dataclass
class Validation:
    """The validation queries: users' states at the start of the part and the items they acted on in it."""

    states: list[UserState]
    relevant: list[np.ndarray]
    k: int

    @classmethod
    def of(cls, dataset: Dataset, *, max_users: int, k: int, part: str = "valid", seed: int = 0) -> "Validation | None":
        """Queries of `part`, or None when no user with a history before it acts in it (nothing to score)."""
        from homefeed.recall.evaluate import relevant_items  # here, not at the top: recall.evaluate imports the channel table

        start, _ = dataset.split.bounds(part)
        users, relevant = relevant_items(dataset, part)
        states = states_at(dataset.events, dataset.users, start, user_ids=users) if users.size and start is not None else []
        keep = [i for i, s in enumerate(states) if s.items.size]
        if not keep:
            return None
        if len(keep) > max_users:
            keep = np.sort(np.random.default_rng(seed).choice(keep, max_users, replace=False)).tolist()
        return cls([states[i] for i in keep], [relevant[i] for i in keep], k)

    def score(self, channel, *, tie_break: bool = False, head_weight: float = 0.0) -> float:
        """(1 - head_weight) HitRate@k + head_weight HitRate@max(1, k // 5) of `channel.recall_batch` over the queries
        (default: HitRate@k alone); with `tie_break`, plus 1e-6 x HitRate@max(1, k // 5), so two lists equal at k are
        told apart by their heads (the term is below one user's share of up to 1M users)."""
        from homefeed.recall.evaluate import as_matrix

        if not 0.0 <= head_weight <= 1.0:
            raise ValueError(f"head_weight must be in [0, 1], got {head_weight}")
        lists = as_matrix(channel.recall_batch(self.states, self.k), self.k)
        head = max(1, self.k // 5)
        got = topk_metrics(lists, self.relevant, tuple(sorted({self.k, head})))
        at_k, at_head = float(got[f"hitrate@{self.k}"]), float(got[f"hitrate@{head}"])
        return (1.0 - head_weight) * at_k + head_weight * at_head + (1e-6 * at_head if tie_break else 0.0)


def holdout_split(dataset: Dataset, share: float) -> Dataset | None:
    """The dataset with the last `share` of its training events (by time) as the validation part; None if that is empty."""
    ts = np.sort(dataset.events_in("train")["ts"].to_numpy())
    if ts.size < 2 or not 0 < share < 1:
        return None
    cut = int(ts[int(ts.size * (1 - share))])
    if cut <= ts[0]:
        return None
    return dataclasses.replace(dataset, split=TimeSplit(cut, dataset.split.train_end))
