"""Recall evaluation: hand-computed metrics on the tiny shop, the JSON/table shape, every channel's contract,
and the issue's acceptance check that the merged list beats every single channel."""
import json

import numpy as np
import pytest
from rich.console import Console

from homefeed.data.ingest import ingest
from homefeed.evaluate.report import format_value, metrics_table, to_json
from homefeed.recall import CHANNELS, make_channel
from homefeed.recall.evaluate import evaluate_recall, format_recall_table, relevant_items
from homefeed.recall.part import fit_channels
from homefeed.recall.merge import Merger, MergeSettings
from homefeed.recall.popular import Popular
from homefeed.recall.retarget import Retarget, RetargetSettings
from homefeed.world import WorldSpec, generate
from recall_contract import RecallerContract
from recall_fixtures import synthetic_dataset, tiny_dataset


def render(table) -> str:
    console = Console(width=250, record=True)
    console.print(table)
    return console.export_text()


def test_report_helpers():
    assert [format_value(v) for v in (3, np.int64(1234), 0.123456, float("nan"), None, "x")] == \
        ["3", "1,234", "0.1235", "-", "-", "x"]
    text = render(metrics_table({"a": {"m1": 0.5}, "b": {"m2": 2}}, title="t", name_header="model"))
    assert "model" in text and "0.5000" in text and "-" in text
    assert json.loads(to_json({"a": {"x": np.float32(0.5), "n": np.int64(3), "bad": float("nan")}})) == \
        {"a": {"x": 0.5, "n": 3, "bad": None}}


def test_relevant_items_are_distinct_items_of_the_part():
    users, relevant = relevant_items(tiny_dataset(), "test")
    assert users.tolist() == list(range(1, 9))
    assert [r.tolist() for r in relevant] == [[3, 4], [2, 5], [9], [6, 12], [10], [1], [7], [6]]
    users, relevant = relevant_items(tiny_dataset(), "test", ("buy",))
    assert users.tolist() == [2] and relevant[0].tolist() == [5]


def test_hand_computed_retarget_metrics():
    # States at the start of the test day. Retarget lists (click/fav/cart in 3 days, not bought):
    # u1 [3] (2 was bought), u2 [5, 4], u3 [9, 8], u4 [5], u5 [12], u6 [3, 1], u7 and u8 nothing.
    # Relevant: u1 {3,4} u2 {2,5} u3 {9} u4 {6,12} u5 {10} u6 {1} u7 {7} u8 {6}.
    clicks_in_three_days = RetargetSettings(weights={"click": 1.0, "fav": 2.0, "cart": 3.0}, window_days=3.0,
                                            from_latest=False)
    result = evaluate_recall(tiny_dataset(), {"retarget": Retarget(settings=clicks_in_three_days)}, None, ks=(1, 2))
    m = result["channels"]["retarget"]
    assert m["users_evaluated"] == 8 and m["users_served"] == 6
    assert m["hitrate@1"] == pytest.approx(3 / 8)  # u1, u2, u3
    assert m["hitrate@2"] == pytest.approx(4 / 8)  # + u6
    assert m["recall@2"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 1) / 8)
    ideal_two = 1 + 1 / np.log2(3)  # users with two relevant items
    assert m["ndcg@2"] == pytest.approx((1 / ideal_two + 1 / ideal_two + 1 + 1 / np.log2(3)) / 8)
    assert m["coverage"] == pytest.approx(7 / 12)  # {1, 3, 4, 5, 8, 9, 12}
    assert "merged" not in result


def test_result_shape_json_and_table():
    ds = tiny_dataset()
    channels = {"retarget": Retarget().fit(ds), "popular": Popular().fit(ds)}
    result = evaluate_recall(ds, channels, Merger(settings=MergeSettings(k=50)).fit(ds), ks=(2, 5))
    assert list(result["channels"]) == ["retarget", "popular"]
    for row in (*result["channels"].values(), result["merged"]):
        assert {"hitrate@2", "recall@5", "ndcg@5", "coverage", "long_tail", "users_served", "ms_per_user"} <= set(row)
    # popular serves everyone and retarget adds what it misses: the merge is at least as good as either
    assert result["merged"]["users_served"] == 8
    assert result["merged"]["hitrate@5"] >= max(r["hitrate@5"] for r in result["channels"].values())
    assert json.loads(to_json(result))["merged"]["users_served"] == 8
    text = render(format_recall_table(result))
    assert "merged" in text and "hitrate@5" in text and "ms_per_user" in text
    with pytest.raises(ValueError, match="use 'valid' or 'test'"):
        evaluate_recall(ds, channels, None, part="train")


