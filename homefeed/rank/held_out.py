"""Leave-one-out logs for ranking: each held-out event is sampled at its user's own time, not the split's instant.

`homefeed.data.split.leave_one_out` writes a per-user hold-out as a `TimeSplit`: every valid
event is moved to `train_end` and every test event to `valid_end`, so all consumers of the split
work unchanged. For recall that is harmless; for a ranker it is not when the log has a real clock
(MovieLens, RecBole files). There a user's last train event is typically months before the split
instant (ml-100k: median 96 days), so a valid or test sample would see

* empty 1-day and 7-day cross counts where every train sample of the same user sees full ones,
  and sequence gaps of months where train sees minutes: a train/test shift that history-free
  models (LR, DeepFM, ...) pay for with an AUC near 0.5 and a logloss above a constant's;
* no activity in the `active_window_days` before it, so the activity filter dropped 907 of the
  943 ml-100k valid users (72 valid rows left for early stopping and calibration);
* negatives drawn from the popularity of the held-out items alone (they all share one instant),
  unlike the train negatives, drawn from what was popular that day.

`held_out_view` gives ranking a view of the dataset in which each user's held-out events sit one
split step (`valid_end - train_end`) after that user's previous event, in order, with the part of
every event kept from the original split. Features still see only events strictly before the
sample; no label moves between parts. With an ordinal clock (sequence files) the view changes
nothing: each user's previous event already sits one step before the held-out one.

A leave-one-out split is recognised by its shape, not by a file: a non-empty valid part whose
events all sit exactly at `train_end`, and test events all exactly at `valid_end`. A time split
of whole days never has that shape.

    >>> view = held_out_view(dataset)                     # doctest: +SKIP
    >>> view.events_in("valid")["ts"].n_unique() > 1      # doctest: +SKIP
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from homefeed.data.dataset import Dataset

PART_COLUMN = "__part"


@dataclass
class HeldOutView(Dataset):
    """A Dataset whose parts come from a per-event label (`part`), not from the event times."""

    part: pl.Series | None = None

    def events_in(self, part: str) -> pl.DataFrame:
        if part not in ("train", "valid", "test"):
            raise ValueError(f"unknown split part {part!r}; valid parts: train, valid, test")
        return self.events.filter(self.part == part)


def is_leave_one_out(dataset: Dataset) -> bool:
    """Whether the split has the leave-one-out shape: valid events all at train_end, test events all at valid_end."""
    s = dataset.split
    ts = dataset.events["ts"]
    valid = ts.filter((ts >= s.train_end) & (ts < s.valid_end))
    test = ts.filter(ts >= s.valid_end)
    return (s.valid_end > s.train_end and valid.len() > 0 and bool((valid == s.train_end).all())
            and bool((test == s.valid_end).all()))


def held_out_view(dataset: Dataset) -> Dataset:
    """The dataset with held-out events re-clocked to their user's time (see the module doc); other splits unchanged."""
    if isinstance(dataset, HeldOutView) or not is_leave_one_out(dataset):
        return dataset
    s = dataset.split
    step = s.valid_end - s.train_end
    ev = dataset.events.with_row_index("__order").with_columns(dataset.split.expr().alias(PART_COLUMN))
    # each user's events in time order (held-out ones last, valid before test); the held-out ones get
    # the user's last train time + step, + 2 steps, ...; users with no train event keep the split times
    ev = ev.sort("user_id", "ts", "__order")
    held = pl.col(PART_COLUMN) != "train"
    last_train = pl.when(~held).then(pl.col("ts")).otherwise(None).max().over("user_id")
    rank = held.cast(pl.Int64).cum_sum().over("user_id")  # 1, 2, ... over the user's held-out events
    new_ts = pl.when(held & last_train.is_not_null()).then(last_train + rank * step).otherwise(pl.col("ts"))
    ev = ev.with_columns(new_ts.alias("ts")).sort("__order")
    part = ev[PART_COLUMN]
    return HeldOutView(events=ev.drop("__order", PART_COLUMN), items=dataset.items, users=dataset.users,
                       split=dataset.split, vocabs=dataset.vocabs, exposures=dataset.exposures,
                       path=dataset.path, part=part)
