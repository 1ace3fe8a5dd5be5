"""torch_threads sets torch's intra-op thread count inside the block and restores it on every exit."""
import pytest
import torch

from homefeed.threads import torch_threads


def _other_count() -> int:
    return 2 if torch.get_num_threads() != 2 else 3


def test_sets_inside_and_restores_after():
    before = torch.get_num_threads()
    n = _other_count()
    with torch_threads(n):
        assert torch.get_num_threads() == n
    assert torch.get_num_threads() == before


def test_restores_on_exception():
    before = torch.get_num_threads()
    n = _other_count()
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(n):
            assert torch.get_num_threads() == n
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_restores_a_change_made_inside_the_block():
    before = torch.get_num_threads()
    with torch_threads(None):
        torch.set_num_threads(_other_count())
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [None, 0])
def test_none_or_zero_leaves_the_count(n):
    before = torch.get_num_threads()
    with torch_threads(n):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [-1, 1.5, "2"])
def test_bad_count_is_an_error(n):
    with pytest.raises(ValueError, match="non-negative int"):
        with torch_threads(n):
            pass
