"""The fused numba SGNS step equals the torch step, whatever numba's thread count."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from homefeed.recall.graph.eges import EGESModel, SideInfo
from homefeed.recall.graph.sgns_kernel import scatter_add
from homefeed.recall.graph.skipgram import sgd_step
from homefeed.threads import numba_threads


def model(mode: str) -> EGESModel:
    rng = np.random.default_rng(3)
    codes = np.stack([rng.integers(0, 12, 400), rng.integers(1, 5, 400)], 1)
    m = EGESModel(400, SideInfo(codes, [12, 5], ["brand", "shop"]), dim=16, mode=mode, seed=2)
    m.context.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(4))  # as after some training
    m.attention.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    return m


def batch():
    g = torch.Generator().manual_seed(0)
    centers = torch.randint(0, 400, (128,), generator=g)
    contexts = torch.randint(-1, 400, (128, 6), generator=g)  # -1 = no context in that column
    contexts[5] = -1  # a centre without any context: its negatives weigh 0
    contexts[7, :3] = 9  # one row updated several times by one centre
    return centers, contexts, torch.randint(0, 400, (128, 3), generator=g)


@pytest.mark.parametrize("mode", ["deepwalk", "eges"])
def test_fused_step_equals_the_torch_step(mode):
    fused, plain = model(mode), model(mode)
    args = (*batch(), 0.05)
    for _ in range(3):  # a few steps, so later ones read rows the earlier ones moved
        loss_fused, loss_plain = sgd_step(fused, *args), sgd_step(plain, *args, fused=False)
        assert loss_fused == pytest.approx(loss_plain, rel=1e-5)
    for a, b in zip(fused.tables(), plain.tables()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused.context, model(mode).context)  # the step did move the context rows


def test_fused_step_is_the_same_on_one_and_two_threads():
    one, two = model("eges"), model("eges")
    args = (*batch(), 0.05)
    with numba_threads(1):
        sgd_step(one, *args)
    with numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        sgd_step(two, *args)
    for a, b in zip(one.tables(), two.tables()):
        assert torch.equal(a, b)


def test_scatter_add_by_hand():
    table = np.zeros((3, 2), np.float32)
    update = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    scatter_add(table, np.array([2, 0, 2]), update, 0.5, False)
    np.testing.assert_allclose(table, [[1.5, 2], [0, 0], [3, 4]])  # row 2 gets both updates, times 0.5
    table[:] = 0
    scatter_add(table, np.array([2, 0, 2]), update, 1.0, True)
    np.testing.assert_allclose(table, [[3, 4], [0, 0], [3, 4]])  # shared: row 2 moves by the mean of its two
