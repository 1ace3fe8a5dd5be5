"""MIND routing seeded by the behaviours (`routing.start = "farthest"`): deterministic in training and serving, splits
two planted clusters of behaviours by content, one behaviour seeds one interest, and the channel fits, traces and serves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from homefeed.recall.mind import MIND, MINDSettings
from homefeed.recall.mind.routing import CapsuleRouting
from recall_fixtures import tiny_dataset


def _two_clusters(seed=0):
    """(B=6, L=8, D=8) behaviours: slots 2..7 real, alternating between two orthogonal directions plus noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.eye(8)[0] * 2, torch.eye(8)[1] * 2
    x = torch.zeros(6, 8, 8)
    for s in range(2, 8):
        x[:, s] = (a if s % 2 else b) + 0.1 * torch.randn(6, 8, generator=g)
    real = torch.arange(8).expand(6, 8) >= 2
    return x, real


def test_farthest_start_splits_planted_clusters_and_ignores_the_random_stream():
    x, real = _two_clusters()
    routing = CapsuleRouting(8, 2, 8, start="farthest")  # training mode: a random start would differ per call
    with torch.no_grad():
        routing.bilinear.weight.copy_(torch.eye(8))
        caps, w, mask = routing(x, real)
        again, _, _ = routing(x, real, torch.randn(6, 8, 2) * 5)  # a caller's draw is not used
    assert torch.equal(caps, again) and mask.all()
    side = w.argmax(2)[:, 2:]  # (6, 6): the interest of each real behaviour
    assert (side[:, 0::2] == side[:, :1]).all() and (side[:, 1::2] != side[:, :1]).all()  # one interest per cluster
    assert (side[:, -1] == 0).all()  # the newest behaviour seeds interest 1
    cos = torch.nn.functional.cosine_similarity(caps[:, 0], caps[:, 1], dim=1)
    assert (cos.abs() < 0.2).all()  # one interest per cluster, not two mixtures


def test_the_random_start_mixes_the_same_clusters_more():
    x, real = _two_clusters()
    routing = CapsuleRouting(8, 2, 8, start="random", sigma=1.0)
    with torch.no_grad():
        routing.bilinear.weight.copy_(torch.eye(8) * 0.1)  # agreement small beside the starting draw, as early in training
        torch.manual_seed(0)
        caps, _, _ = routing(x, real)
        seeded = CapsuleRouting(8, 2, 8, start="farthest")
        seeded.bilinear.weight.copy_(torch.eye(8) * 0.1)
        sc, _, _ = seeded(x, real)
    cos = lambda c: torch.nn.functional.cosine_similarity(c[:, 0], c[:, 1], dim=1).mean()
    assert cos(sc) < cos(caps) - 0.3


def test_one_behaviour_and_no_behaviour_are_routed_without_nans():
    routing = CapsuleRouting(4, 3, 5, start="farthest").eval()
    x = torch.randn(2, 5, 4)
    real = torch.tensor([[False] * 4 + [True], [False] * 5])
    caps, w, mask = routing(x * real.unsqueeze(2), real)
    assert torch.isfinite(caps).all() and torch.isfinite(w).all() and mask.sum(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="routing start"):
        CapsuleRouting(4, 3, 5, start="kmeans")


def test_the_channel_fits_traces_and_serves_with_the_seeded_start(tmp_path):
    fast = {"model": {"dim": 16, "max_len": 10, "hidden": [16], "interests": 3, "routing_start": "farthest"},
            "train": {"epochs": 1, "negatives": 50, "batch_size": 256, "threads": 1}, "serve": {"interest_shift": 0}}
    ds = tiny_dataset()
    rec = MIND(settings=MINDSettings(**fast)).fit(ds)
    state = next(s for s in rec_states(ds) if np.unique(s.items).size >= 4)
    vectors, _ = rec.interests(state)
    rec.save(tmp_path / "m")  # checks the traced tower against the model
    back = MIND.load(tmp_path / "m")
    assert np.allclose(back.interests(state)[0], vectors, atol=1e-5) and len(vectors) >= 2
    assert np.array_equal(back.recall(state, 20).items, rec.recall(state, 20).items)


def rec_states(ds):
    from homefeed.data.user_state import states_at
    start, _ = ds.split.bounds("test")
    return states_at(ds.events, ds.users, start)
