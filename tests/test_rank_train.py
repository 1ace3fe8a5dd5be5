"""Training loop on real presets: learns the planted signal, determinism, early stopping restores the
best epoch, calibration on valid, the mini-batch aware L2, checkpoints, optimisers."""
import math

import numpy as np
import pytest
import torch

from homefeed.evaluate.metrics import auc, logloss
from homefeed.rank.model import build_model
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import (RowPenalty, TrainSettings, batch_size_for, check_steps, checks_in_epoch, fit_platt, load_checkpoint, platt_generalises,
                                 predict, predict_logits, train)
from test_rank_samples import toy_dataset

SMALL = {"embed_dim": 4, "hidden": [16]}
FAST = TrainSettings(epochs=4, batch_size=256, lr=0.01, patience=2, seed=3, threads=1)


@pytest.fixture(scope="module")
def parts():
    return build_all(toy_dataset(n_users=150, days=6), SampleSettings(drop_bots=False, active_min_actions=0))


def _fit(parts, preset="deepfm", settings=FAST, **model):
    torch.manual_seed(settings.seed)
    net = build_model(parts["train"].spec, preset, **(SMALL | model))
    return net, train(net, parts["train"], parts["valid"], settings)


def _labels(samples):
    return samples.tensors["label"].numpy()


@pytest.mark.parametrize("preset", ["lr", "deepfm", "din"])
def test_training_learns_the_planted_signal(parts, preset):
    model, result = _fit(parts, preset)
    test_auc = auc(_labels(parts["test"]), predict(model, parts["test"]))
    assert result.best_valid_auc > 0.7 and test_auc > 0.7, (preset, result.best_valid_auc, test_auc)
    assert result.history[result.best_check]["valid_auc"] == result.best_valid_auc
    assert result.best_epoch == result.history[result.best_check]["epochs"] > 0
    assert result.samples_per_s > 0 and len(result.history) >= 1


def test_same_seed_gives_the_same_model(parts):
    m1, r1 = _fit(parts)
    m2, r2 = _fit(parts)
    assert r1.best_valid_auc == r2.best_valid_auc and r1.calibration == r2.calibration
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, r3 = _fit(parts, settings=FAST.model_copy(update={"seed": 4}))
    assert r3.history[0]["loss"] != r1.history[0]["loss"]


def test_early_stopping_restores_the_best_epoch(parts):
    # a learning rate far too high for deepfm: valid AUC peaks early, then `patience` worse epochs stop it
    settings = FAST.model_copy(update={"lr": 0.1, "epochs": 30, "patience": 2, "calibrate": False, "checks_per_epoch": 1})
    rows = []
    model, result = _fit(parts, settings=settings, hidden=[64, 64])
    assert len(result.history) == result.best_check + 1 + settings.patience < settings.epochs  # stopped, not ran out
    best = result.history[result.best_check]
    assert all(h["valid_auc"] <= best["valid_auc"] for h in result.history[result.best_check + 1:])
    p = predict(model, parts["valid"])
    assert auc(_labels(parts["valid"]), p) == pytest.approx(best["valid_auc"])  # the kept weights, not the last epoch's
    assert logloss(_labels(parts["valid"]), p) == pytest.approx(best["valid_logloss"])
    assert best["valid_auc"] != result.history[-1]["valid_auc"]
    _, again = _fit(parts, settings=settings.model_copy(update={"epochs": 3}), hidden=[64, 64])
    assert [h["valid_auc"] for h in again.history] == [h["valid_auc"] for h in result.history[:3]]  # progress is per epoch
    train(build_model(parts["train"].spec, "lr"), parts["train"], parts["valid"], settings.model_copy(update={"epochs": 2}),
          progress=rows.append)
    assert [r["epoch"] for r in rows] == [0, 1] and {"valid_auc", "valid_logloss", "loss"} <= set(rows[0])


def test_monitor_logloss_stops_when_the_logloss_stops_falling(parts):
    # a learning rate too small to change anything: epoch 0 stays best by logloss, `patience` stale epochs stop it
    settings = FAST.model_copy(update={"lr": 1e-12, "epochs": 10, "patience": 3, "monitor": "logloss", "embedding_l2": 0.0,
                                       "checks_per_epoch": 1})
    _, result = _fit(parts, settings=settings)
    assert result.best_check == 0 and result.best_epoch == 1.0 and len(result.history) == 4


def test_checks_inside_an_epoch_keep_the_best_weights_between_epoch_ends(parts):
    assert check_steps(20, 4) == {5, 10, 15, 20} and check_steps(3, 4) == {1, 2, 3} and check_steps(7, 1) == {7}
    assert [checks_in_epoch(e, 4) for e in range(6)] == [4, 2, 2, 1, 1, 1] and checks_in_epoch(0, 1) == 1
    settings = FAST.model_copy(update={"lr": 0.1, "epochs": 30, "patience": 2, "calibrate": False, "checks_per_epoch": 4})
    model, result = _fit(parts, settings=settings, hidden=[64, 64])
    steps = math.ceil(len(parts["train"]) / result.batch_size)
    epochs = [h["epochs"] for h in result.history]
    schedule = [round(e + s / steps, 4) for e in range(30) for s in sorted(check_steps(steps, checks_in_epoch(e, 4)))]
    assert epochs == schedule[:len(epochs)]  # 4 checks in the first epoch, 2 in the next two, then one per epoch
    best = result.history[result.best_check]
    assert epochs[-1] - best["epochs"] >= settings.patience > epochs[-2] - best["epochs"]  # stopped at the first check past patience
    assert len(epochs) < len(schedule)  # stopped, not ran out
    assert result.best_epoch == best["epochs"]
    assert auc(_labels(parts["valid"]), predict(model, parts["valid"])) == pytest.approx(best["valid_auc"])
    assert best["valid_auc"] == max(h["valid_auc"] for h in result.history)


