"""The "auto" start (homefeed.rank.start): a cold preset below LR on valid is trained again from LR and the better kept;
a cold preset above LR is kept without a warm run; the setting, the reported fields, and the served bundle part."""
import json

import numpy as np
import pytest
import torch

from homefeed.config import ConfigError, load_config
from homefeed.evaluate.metrics import auc
from homefeed.rank.evaluate import RankSettings, evaluate_rank, fit_preset, rank_table, start_text
from homefeed.rank.samples import SampleSettings, Samples
from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField
from homefeed.rank.start import served_valid_auc
from homefeed.rank.train import TrainSettings, predict
from test_rank_samples import toy_dataset

QUICK = RankSettings(samples=SampleSettings(drop_bots=False, active_min_actions=0),
                     train=TrainSettings(epochs=3, batch_size=256, lr=0.01, patience=2, threads=1),
                     model={"embed_dim": 4, "hidden": [16]})


def _samples(spec: FeatureSpec, sparse: np.ndarray, x: np.ndarray, seq: np.ndarray, y: np.ndarray) -> Samples:
    m = len(y)
    return Samples(tensors={"sparse": torch.from_numpy(sparse), "dense": torch.from_numpy(x.astype(np.float32)),
                            "seq": torch.from_numpy(seq), "seq_gap": torch.ones(m, seq.shape[1], dtype=torch.int64),
                            "label": torch.from_numpy(y.astype(np.float32)), "user": torch.arange(m)},
                   ts=np.zeros(m, np.int64), spec=spec, encoders=None, protocol="din")


def linear_world(n=(40, 400, 400), seed=2, max_len=4) -> dict[str, Samples]:
    """Labels a linear function of one dense value plus noise (P(click) = sigmoid(2x)), 40 train rows; every
    row has its own user and item (ids never seen again) and a random history: nothing for a deep model to learn."""
    rng = np.random.default_rng(seed)
    size = sum(n) + 1
    spec = FeatureSpec(sparse=[SparseField(name="user_id", vocab_size=size, group="user"),
                               SparseField(name="item_id", vocab_size=size, group="item")],
                       dense=[DenseField(name="x", group="item")],
                       sequence=[SequenceField(name="hist_item_id", shares="item_id")], max_len=max_len, n_gap_buckets=4)
    parts, first = {}, 1
    for part, m in zip(("train", "valid", "test"), n):
        ids = np.arange(first, first + m)
        first += m
        x = rng.normal(size=m)
        y = rng.random(m) < 1 / (1 + np.exp(-2 * x))
        parts[part] = _samples(spec, np.stack([ids, ids], 1), x[:, None], rng.integers(ids[0], first, (m, max_len, 1)), y)
    return parts


