"""MIND's served number of interests: K'_u with a shift, the shift picked on validation, kept by save/load and export."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from homefeed.data.user_state import states_at
from homefeed.recall.mind import MIND, MIND1, MINDSettings
from homefeed.recall.mind.export import load_torchscript
from homefeed.recall.mind.interests import pick_shift, shifts
from homefeed.recall.mind.routing import CapsuleRouting, interest_count
from homefeed.recall.mind.samples import state_behaviors
from homefeed.recall.mind.validate import Validation
from recall_fixtures import tiny_dataset

FAST = {"model": {"dim": 16, "max_len": 10, "hidden": [16]}, "train": {"epochs": 1, "negatives": 50, "batch_size": 256, "threads": 1}}


def paper(n: int, k: int, shift: int = 0) -> int:
    return max(1, min(k, int(math.floor(math.log2(max(n, 1)))) - shift))


def test_interest_count_with_a_shift_follows_the_formula():
    n = torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 100])
    for k in (1, 2, 4):
        for shift in (0, 1, 2, 3):
            assert interest_count(n, k, torch.tensor(float(shift))).tolist() == [paper(v, k, shift) for v in n.tolist()]


def test_routing_reads_its_shift_buffer():
    routing = CapsuleRouting(8, 4, 32).eval()
    lengths = torch.tensor([1, 4, 8, 16, 32])
    real = torch.arange(32).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.randn(5, 32, 8)
    assert routing(x, real)[2].sum(1).tolist() == [1, 2, 3, 4, 4]
    routing.shift.fill_(2.0)
    caps, weights, mask = routing(x, real)
    assert mask.sum(1).tolist() == [1, 1, 1, 2, 3]
    assert torch.all(caps[~mask] == 0) and torch.all(weights.transpose(1, 2)[~mask] == 0)
    assert "shift" in routing.state_dict()


def test_candidate_shifts_and_the_pick():
    assert shifts(30) == [0, 1, 2, 3] and shifts(10) == [0, 1, 2] and shifts(1) == [0]
    for n in (10, 30, 64):  # the last candidate serves every user of up to n behaviours one interest
        assert paper(n, 8, shifts(n)[-1]) == 1 and paper(n, 8, shifts(n)[-1] - 1) >= 1
    assert pick_shift({0: 0.2, 1: 0.3, 2: 0.3, 3: 0.1}.get, max_len=30) == (1, {"0": 0.2, "1": 0.3, "2": 0.3, "3": 0.1})
    assert pick_shift(lambda s: 0.5, max_len=30)[0] == 0  # ties: the paper's rule


@pytest.fixture(scope="module")
def fitted():
    return MIND(settings=MINDSettings(**FAST)).fit(tiny_dataset())


def test_the_shift_is_picked_on_validation_and_served(fitted, tmp_path):
    rec, ds = fitted, tiny_dataset()
    check = Validation.of(ds, max_users=2000, k=50)
    assert set(rec.shift_scores_) == {str(s) for s in shifts(10)}
    assert rec.shift_ == pick_shift(lambda s: rec.shift_scores_[str(s)], max_len=10)[0] == rec.served_shift()
    for s, value in rec.shift_scores_.items():
        assert check.score(rec.with_serve(interest_shift=int(s)), tie_break=True) == pytest.approx(value, abs=1e-9)
    states = [s for s in states_at(ds.events, ds.users, ds.split.valid_end) if s.items.size]
    for shift in (0, 2):
        twin = rec.with_serve(interest_shift=shift)
        assert twin.served_shift() == shift and rec.served_shift() == rec.shift_  # the original is untouched
        for s in states:
            n = int((state_behaviors(s, max_len=10) > 0).sum())
            assert len(twin.interests(s)[0]) == paper(n, 4, shift)
            assert len(rec.interests(s)[0]) == paper(n, 4, rec.shift_)
    rec.save(tmp_path / "m")
    back = MIND.load(tmp_path / "m")
    assert back.shift_ == rec.shift_ and back.shift_scores_ == rec.shift_scores_
    tower = load_torchscript(tmp_path / "m" / "user_tower.pt")
    for s in states:
        np.testing.assert_array_equal(back.recall(s, 8).items, rec.recall(s, 8).items)
        with torch.no_grad():  # the exported program serves the picked shift too
            assert int(tower(*rec.inputs(s))[1].sum()) == len(rec.interests(s)[0])


def test_a_fixed_shift_is_served_and_one_interest_is_not_shifted():
    ds = tiny_dataset()
    rec = MIND(settings=MINDSettings(**FAST, serve={"interest_shift": 2})).fit(ds)
    assert rec.served_shift() == 2 and rec.shift_scores_ == {}
    for s in states_at(ds.events, ds.users, ds.split.valid_end):
        n = int((state_behaviors(s, max_len=10) > 0).sum())
        assert len(rec.interests(s)[0]) == paper(n, 4, 2)
    one = MIND1(settings=MIND1.Settings(**FAST)).fit(ds)
    assert one.served_shift() == 0 and one.shift_scores_ == {}
    with pytest.raises(ValueError, match="interest_shift"):
        MINDSettings(serve={"interest_shift": -1})


def test_early_stopping_can_weigh_the_lists_head():
    from homefeed.recall.popular import Popular

    ds = tiny_dataset()
    check = Validation.of(ds, max_users=100, k=5)
    pop = Popular().fit(ds)
    hit = {k: np.mean([np.isin(rel, pop.recall(s, k).items).any() for s, rel in zip(check.states, check.relevant)]) for k in (1, 5)}
    assert check.score(pop) == pytest.approx(hit[5]) and check.score(pop, head_weight=1.0) == pytest.approx(hit[1])
    assert check.score(pop, head_weight=0.25) == pytest.approx(0.75 * hit[5] + 0.25 * hit[1])
    with pytest.raises(ValueError, match="head_weight"):
        check.score(pop, head_weight=2.0)
    rec = MIND(settings=MINDSettings(**{**FAST, "train": {**FAST["train"], "epochs": 2, "valid_head_weight": 1.0}}))
    rec.fit(ds)  # one check, after the last epoch, with the history as scored and the paper's K'_u
    trained = Validation.of(ds, max_users=2000, k=50)
    as_trained = rec.with_serve(history="score", interest_shift=0)
    assert rec.log_["valid_epochs"] == [2]
    assert rec.log_["valid"][0] == pytest.approx(trained.score(as_trained, head_weight=1.0), abs=1e-9)