def test_calibration_matches_the_valid_rate_without_changing_the_ranking(parts):
    settings = FAST.model_copy(update={"lr": 0.05})
    raw_model, raw = _fit(parts, settings=settings.model_copy(update={"calibrate": False}))
    model, result = _fit(parts, settings=settings)
    scale, shift = result.calibration
    assert model.calibration.tolist() == pytest.approx([scale, shift]) and scale > 0
    y, p = _labels(parts["valid"]), predict(model, parts["valid"])
    assert p.mean() == pytest.approx(y.mean(), abs=1e-4)  # Platt's optimum: mean prediction = observed rate
    assert result.best_valid_logloss <= raw.best_valid_logloss + 1e-9
    assert auc(_labels(parts["test"]), p_test := predict(model, parts["test"])) == pytest.approx(
        auc(_labels(parts["test"]), predict(raw_model, parts["test"])))
    assert np.allclose(predict_logits(model, parts["test"]), scale * predict_logits(raw_model, parts["test"]) + shift, atol=1e-4)
    assert p_test.shape == (len(parts["test"]),)


def test_fit_platt_recovers_scale_and_shift_and_never_reverses_the_ranking():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-1.0, abs=0.05)
    a, b = fit_platt(-z, y)  # a model that ranks backwards: the constant predictor, not a flipped model
    assert a == 0.0 and b == pytest.approx(math.log(y.mean() / (1 - y.mean())))
    a, b = fit_platt(100 * z + 30, y)  # far from calibrated: the line search still converges
    assert a == pytest.approx(0.005, abs=3e-4) and b == pytest.approx(-1.15, abs=0.05)
    with pytest.raises(ValueError, match="as many labels as logits"):
        fit_platt(z, y[:10])


def test_platt_is_kept_only_when_it_pays_on_held_out_users():
    kept_noise = kept_signal = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        users, y = rng.integers(0, 500, 4000), (rng.random(4000) < 0.3).astype(float)
        kept_noise += platt_generalises(rng.normal(0, 3, 4000), y, users)  # logits unrelated to the labels
        kept_signal += platt_generalises(0.3 * y + rng.normal(0, 1, 4000), y, users)  # a weak real signal
    assert kept_signal == 20 and kept_noise <= 8  # noise passes only when both halves happen to agree


def test_row_penalty_is_plain_l2_over_the_rows_read(parts):
    model = build_model(parts["train"].spec, "din", **SMALL)
    train_part = parts["train"]
    penalty = RowPenalty(model, train_part, l2=0.5, batch_size=256)
    whole = train_part.take(torch.arange(len(train_part)))  # one batch of all N rows: N / B = 1, each row read n_r times
    expected = 0.0
    for table, rows in model.embedding_rows(whole):
        read = torch.unique(rows)
        expected += float(table.weight.detach()[read].square().sum())
    assert float(penalty(whole)) == pytest.approx(0.5 * expected, rel=1e-5)


def test_embedding_l2_shrinks_the_embeddings(parts):
    norms = {}
    for l2 in (0.0, 0.1):
        model, _ = _fit(parts, "din", settings=FAST.model_copy(update={"embedding_l2": l2}))
        norms[l2] = float(model.embedding.table.weight.norm())
    assert norms[0.1] < 0.5 * norms[0.0]


def test_small_train_sets_get_enough_steps():
    s = TrainSettings(batch_size=2048, min_steps_per_epoch=20)
    assert batch_size_for(100_000, s) == 2048 and batch_size_for(20_000, s) == 1000 and batch_size_for(500, s) == 64
    assert batch_size_for(10, TrainSettings(batch_size=8)) == 8


def test_checkpoint_round_trip(parts, tmp_path):
    model, result = _fit(parts, settings=FAST.model_copy(update={"checkpoint_dir": str(tmp_path)}))
    assert result.checkpoint == tmp_path / "best.npz" and (tmp_path / "best.json").exists()
    fresh = build_model(parts["train"].spec, "deepfm", **SMALL)
    load_checkpoint(fresh, result.checkpoint)
    assert np.allclose(predict(fresh, parts["test"]), predict(model, parts["test"]))  # calibration included
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(build_model(parts["train"].spec, "lr"), result.checkpoint)


@pytest.mark.parametrize("optimizer", ["sparse_adam", "adagrad"])
def test_sparse_embedding_optimisers(parts, optimizer):
    model, result = _fit(parts, settings=FAST.model_copy(update={"embedding_optimizer": optimizer}))
    assert model.embedding.table.sparse and model.wide.weights.table.sparse and result.best_valid_auc > 0.7


def test_bf16_autocast_trains(parts):
    _, result = _fit(parts, settings=FAST.model_copy(update={"bf16": True, "epochs": 2}))
    assert result.best_valid_auc > 0.65


def test_empty_parts_are_a_clear_error(parts):
    empty = parts["valid"].__class__({k: v[:0] for k, v in parts["valid"].tensors.items()}, parts["valid"].ts[:0],
                                     parts["valid"].spec, parts["valid"].encoders, "exposures")
    with pytest.raises(ValueError, match="0 valid"):
        train(build_model(parts["train"].spec, "lr"), parts["train"], empty, FAST)