def test_max_users_samples_a_seeded_subset():
    ds = tiny_dataset()
    a = evaluate_recall(ds, {"popular": Popular().fit(ds)}, None, ks=(3,), max_users=4, seed=1)
    b = evaluate_recall(ds, {"popular": Popular().fit(ds)}, None, ks=(3,), max_users=4, seed=1)
    assert a["setup"]["users"] == 4 and a["channels"]["popular"]["users_evaluated"] == 4
    for metric in ("hitrate@3", "recall@3", "ndcg@3", "coverage"):
        assert a["channels"]["popular"][metric] == b["channels"]["popular"][metric]


def test_make_channel_names_valid_choices():
    with pytest.raises(ValueError, match="valid channels: itemcf, swing, ranki2i, crowd, retarget, popular, deepwalk, eges, mind, mind1"):
        make_channel("itemcf2")
    with pytest.raises(ValueError, match="unknown setting"):
        make_channel("popular", halflife=3)
    assert make_channel("popular", half_life_days=7).settings.half_life_days == 7


class TestEveryChannelObeysTheContract(RecallerContract):
    """Every channel in the CHANNELS table, with its default settings."""

    # deepwalk and eges train embeddings (seconds each with default settings): their contract runs with fast
    # settings in tests/test_graph_channel.py (TestDeepWalkContract, TestEGESContract); so do mind and mind1
    # (a trained network) in tests/test_mind.py (TestMINDContract, TestMIND1Contract).
    @pytest.fixture(params=[n for n in CHANNELS if n not in ("deepwalk", "eges", "mind", "mind1")], autouse=True)
    def _channel(self, request):
        self.channel_name = request.param

    def make(self):
        if "exclude_bought" in CHANNELS[self.channel_name].Settings.model_fields:  # retarget learns it by default
            return make_channel(self.channel_name, exclude_bought=True)  # (both ways: tests/test_retarget.py)
        return make_channel(self.channel_name)

    def make_keeping_bought(self):
        fields = CHANNELS[self.channel_name].Settings.model_fields
        if "exclude_bought" in fields:
            return make_channel(self.channel_name, exclude_bought=False)
        if "triggers" in fields:  # the i2i channels: TriggerSettings.keep_bought
            return make_channel(self.channel_name, triggers={"keep_bought": True})
        return None


def _merged_beats_every_channel(ds, max_users=None):
    # the count and rule channels only: the embedding channels train for seconds with default settings (with fast
    # settings they are too weak to help the merge); tests/test_graph_channel.py and tests/test_mind.py cover them
    channels = fit_channels(ds, ["itemcf", "swing", "ranki2i", "crowd", "retarget", "popular"])
    result = evaluate_recall(ds, channels, Merger().fit(ds), ks=(50, 200), max_users=max_users)
    best = max(result["channels"], key=lambda n: result["channels"][n]["hitrate@200"])
    return result, best


def test_merged_beats_every_channel_on_synthetic_users():
    ds = synthetic_dataset(seed=5, n_users=300, n_items=1500, n_categories=30)
    result, best = _merged_beats_every_channel(ds)
    assert result["merged"]["hitrate@200"] > result["channels"][best]["hitrate@200"], result


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    generate(WorldSpec.preset("tiny", seed=7), folder / "raw")
    return ingest(folder / "raw", folder / "ds")[0]


def test_merged_beats_every_channel_on_the_tiny_shop(tiny_world):
    result, best = _merged_beats_every_channel(tiny_world)
    assert result["merged"]["hitrate@200"] > result["channels"][best]["hitrate@200"], result
