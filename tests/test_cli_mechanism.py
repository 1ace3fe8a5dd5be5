"""`homefeed evaluate mechanism` through the real CLI (typer's CliRunner, in process) on the tiny shop,
with a short CNN run set through `--set` (the default config's figures on the small shop are in the issue note)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from homefeed.cli import app

FAST_IMAGES = json.dumps({"steps": 30, "batch_size": 64, "width": 8, "colours": 16, "hidden": 32, "threads": 2})


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def result(tiny_world):
    done = run("evaluate", "mechanism", tiny_world, "--requests", 80, "--json", "--set", f"mechanism.images={FAST_IMAGES}")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_json_holds_the_truth_scores_and_both_replays(result):
    assert {"standard_category_ari", "image_pair_precision", "image_pair_recall", "on", "off"} <= set(result)
    assert result["standard_category_ari"] >= 0.9
    assert 0.0 <= result["image_pair_precision"] <= 1.0 and 0.0 <= result["image_pair_recall"] <= 1.0
    assert result["requests"] == 80


def test_mechanism_on_beats_off_on_the_page_figures(result):
    on, off = result["on"], result["off"]
    assert on["just_purchased_share"] < off["just_purchased_share"]
    assert on["duplicate_rate"] == 0.0 < off["duplicate_rate"]
    assert on["distinct_standard_per_page"] > off["distinct_standard_per_page"]
    assert 0.0 < on["score_kept"] <= 1.0


def test_a_mistyped_mechanism_setting_is_an_error_naming_it(tiny_world):
    done = CliRunner().invoke(app, ["evaluate", "mechanism", str(tiny_world), "--set", 'mechanism.images={"stepz": 3}'])
    assert done.exit_code != 0
    assert "stepz" in done.stderr
