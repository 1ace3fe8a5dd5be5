"""The build loop over the stages' parts: settings checked before any work, one fitting path, content versions."""
import json
import time

import polars as pl
import pytest

from homefeed.bundle import build_bundle, read_manifest, write_part
from homefeed.bundle.manifest import content_version
from homefeed.config import ConfigError, load_config
from homefeed.data.dataset import Dataset, serving_dataset
from homefeed.mechanism import MechanismTables
from homefeed.mechanism.evaluate import evaluate_mechanism
from homefeed.mechanism.part import MechanismPart, MechanismSettings


@pytest.mark.parametrize("override, named", [
    ("rank.train.epocs=2", "rank.train.epocs"),
    ("recall.channel_settings.itemfc.top_n=5", "itemfc"),
    ("serve.slots.flash_sael=4", "flash_sael"),
])
def test_a_typo_fails_before_any_part_is_built(tiny_dataset_dir, tmp_path, override, named):
    out = tmp_path / "bundle"
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=named):
        build_bundle(tiny_dataset_dir, out, load_config(overrides=[override]))
    assert time.perf_counter() - t0 < 30  # no stage ran: the old code fitted mechanism and recall first
    assert not (out / "mechanism").exists() and not (out / "manifest.json").exists()


def test_content_version_follows_content_not_the_clock(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for bundle, payload in ((a, b"one"), (b, b"two")):
        (bundle / "recall").mkdir(parents=True)
        (bundle / "recall" / "t.npz").write_bytes(payload)
        write_part(bundle, "recall")  # both within the same second
    va, vb = read_manifest(a)["version"], read_manifest(b)["version"]
    assert va != vb and len(va) == 16
    write_part(a, "recall")  # rebuilt with equal content: same version
    assert read_manifest(a)["version"] == va == content_version(read_manifest(a))


def test_bundle_serves_what_evaluation_scores(tiny_bundle, tiny_dataset_dir):
    """The bundle's mechanism tables are MechanismTables.fit on everything before the test days."""
    ds = Dataset.load(tiny_dataset_dir)
    served = MechanismPart.load(tiny_bundle / "mechanism").tables
    cfg = load_config(overrides=['mechanism.images={"steps": 30}'])
    settings = MechanismSettings.from_section(cfg.mechanism)
    past = serving_dataset(ds)
    again = MechanismTables.fit(ds.items, past.events_in("train"), config=settings.config, end_ts=past.split.train_end,
                                images=False)
    assert served.categories.table.equals(again.categories.table)
    assert served.periods.table.equals(again.periods.table)
    manifest = read_manifest(tiny_bundle)
    rank = manifest["parts"]["rank"]["metrics"]
    assert "int8_valid_auc_loss" in rank and "int8_auc" not in rank  # the int8 choice is made on valid, not test
    assert (rank["served"] == "model_int8.pt") == (rank["int8_valid_auc_loss"] <= 0.002)


def test_category_overrides_reach_both_the_bundle_and_evaluation(tiny_world, tiny_dataset_dir, tmp_path):
    items = pl.read_parquet(tiny_world / "items.parquet")
    leaves = items["leaf_category"].unique().sort().to_list()[:2]
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("leaf_category,standard\n" + "".join(f"{leaf},forced\n" for leaf in leaves))
    cfg = load_config(overrides=[f"mechanism.category_overrides={json.dumps(str(overrides))}",
                                 'mechanism.images={"steps": 5}'])
    settings = MechanismSettings.from_section(cfg.mechanism)
    ds = Dataset.load(tiny_dataset_dir)
    part = MechanismPart().fit(serving_dataset(ds), settings)
    codes = ds.vocabs["leaf_category"].encode(pl.Series([str(v) for v in leaves])).to_list()
    table = part.tables.categories.table.filter(pl.col("leaf_category").is_in(codes))
    assert table["standard_category"].n_unique() == 1  # both leaves forced into one standard category
    result = evaluate_mechanism(tiny_world, config=settings.config, overrides=overrides, n_requests=50)
    assert result["standard_categories"] >= 1
