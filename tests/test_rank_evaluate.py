"""evaluate_rank: the constant and LR baselines beside every preset, the checks against them, and real logs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from homefeed.evaluate.metrics import logloss
from homefeed.evaluate.report import to_json
from homefeed.rank.encoders import Encoders
from homefeed.rank.evaluate import (AUC_MARGIN, RankSettings, check_baselines, constant_row, evaluate_rank, fit_preset,
                                    rank_table)
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, load_checkpoint, predict
from test_rank_samples import toy_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QUICK = RankSettings(samples=SampleSettings(drop_bots=False, active_min_actions=0),
                     train=TrainSettings(epochs=3, batch_size=256, lr=0.01, threads=1),
                     model={"embed_dim": 4, "hidden": [16]})


@pytest.fixture(scope="module")
def toy_parts():
    return build_all(toy_dataset(n_users=100, days=5), QUICK.samples)


def test_evaluate_rank_reports_baselines_beside_every_preset(toy_parts):
    results = evaluate_rank(None, ["din", "deepfm"], QUICK, samples=toy_parts)
    assert list(results) == ["constant", "lr", "din", "deepfm"]  # baselines first, then the presets in order
    for name, row in results.items():
        assert 0 < row["logloss"] and row["calibration"] > 0 and 0 <= row["ece"] <= 1, name
        assert row["observed_rate"] == pytest.approx(toy_parts["test"].tensors["label"].numpy().mean())
    for name in ("lr", "din", "deepfm"):
        row = results[name]
        assert 0.6 < row["auc"] <= 1 and 0.5 < row["gauc"] <= 1 and row["best_epoch"] >= 0, name
    assert results["lr"]["check"] == "baseline" and results["constant"]["check"] == "baseline"
    flagged = {w.split(":")[1].strip() for w in results.meta["warnings"]}
    assert flagged == {n for n in ("din", "deepfm") if results[n]["check"] != "ok"}
    assert results.meta["protocol"] == "exposures" and results.meta["samples"]["test"]["rows"] > 0
    assert json.loads(to_json(results))["din"]["auc"] == pytest.approx(results["din"]["auc"])
    table = rank_table(results)
    assert table.row_count == 4 and "exposures" in table.title and [c.header for c in table.columns][-1] == "check"


def test_lr_among_the_presets_is_the_baseline_and_not_trained_twice(toy_parts):
    results = evaluate_rank(None, ["din", "lr"], QUICK, samples=toy_parts)
    assert list(results) == ["constant", "lr", "din"]
    plain = evaluate_rank(None, ["din"], QUICK, samples=toy_parts, baselines=False)
    assert list(plain) == ["din"] and plain.meta["warnings"] == [] and plain["din"]["auc"] == results["din"]["auc"]


def test_constant_predictor_is_the_train_rate(toy_parts):
    row = constant_row(toy_parts)
    y_train, y_test = (toy_parts[p].tensors["label"].numpy().astype(np.float64) for p in ("train", "test"))
    assert row["train_rate"] == pytest.approx(y_train.mean())
    assert row["auc"] == 0.5 and row["logloss"] == pytest.approx(logloss(y_test, np.full(y_test.size, y_train.mean())))
    assert row["calibration"] == pytest.approx(y_train.mean() / y_test.mean())
    assert row["ece"] == pytest.approx(abs(y_train.mean() - y_test.mean()))


def test_check_baselines_flags_logloss_above_constant_and_auc_below_lr():
    rows = {"constant": {"auc": 0.5, "logloss": 0.69}, "lr": {"auc": 0.75, "logloss": 0.60},
            "good": {"auc": 0.75 - AUC_MARGIN + 1e-6, "logloss": 0.69},
            "overfit": {"auc": 0.76, "logloss": 0.71},
            "weak": {"auc": 0.74, "logloss": 0.65},
            "both": {"auc": 0.70, "logloss": 1.01}}
    warnings = check_baselines(rows)
    assert rows["good"]["check"] == "ok" and rows["lr"]["check"] == "baseline"
    assert rows["overfit"]["check"] == "logloss > constant"
    assert rows["weak"]["check"] == f"AUC < LR - {AUC_MARGIN}"
    assert rows["both"]["check"] == f"logloss > constant, AUC < LR - {AUC_MARGIN}"
    assert warnings == [
        "warning: overfit: test logloss 0.7100 is above the constant predictor's 0.6900: it predicts worse than the train rate",
        "warning: weak: test AUC 0.7400 is below LR's 0.7500 by more than 0.005",
        "warning: both: test logloss 1.0100 is above the constant predictor's 0.6900: it predicts worse than the train rate",
        "warning: both: test AUC 0.7000 is below LR's 0.7500 by more than 0.005",
    ]


def test_fit_preset_saves_what_serving_needs(tmp_path, toy_parts):
    from homefeed.rank.model import ModelConfig, RankModel
    from homefeed.rank.spec import FeatureSpec

    model, fit = fit_preset("deepfm", toy_parts, QUICK, out=tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["preset"] == "deepfm" and meta["valid_auc"] == fit.best_valid_auc
    assert meta["calibration"] == pytest.approx(model.calibration.tolist())
    assert Encoders.load(tmp_path).spec == toy_parts["train"].spec == FeatureSpec(**meta["spec"])
    again = load_checkpoint(RankModel(FeatureSpec(**meta["spec"]), ModelConfig(**meta["config"])), tmp_path / "best.npz")
    assert np.allclose(predict(again, toy_parts["test"]), predict(model, toy_parts["test"]), atol=1e-6)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model preset\(s\) \['dfm'\]; valid presets: lr, wdl"):
        evaluate_rank(toy_dataset(n_users=20), ["dfm"], QUICK)


def _ingest(tmp_path, name, **kw):
    from homefeed.data.ingest import ingest

    dataset, _ = ingest(SHARED / name, tmp_path / "ds", **kw)
    return dataset


@pytest.mark.skipif(not (SHARED / "taobao_userbehavior_tail.csv").exists(), reason="shared Taobao log not in ../shared/data")
def test_real_taobao_log_deep_preset_beats_the_constant(tmp_path):
    dataset = _ingest(tmp_path, "taobao_userbehavior_tail.csv", fmt="taobao")
    settings = RankSettings(train=TrainSettings(threads=1), model={"embed_dim": 8, "hidden": [32]})
    results = evaluate_rank(dataset, ["din"], settings)
    assert results.meta["protocol"] == "din" and list(results) == ["constant", "lr", "din"]
    assert results["lr"]["auc"] > 0.7 and results["din"]["auc"] > 0.7
    assert results["din"]["logloss"] < results["constant"]["logloss"]  # calibrated on valid: never worse than the rate
    assert abs(math.log(results["din"]["calibration"])) < 0.15


@pytest.mark.skipif(not (SHARED / "Toys_and_Games.txt").exists(), reason="shared Amazon Toys not in ../shared/data")
def test_real_sequence_log_gives_leave_one_out_samples(tmp_path):
    dataset = _ingest(tmp_path, "Toys_and_Games.txt", fmt="sequences",
                      attributes=SHARED / "Toys_and_Games_item2attributes.json")
    test = build_all(dataset, SampleSettings())["test"]
    assert test.protocol == "din"
    users, labels = test.tensors["user"].numpy(), test.tensors["label"].numpy()
    assert int(labels.sum()) == 19_412 and np.unique(users[labels == 1]).size == 19_412  # each user's last item
    assert len(test) == 2 * 19_412                                                     # + one negative each
    assert (test.tensors["seq"][..., 0] > 0).sum(1).min() >= 3  # every history holds the user's earlier items


def test_warm_start_begins_as_the_trained_lr_and_keeps_it_when_nothing_beats_it(toy_parts):
    from homefeed.rank.start import warm_start
    from homefeed.rank.model import build_model
    from homefeed.rank.train import predict_logits

    lr_model, fit = fit_preset("lr", toy_parts, QUICK)
    assert fit.calibration[0] not in (0.0, 1.0)  # a real Platt scale, so folding it in is tested
    wdl = build_model(toy_parts["train"].spec, "wdl", **QUICK.model)
    assert warm_start(wdl, lr_model) and float(wdl.head.weight.detach().abs().sum()) == 0.0
    # the start is LR's calibrated logit, with wdl's own calibration at identity
    np.testing.assert_allclose(predict_logits(wdl, toy_parts["valid"]), predict_logits(lr_model, toy_parts["valid"]), atol=1e-4)
    assert not warm_start(build_model(toy_parts["train"].spec, "din", **QUICK.model), lr_model)  # no wide term: untouched
    deepfm = build_model(toy_parts["train"].spec, "deepfm", **QUICK.model)  # an FM term of random embeddings: kept tiny
    assert warm_start(deepfm, lr_model)
    gap = np.abs(predict_logits(deepfm, toy_parts["valid"]) - predict_logits(lr_model, toy_parts["valid"]))
    assert gap.max() < 0.01 * np.ptp(predict_logits(lr_model, toy_parts["valid"]))
    frozen = QUICK.model_copy(update={"train": QUICK.train.model_copy(update={"lr": 1e-12, "warm_start": True})})
    model, fit = fit_preset("wdl", toy_parts, frozen, lr_model=lr_model)
    assert fit.history[0]["epochs"] == 0.0 and fit.best_check == 0  # a learning rate that changes nothing: the start is kept
    assert fit.history[0]["valid_auc"] == pytest.approx(_auc_of(lr_model, toy_parts["valid"]))  # the start ranks as LR does
    cold = fit_preset("wdl", toy_parts, QUICK)[1]
    assert cold.history[0]["epochs"] > 0  # no step-0 check without a warm start


def _auc_of(model, samples):
    from homefeed.evaluate.metrics import auc

    return auc(samples.tensors["label"].numpy(), predict(model, samples))


def test_evaluate_rank_warm_starts_from_its_own_lr_baseline(toy_parts):
    warm = QUICK.model_copy(update={"train": QUICK.train.model_copy(update={"warm_start": True})})
    results = evaluate_rank(None, ["deepfm", "din"], warm, samples=toy_parts)
    assert results.lr_model is not None and results.lr_model.embedding is None
    again = evaluate_rank(None, ["deepfm"], warm, samples=toy_parts, baselines=False, lr_model=results.lr_model)
    assert list(again) == ["deepfm"] and again["deepfm"]["auc"] == results["deepfm"]["auc"]  # the same start, reused
    assert results["deepfm"]["valid_auc"] >= _auc_of(results.lr_model, toy_parts["valid"]) - 1e-9  # never below its start
