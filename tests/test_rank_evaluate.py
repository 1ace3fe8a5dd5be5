"""evaluate_rank: one row per preset with the test metrics; adapters of the shared public data sets."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from homefeed.evaluate.report import to_json
from homefeed.rank.encoders import Encoders
from homefeed.rank.evaluate import RankSettings, amazon_dataset, evaluate_rank, fit_preset, movielens_dataset, rank_table
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, load_checkpoint, predict
from test_rank_samples import toy_dataset

SHARED = Path("/work/shared/data")
QUICK = RankSettings(samples=SampleSettings(drop_bots=False, active_min_actions=0),
                     train=TrainSettings(epochs=2, batch_size=256, lr=0.01, threads=1),
                     model={"embed_dim": 4, "hidden": [16]})


def test_evaluate_rank_reports_every_preset():
    results = evaluate_rank(toy_dataset(n_users=100, days=5), ["lr", "din"], QUICK)
    assert list(results) == ["lr", "din"]
    for row in results.values():
        assert 0.6 < row["auc"] <= 1 and 0.5 < row["gauc"] <= 1 and row["logloss"] > 0 and row["calibration"] > 0
    assert results.meta["protocol"] == "exposures" and results.meta["samples"]["test"]["rows"] > 0
    assert json.loads(to_json(results))["din"]["auc"] == pytest.approx(results["din"]["auc"])
    table = rank_table(results)
    assert table.row_count == 2 and "exposures" in table.title


def test_fit_preset_saves_what_serving_needs(tmp_path):
    from homefeed.rank.model import RankModel, ModelConfig
    from homefeed.rank.spec import FeatureSpec

    parts = build_all(toy_dataset(n_users=60, days=5), QUICK.samples)
    model, fit = fit_preset("deepfm", parts, QUICK, out=tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["preset"] == "deepfm" and meta["valid_auc"] == fit.best_valid_auc
    assert Encoders.load(tmp_path).spec == parts["train"].spec == FeatureSpec(**meta["spec"])
    again = load_checkpoint(RankModel(FeatureSpec(**meta["spec"]), ModelConfig(**meta["config"])), tmp_path / "best.npz")
    assert np.allclose(predict(again, parts["test"]), predict(model, parts["test"]), atol=1e-6)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model preset\(s\) \['dfm'\]; valid presets: lr, wdl"):
        evaluate_rank(toy_dataset(n_users=20), ["dfm"], QUICK)


@pytest.mark.skipif(not (SHARED / "ml-100k.inter").exists(), reason="shared MovieLens-100K not present")
def test_movielens_adapter_and_din_protocol():
    ds = movielens_dataset(SHARED)
    assert ds.events.height == 100_000 and ds.users.height == 943 and ds.items.height == 1682
    assert ds.exposures is None and ds.users["city"][0] == "857"          # user 1's zip 85711
    assert ds.events_in("test").height == pytest.approx(10_000, rel=0.01)   # 80/10/10 by time
    s = build_all(ds, SampleSettings(active_min_actions=0))
    assert s["train"].protocol == "din"
    assert int(s["test"].tensors["label"].sum()) == ds.events_in("test").height  # each rating a positive
    assert len(s["test"]) >= 1.98 * ds.events_in("test").height                  # + ~1 negative each


@pytest.mark.skipif(not (SHARED / "Toys_and_Games.txt").exists(), reason="shared Amazon Toys not present")
def test_amazon_adapter_is_leave_one_out():
    ds = amazon_dataset(SHARED)
    assert ds.events.height == 167_597 and ds.users.height == 19_412 and ds.items.height == 11_924
    assert ds.events_in("test").height == 19_412 and ds.events_in("valid").height == 19_412
    first = ds.events.filter(ds.events["user_id"] == 1).sort("ts")["item_id"].to_list()
    assert first == [1, 2, 3, 4, 5]                                              # line "1 1 2 3 4 5"
    assert not math.isnan(ds.items["leaf_category"].cast(float).mean())
