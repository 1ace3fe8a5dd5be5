"""torch's intra-op (and numba's) thread count set for one block and always restored, so no stage leaks its setting.

`torch.set_num_threads` changes process state: a training job that sets it and never puts it back
slows (or oversubscribes) whatever runs next in the same process, e.g. a test or a served request.
Every call site uses this one helper instead:

    with torch_threads(2):
        train(...)          # runs with 2 intra-op threads
    # the previous count is back, even if train raised
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to n, then restore it; None or 0 leaves it unchanged."""
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"torch_threads: n must be a non-negative int or None, got {n!r}")
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def numba_threads(n: int | None) -> Iterator[None]:
    """The same for numba's parallel kernels (capped at NUMBA_NUM_THREADS); None or 0 leaves it unchanged."""
    import numba

    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"numba_threads: n must be a non-negative int or None, got {n!r}")
    before = numba.get_num_threads()
    if n:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)
