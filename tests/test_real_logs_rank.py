"""benchmarks/real_logs_rank.py: issue 13's Rank verdicts, the seeded user sample, and one log run end to end."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_logs_rank import evaluate_log, sample_users, targets  # noqa: E402

from homefeed.data.dataset import Dataset  # noqa: E402


def test_verdicts_use_the_margin_the_constant_and_deepfm_only_with_a_history():
    rows = {"constant": {"auc": 0.5, "logloss": 0.69}, "lr": {"auc": 0.700, "logloss": 0.60},
            "deepfm": {"auc": 0.7101, "logloss": 0.58}, "din": {"auc": 0.6951, "logloss": 0.59},
            "bst": {"auc": 0.6949, "logloss": 0.70}}
    got = targets(rows, has_history=True)
    assert got["din: auc>=lr-0.005"]["ok"] and not got["bst: auc>=lr-0.005"]["ok"]  # .6951 within the margin, .6949 not
    assert got["deepfm: logloss<constant"]["ok"] and not got["bst: logloss<constant"]["ok"]
    assert got["din>=deepfm"] == {"ok": False, "din": 0.6951, "deepfm": 0.7101}
    assert not any(name.startswith(("lr", "constant")) for name in got)
    assert not any(">=deepfm" in name for name in targets(rows, has_history=False))


def test_the_user_sample_is_seeded_and_keeps_every_event_of_its_users(tiny_dataset_dir):
    ds = Dataset.load(tiny_dataset_dir)
    users = ds.events["user_id"].n_unique()
    a, b = sample_users(ds, 20), sample_users(ds, 20)
    assert a.events["user_id"].n_unique() == 20 and a.events.equals(b.events)
    kept = set(a.events["user_id"].unique().to_list())
    full = ds.events.filter(ds.events["user_id"].is_in(list(kept)))
    assert full.height == a.events.height  # whole histories, not a row sample
    assert sample_users(ds, users + 5) is ds and sample_users(ds, None) is ds
    with pytest.raises(ValueError, match="--max-users"):
        sample_users(ds, 0)


def test_one_log_reports_every_preset_beside_the_baselines_and_honours_set(tiny_dataset_dir):
    ds = sample_users(Dataset.load(tiny_dataset_dir), 60)
    partial = []
    out = evaluate_log("tiny", ds, ["lr", "deepfm"], ["rank.train.epochs=1", "rank.train.warm_start=false"],
                       lambda p: partial.append(list(p["rows"])))  # what `--out` writes at that moment
    assert set(out["rows"]) == {"constant", "lr", "deepfm"} and out["done"] == list(out["rows"])
    assert partial == [["constant", "lr"], ["constant", "lr", "deepfm"]]  # saved after each preset
    assert out["rows"]["deepfm"]["best_epoch"] <= 1  # --set reached the trainer
    assert out["rows"]["deepfm"]["start"] == "cold"  # warm_start=false: never the fallback
    assert set(out["targets"]) >= {"deepfm: auc>=lr-0.005", "deepfm: logloss<constant"}
    assert all(v["ok"] == (v["deepfm"] >= v["lr"] - 0.005) for k, v in out["targets"].items() if "auc>=lr" in k)
