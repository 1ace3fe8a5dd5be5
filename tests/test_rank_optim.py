"""RowAdam (homefeed.rank.optim) against torch's SparseAdam: the same weights, whichever way it finds the rows."""
from __future__ import annotations

import pytest
import torch

from homefeed.rank import optim
from homefeed.rank.optim import RowAdam


def _train_pair(n_rows: int, steps: int = 25, *, coalesce: bool = False, fused: bool | None = None):
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Embedding(n_rows, 8, sparse=True) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    opts = {id(ours): RowAdam(ours.parameters(), lr=0.01, fused=fused), id(theirs): torch.optim.SparseAdam(theirs.parameters(), lr=0.01)}
    for _ in range(steps):
        idx = torch.randint(0, min(n_rows, 60), (64, 5))  # repeats within a batch: their gradients must be summed
        weights = torch.randn(64, 5, 8)
        for emb in (ours, theirs):
            opts[id(emb)].zero_grad()
            (emb(idx) * weights).square().sum().backward()
            if coalesce and emb is ours:
                emb.weight.grad = emb.weight.grad.coalesce()
            opts[id(emb)].step()
    return ours.weight.detach(), theirs.weight.detach()


@pytest.mark.parametrize("fused", [True, False])  # the numba kernel, and the torch operators
@pytest.mark.parametrize("n_rows", [60, 100 * optim.SORT_RATIO * 320])  # the mark scan, and the sort for a huge table
def test_row_adam_equals_sparse_adam(n_rows, fused):
    ours, theirs = _train_pair(n_rows, fused=fused)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours[:60] != _train_pair(n_rows, steps=1, fused=fused)[0][:60]).any()  # the weights did move over the steps


@pytest.mark.parametrize("fused", [True, False])
def test_row_adam_takes_coalesced_gradients(fused):
    ours, theirs = _train_pair(60, coalesce=True, fused=fused)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_row_adam_kernel_equals_the_torch_operators_and_moves_only_read_rows():
    fused, unfused, start = _train_pair(500, fused=True)[0], _train_pair(500, fused=False)[0], _train_pair(500, steps=0)[0]
    assert (fused - unfused).abs().max().item() < 1e-6
    assert (fused[:60] != start[:60]).all() and torch.equal(fused[60:], start[60:])  # batches read rows 0..59 only


def test_row_adam_refuses_dense_gradients_and_bad_settings():
    emb = torch.nn.Embedding(10, 4)  # dense gradients
    opt = RowAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    with pytest.raises(ValueError, match="learning rate"):
        RowAdam(emb.parameters(), lr=0)
