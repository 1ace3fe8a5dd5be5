"""RowAdam: torch's SparseAdam update (lazy Adam on the embedding rows a batch read) without sorting the rows.

Why: `torch.optim.SparseAdam` coalesces each sparse gradient (a sort of every looked-up index, B x F
of them) and then applies the update through `sparse_mask` and sparse additions, more sorts and
searches. Profiling DeepFM training (benchmarks/rank.py, batch 4,096, 16 fields) put that step at
~15 of ~42 ms a batch, more than the forward pass. RowAdam finds the distinct rows with a
per-table boolean mark (O(rows touched) scatter + one scan of the mark) instead of a sort, sums
the repeated rows' gradients with `index_add_`, and updates only those rows with dense gathers
and `index_copy_`. The arithmetic is SparseAdam's (same moments, same bias correction by the
table's step count), so the weights agree with SparseAdam's to float rounding (tested).

Very large tables touched by few rows per step (more than `SORT_RATIO` rows per touched index)
use `torch.unique` instead of scanning the whole mark.

On CPU float32 tables (`fused`, the default there) one numba kernel does the whole step: one pass over
the gradient's rows finds each distinct row's slot by the mark and sums its gradients, then the Adam
update of those rows happens in place, O(rows touched) whatever the table's size. About twenty torch
kernels, each a pass over the rows, become two: for DeepFM's table (46k x 16, 65k looked-up rows a
step) 6.0 ms against 10.6-12.7 ms on the loaded 2-core box (load 23). Same float32 arithmetic.

    >>> emb = torch.nn.Embedding(1000, 16, sparse=True)
    >>> opt = RowAdam([emb.weight], lr=1e-3)
    >>> emb(torch.tensor([[1, 2, 2]])).sum().backward(); opt.step()
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

SORT_RATIO = 64  # a table with more rows than this x the indices of a step finds its rows by sorting instead


@njit(cache=True)
def _row_adam_step(weight, exp_avg, exp_avg_sq, mark, slot, index, values, keep1, keep2, eps, neg_step):
    """One lazy Adam step on the rows of an uncoalesced gradient (index (M,), values (M, D)), in place.

    keep1 = 1 - beta1, keep2 = 1 - beta2, neg_step = -lr * sqrt(1 - beta2^t) / (1 - beta1^t), all float32.
    mark (N,) bool and slot (N,) int64 are scratch: mark is all False again on return.
    """
    n, dim = values.shape
    rows = np.empty(n, np.int64)
    grad = np.empty((n, dim), np.float32)
    n_rows = 0
    for i in range(n):  # the distinct rows in first-seen order, their gradients summed in index order
        r = index[i]
        if mark[r]:
            j = slot[r]
            for k in range(dim):
                grad[j, k] += values[i, k]
        else:
            mark[r] = True
            slot[r] = n_rows
            rows[n_rows] = r
            for k in range(dim):
                grad[n_rows, k] = values[i, k]
            n_rows += 1
    for j in range(n_rows):  # SparseAdam's form: m += (g - m) * (1 - b1); v += (g^2 - v) * (1 - b2)
        r = rows[j]
        mark[r] = False
        for k in range(dim):
            g = grad[j, k]
            m = exp_avg[r, k] + (g - exp_avg[r, k]) * keep1
            v = exp_avg_sq[r, k] + (g * g - exp_avg_sq[r, k]) * keep2
            exp_avg[r, k] = m
            exp_avg_sq[r, k] = v
            weight[r, k] += m / (np.sqrt(v) + eps) * neg_step


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse (COO, row-wise) gradients, e.g. `nn.Embedding(sparse=True)` tables.

    fused: the numba step (default: for CPU float32 tables); False: the torch operators, any device.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 *, fused: bool | None = None):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0; got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1); got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0; got {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.fused = fused

    @staticmethod
    def _rows(state: dict, index: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """(distinct rows (R,), their summed gradients (R, D)) of an uncoalesced gradient."""
        mark, slot = state["mark"], state["slot"]
        if mark.numel() > SORT_RATIO * index.numel():
            rows, pos = torch.unique(index, return_inverse=True)
        else:
            mark.index_fill_(0, index, True)
            rows = mark.nonzero().squeeze(1)
            mark.index_fill_(0, rows, False)
            slot.index_copy_(0, rows, torch.arange(rows.numel(), dtype=slot.dtype, device=slot.device))
            pos = slot.index_select(0, index)
        grad = values.new_zeros((rows.numel(),) + values.shape[1:]).index_add_(0, pos, values)
        return rows, grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(f"RowAdam needs sparse gradients (nn.Embedding(sparse=True)); parameter of shape "
                                       f"{tuple(p.shape)} has a dense one: train it with Adam")
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                                 mark=torch.zeros(p.shape[0], dtype=torch.bool, device=p.device),
                                 slot=torch.zeros(p.shape[0], dtype=torch.int64, device=p.device))
                g = p.grad
                index, values = g._indices()[0], g._values()
                if values.numel() == 0:
                    continue
                state["step"] += 1
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                kernel = p.device.type == "cpu" and p.dtype == values.dtype == torch.float32 and p.dim() == 2 and p.is_contiguous()
                if kernel if self.fused is None else self.fused:
                    f32 = np.float32
                    _row_adam_step(p.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(), state["mark"].numpy(),
                                   state["slot"].numpy(), index.contiguous().numpy(), values.contiguous().numpy(),
                                   f32(1 - beta1), f32(1 - beta2), f32(group["eps"]), f32(-step_size))
                    continue
                rows, grad = (index, values) if g.is_coalesced() else self._rows(state, index, values)
                m = state["exp_avg"].index_select(0, rows)
                v = state["exp_avg_sq"].index_select(0, rows)
                m.add_(grad.sub(m).mul_(1 - beta1))  # SparseAdam's form: old += (1 - b) * (new - old)
                v.add_(grad.square().sub_(v).mul_(1 - beta2))
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))
        return loss
