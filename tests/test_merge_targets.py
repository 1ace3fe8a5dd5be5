"""benchmarks/real_logs.py's verdicts on issue 13's merge targets: each side's better protocol, misses counted in users."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_logs import targets  # noqa: E402


def row(keep, drop=(0.0, 0.0, 0.0)):
    return {**{f"keep:hr@{k}": v for k, v in zip((10, 50, 200), keep)},
            **{f"drop:hr@{k}": v for k, v in zip((10, 50, 200), drop)}}


def test_verdicts_compare_better_protocols_and_count_a_miss_in_users():
    result = {"users": 110, "rows": {
        "itemcf": row((0.245, 0.473, 0.473)), "retarget": row((0.400, 0.500, 0.500)),
        "popular": row((0.0, 0.0, 0.0), drop=(0.01, 0.05, 0.52)),  # best at 200 under the drop protocol
        "merged": row((0.345, 0.500, 0.518)), "implicit_bm25": row((0.336, 0.509, 0.564))}}
    got = targets(result)
    assert got["merged>=best_channel@10"] == {"ok": False, "merged": 0.345, "retarget": 0.400, "short_by_users": 6}
    assert got["merged>=best_channel@50"] == {"ok": True, "merged": 0.5, "retarget": 0.5}  # a tie meets it
    assert got["merged>=best_channel@200"] == {"ok": False, "merged": 0.518, "popular": 0.52, "short_by_users": 0}
    assert got["merged>=bm25@10"]["ok"] and "short_by_users" not in got["merged>=bm25@10"]
    assert got["merged>=bm25@50"]["short_by_users"] == 1  # .009 of 110 users
    assert "optional_costs<=1%@50" not in got


@pytest.mark.parametrize("with_optional, ok", [(0.496, True), (0.494, False)])
def test_optional_channels_may_cost_at_most_one_percent_of_merged_hr50(with_optional, ok):
    result = {"users": 100, "rows": {"itemcf": row((0.1, 0.3, 0.4)), "merged": row((0.2, 0.5, 0.6)),
                                     "implicit_bm25": row((0.1, 0.2, 0.3))},
              "optional": {"keep:hr@50": with_optional, "drop:hr@50": 0.0}}
    assert targets(result)["optional_costs<=1%@50"]["ok"] is ok