def xor_world(n=(1500, 500, 500), seed=0, max_len=4) -> dict[str, Samples]:
    """Labels an XOR of two fields' parities (10% flipped): no weighted sum of codes ranks it, a deep model does."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(sparse=[SparseField(name="a", vocab_size=11, group="item"), SparseField(name="b", vocab_size=11, group="user")],
                       sequence=[SequenceField(name="hist_a", shares="a")], max_len=max_len, n_gap_buckets=4)
    parts = {}
    for part, m in zip(("train", "valid", "test"), n):
        a, b = rng.integers(1, 11, m), rng.integers(1, 11, m)
        y = ((a % 2) != (b % 2)) ^ (rng.random(m) < 0.1)
        parts[part] = _samples(spec, np.stack([a, b], 1), np.zeros((m, 0)), rng.integers(1, 11, (m, max_len, 1)), y)
    return parts


@pytest.fixture(scope="module")
def linear():
    return linear_world()


def test_a_cold_model_below_lr_is_trained_again_from_lr_and_the_warm_one_kept(linear):
    results = evaluate_rank(None, ["bst"], QUICK, samples=linear)
    row, lr_valid = results["bst"], served_valid_auc(results.lr_model, linear["valid"])
    assert row["lr_valid_auc"] == pytest.approx(lr_valid)
    assert row["cold_valid_auc"] < lr_valid - 0.05  # the cold BST is far below LR here
    assert row["start"] == "warm" and row["warm_valid_auc"] > row["cold_valid_auc"]
    assert row["cold_train_s"] > 0 and row["warm_train_s"] > 0  # both runs' times, not the kept one's alone
    assert row["warm_valid_auc"] >= lr_valid - 1e-9  # the warm start keeps at least LR's valid ranking
    assert row["auc"] >= results["lr"]["auc"] - 0.005  # and so does not fall below LR on test either
    assert start_text(row).startswith("warm (cold") and "start" in [c.header for c in rank_table(results).columns]


def test_the_warm_model_of_a_preset_without_a_wide_term_gets_one(linear):
    lr_model, _ = fit_preset("lr", linear, QUICK)
    model, fit = fit_preset("bst", linear, QUICK, lr_model=lr_model)
    assert fit.start["kept"] == "warm" and model.config.linear and model.wide is not None
    assert fit.history[0]["epochs"] == 0.0  # the warm run scored its start (LR's ranking) before any step
    assert served_valid_auc(model, linear["valid"]) == pytest.approx(fit.start["warm_valid_auc"])


def test_a_cold_model_above_lr_is_kept_and_no_warm_model_trained():
    parts = xor_world()
    said: list[str] = []
    results = evaluate_rank(None, ["deepfm"], QUICK, samples=parts, progress=said.append)
    row = results["deepfm"]
    assert row["cold_valid_auc"] > row["lr_valid_auc"] + 0.2  # XOR: LR cannot rank it, DeepFM can
    assert row["start"] == "cold" and row["warm_valid_auc"] is None and row["warm_train_s"] is None
    assert not any("warm start" in line for line in said)  # the fallback did not even train
    assert row["valid_auc"] == pytest.approx(row["cold_valid_auc"], abs=0.02)  # the kept check is the cold one


@pytest.mark.parametrize("mode, starts", [(False, {"cold"}), (True, {"warm"})])
def test_false_and_true_train_one_model_from_the_start_they_name(linear, mode, starts):
    settings = QUICK.model_copy(update={"train": QUICK.train.model_copy(update={"warm_start": mode})})
    row = evaluate_rank(None, ["bst"], settings, samples=linear)["bst"]
    assert {row["start"]} == starts and (row["cold_valid_auc"] is None) == (mode is True)
    if mode:
        assert row["warm_valid_auc"] >= row["lr_valid_auc"] - 1e-9
    else:  # cold, and kept although below LR: false means false
        assert row["warm_valid_auc"] is None and row["cold_valid_auc"] < row["lr_valid_auc"]


def test_warm_start_setting_is_validated():
    assert TrainSettings().warm_start == "auto"
    for good in (True, False, "auto"):
        assert TrainSettings(warm_start=good).warm_start == good
    for bad in ("yes", "Auto", 1, None):
        with pytest.raises(ValueError, match="warm_start"):
            TrainSettings(warm_start=bad)
    from homefeed.rank.part import RankPartSettings

    with pytest.raises((ConfigError, ValueError), match="warm_start"):
        RankPartSettings.from_section(load_config(overrides=['rank.train.warm_start="sometimes"']).rank)
    assert RankPartSettings.from_section(load_config(overrides=["rank.train.warm_start=false"]).rank).train.warm_start is False


def test_start_text_reads_rows_with_or_without_the_start_string():
    assert start_text({"auc": 0.6}) is None
    assert start_text({"start": "cold", "cold_valid_auc": 0.6, "warm_valid_auc": None}) == "cold"
    assert start_text({"start": "warm", "cold_valid_auc": 0.5, "warm_valid_auc": 0.53}) == "warm (cold 0.500, warm 0.530)"
    assert start_text({"cold_valid_auc": 0.5, "warm_valid_auc": 0.53}).startswith("warm")  # `homefeed train` drops strings
    assert start_text({"cold_valid_auc": 0.6, "warm_valid_auc": 0.53}).startswith("cold")


def test_the_bundle_part_saves_exports_and_reports_a_warm_model_with_its_added_wide_term(tmp_path):
    from homefeed.rank.export import load_torchscript, model_inputs
    from homefeed.rank.model import ModelConfig, RankModel
    from homefeed.rank.part import RankPart, RankPartSettings
    from homefeed.rank.samples import build_all
    from homefeed.rank.train import load_checkpoint

    settings = RankPartSettings(preset="din", model=QUICK.model, samples=QUICK.samples, quantize=False,
                                train=QUICK.train.model_copy(update={"warm_start": True}))
    dataset = toy_dataset(n_users=80, days=5)
    part = RankPart().fit(dataset, settings)
    folder = part.save(tmp_path / "rank")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["start"] == "warm" and metrics["warm_valid_auc"] >= metrics["lr_valid_auc"] - 1e-9
    assert 0.5 < metrics["baselines"]["lr"]["auc"] <= 1 and "logloss" in metrics["baselines"]["lr"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["config"]["linear"] is True and meta["start"]["kept"] == "warm"
    # what model.json and best.npz describe is the served TorchScript model
    rebuilt = RankModel(FeatureSpec.model_validate(meta["spec"]), ModelConfig.model_validate(meta["config"]))
    load_checkpoint(rebuilt, folder / "best.npz")
    rebuilt.eval()
    test = build_all(dataset, settings.rank_settings().samples)["test"]
    served = load_torchscript(folder / json.loads((folder / "served.json").read_text())["model"])
    batch = test.take(torch.arange(min(len(test), 200)))
    with torch.inference_mode():
        np.testing.assert_allclose(served(model_inputs(rebuilt, batch)).numpy(), rebuilt(batch).numpy(), atol=1e-4)
    assert metrics["auc"] == pytest.approx(auc(test.tensors["label"].numpy(), predict(rebuilt, test)), abs=1e-6)
