"""MIND early stopping on a smoothed validation curve (`recall/mind/stopping.py`): the centred mean, which check and
which snapshot are picked, when training stops, and the trainer keeping the picked epoch's weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from homefeed.recall.mind.model import MINDModel
from homefeed.recall.mind.samples import NegativeSampler, build_sequences
from homefeed.recall.mind.stopping import Stopper, smoothed
from homefeed.recall.mind.train import TrainSettings, train_mind
from recall_fixtures import tiny_dataset


def test_smoothed_is_the_centred_mean_shrunk_at_the_ends():
    s = [1.0, 2.0, 6.0, 3.0, 8.0]
    assert np.allclose(smoothed(s, 0), s)
    assert np.allclose(smoothed(s, 1), [1.0, 3.0, 11 / 3, 17 / 3, 8.0])
    assert np.allclose(smoothed(s, 2), [1.0, 3.0, 4.0, 17 / 3, 8.0])
    with pytest.raises(ValueError, match="radius"):
        smoothed(s, -1)


def _run(scores, *, patience, radius):
    stop, calls = Stopper(patience=patience, radius=radius), []
    for i, s in enumerate(scores):
        stop.add(s, lambda i=i: calls.append(i) or f"weights {i}")
        if stop.done():
            break
    return stop, calls


def test_a_lone_spike_wins_raw_but_a_plateau_wins_smoothed():
    scores = [0.10, 0.20, 0.10, 0.10, 0.17, 0.18, 0.17, 0.10, 0.10, 0.10, 0.10]
    raw, calls = _run(scores, patience=3, radius=0)
    assert raw.best() == (1, "weights 1") and len(raw.scores) == 5  # stopped 3 checks after the spike
    assert calls == [0, 1]  # unsmoothed: only a new best is snapshotted
    smooth, _ = _run(scores, patience=3, radius=1)
    assert smooth.best() == (5, "weights 5") and len(smooth.scores) == 9


def test_the_newest_check_is_provisional_until_its_neighbours_exist():
    stop, _ = _run([0.1, 0.1, 0.5], patience=3, radius=1)
    assert stop.best() == (2, "weights 2")  # its own score for now
    stop.add(0.0, lambda: "weights 3")  # now final: check 1 (0.1 + 0.1 + 0.5) / 3 beats check 2 (0.1 + 0.5 + 0.0) / 3
    assert stop.best() == (1, "weights 1") and not stop.done()
    stop.add(0.0, lambda: "weights 4")
    assert stop.best() == (1, "weights 1") and stop.done()  # 3 checks after it
    with pytest.raises(ValueError, match="check 6"):
        stop.add(float("nan"), lambda: None)
    with pytest.raises(ValueError, match="patience"):
        Stopper(patience=0)


def test_training_keeps_the_weights_of_the_smoothed_pick():
    ds = tiny_dataset()
    seqs = build_sequences(ds.events_in("train"), max_len=10)
    model = MINDModel(n_items=ds.n_items, side_codes=np.zeros((ds.n_items, 0), np.int64), side_sizes=[],
                      profile_sizes=[1], dim=8, interests=2, max_len=10, hidden=(8,))
    sampler, profiles = NegativeSampler(seqs.counts(ds.n_items)), np.zeros((ds.n_users, 1), np.int64)
    scores, seen = iter([0.1, 0.5, 0.1, 0.1, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1]), []

    def validate():
        seen.append(model.items.ids.weight.detach().clone())
        return next(scores)

    log = train_mind(model, seqs, profiles, sampler, validate=validate,
                     settings=TrainSettings(epochs=10, patience=3, smooth_checks=1, check_steps=1, threads=1))
    assert log["best_epoch"] == 6 and log["valid_epochs"] == list(range(1, 10))  # the plateau's middle, not the spike at 2
    assert torch.equal(model.items.ids.weight, seen[5]) and not torch.equal(seen[5], seen[8])
