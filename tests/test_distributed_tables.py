"""Every Spark table equals the single-process one, computed in the same test from the same data.

Counts must match exactly; floats bitwise, except popularity, whose sums polars adds in an order of its
own (Spark adds them exactly): within 1e-12 relative there. Top-K lists must match entry for entry,
ties included (score descending, lower item code first). The data: a hand-made log with hot items,
heavy users and tied timestamps (spark_fixtures.hot_log), the hand-written tiny log, and the tiny shop (whose
channel tables and recall figures the `--engine spark` tests in tests/test_cli_engine.py compare).
"""
from __future__ import annotations

import numpy as np
import pytest
from recall_fixtures import tiny_dataset
from spark_fixtures import hot_log

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

from homefeed.recall.crowd import Crowd, CrowdSettings
from homefeed.recall.graph.graph import GraphSettings, build_graph
from homefeed.recall.itemcf import ItemCF, ItemCFSettings
from homefeed.recall.popular import Popular, PopularSettings
from homefeed.recall.ranki2i import RankI2ISettings, smoothed_ctr
from homefeed.recall.swing import Swing, SwingSettings


@pytest.fixture(scope="module")
def hot():
    return hot_log()


@pytest.fixture(scope="module")
def hot_sds(spark, hot):
    from homefeed.distributed.frames import from_dataset

    sds = from_dataset(spark, hot)
    sds.events = sds.events.cache()
    return sds


def test_popular_top_k_equals_single_process(hot, hot_sds):
    from homefeed.distributed.popular import fit_popular

    for settings in (PopularSettings(half_life_days=0.7, max_items=25, weights={"pv": 0.3, "buy": 5.5}),):  # defaults: the build test
        local, dist = Popular(settings=settings).fit(hot), fit_popular(hot_sds, settings)
        assert dist.t_end_ == local.t_end_
        np.testing.assert_array_equal(dist.items_, local.items_)
        np.testing.assert_allclose(dist.scores_, local.scores_, rtol=1e-12, atol=0)


def test_crowd_lists_equal_single_process_bitwise(hot, hot_sds):
    from homefeed.distributed.crowd import fit_crowd

    for settings in (CrowdSettings(source="interactions", levels=[["gender", "age_band"], ["gender"]], top_k=12,
                                   prior_strength=5.0),):  # the defaults: tests/test_cli_engine.py's build test
        local, dist = Crowd(settings=settings).fit(hot), fit_crowd(hot_sds, settings)
        assert dist.source_ == local.source_
        assert dist.groups_ == local.groups_
        np.testing.assert_array_equal(dist.group_users_, local.group_users_)
        np.testing.assert_array_equal(dist.indptr_, local.indptr_)
        np.testing.assert_array_equal(dist.items_, local.items_)
        np.testing.assert_array_equal(dist.scores_, local.scores_)


def test_ranki2i_ctr_statistics_equal_bitwise(hot, hot_sds):
    from homefeed.distributed.ranki2i import pair_ctr

    for settings in (RankI2ISettings(item_prior=3.0, pair_prior=0.5, channels=["swing"]),):  # defaults: the build test
        local = smoothed_ctr(hot.exposures_in("train"), hot.n_items, settings=settings)
        dist = pair_ctr(hot_sds, settings)
        assert dist.global_ctr == local.global_ctr
        np.testing.assert_array_equal(dist.item_ctr, local.item_ctr)
        np.testing.assert_array_equal(dist.pair_keys, local.pair_keys)
        np.testing.assert_array_equal(dist.pair_ctr, local.pair_ctr)
        assert local.pair_keys.size > 50  # the log really has shown (trigger, item) pairs


GRAPHS = [GraphSettings(undirected=True, min_weight=2.0),  # the defaults: on the tiny shop below
          GraphSettings(behavior_weights={"pv": 0.1, "click": 0.7, "buy": 2.3}, max_session_events=40,
                        max_events_per_minute=0.5, session_gap_s=900),
          GraphSettings(sequences="users", behavior_weights={"pv": 0.3, "cart": 1.1})]


@pytest.mark.parametrize("settings", GRAPHS, ids=["undirected", "float-weights", "users"])
def test_session_graph_equals_single_process_bitwise(hot, hot_sds, settings):
    from homefeed.distributed.graph import session_graph

    local = build_graph(hot.events_in("train").drop("session_id", strict=False), hot.n_items, settings=settings)
    dist = session_graph(hot_sds, settings)
    assert local.nnz > 30  # the crawler caps of "float-weights" drop most sessions, not all
    np.testing.assert_array_equal(dist.indptr, local.indptr)
    np.testing.assert_array_equal(dist.indices, local.indices)
    np.testing.assert_array_equal(dist.weights, local.weights)


def test_tiny_log_tables(spark):
    from homefeed.distributed.frames import from_dataset
    from homefeed.distributed.popular import fit_popular

    ds = tiny_dataset()
    sds = from_dataset(spark, ds)
    np.testing.assert_array_equal(fit_popular(sds).items_, Popular().fit(ds).items_)


ITEMCF = {  # the defaults: on the tiny shop, by tests/test_cli_engine.py (`homefeed build --engine spark`)
    "user-once-levels": ItemCFSettings(window="user", iuf=False, normalize="none", top_n=3, levels=4),
    "session-decays-leaf": ItemCFSettings(window="session", pair_half_life_s=3600, age_half_life_s=86_400,
                                          same_category="leaf", normalize="asymmetric", popularity_exponent=0.8,
                                          behavior_weights={"pv": 0.3, "click": 1.1, "cart": 2.7, "buy": 4.2},
                                          max_actions_per_user=12, top_n=7),
    "gap-standard": ItemCFSettings(max_gap_s=3600, window_events=0, session_gap_s=600, same_category="standard",
                                   normalize="asymmetric", popularity_exponent=0.5),
    "user-max": ItemCFSettings(window="user", pair_half_life_s=7200, max_actions_per_user=10, window_events=2),
}


@pytest.mark.parametrize("name", list(ITEMCF))
def test_itemcf_table_equals_single_process_bitwise(hot, hot_sds, name):
    from homefeed.distributed.itemcf import fit_itemcf

    settings = ITEMCF[name]
    standard = (np.arange(hot.n_items) % 4).astype(np.int64)  # any item -> category array works
    local = ItemCF(settings=settings, standard_categories=standard).fit(hot).table_
    dist = fit_itemcf(hot_sds, settings, standard_categories=standard).table_
    assert local.nnz > 50
    np.testing.assert_array_equal(dist.indptr, local.indptr)
    np.testing.assert_array_equal(dist.neighbors, local.neighbors)
    np.testing.assert_array_equal(dist.scores, local.scores)


SWING = {"defaults": SwingSettings(),
         "capped": SwingSettings(self_pairs=False, min_user_items=3, max_user_items=50, max_users_per_item=8, alpha2=1.0,
                                 beta=0.5, behaviors=["pv", "click", "cart"], top_n=5, seed=11)}


@pytest.mark.parametrize("name", list(SWING))
def test_swing_table_equals_single_process_bitwise(hot, hot_sds, name):
    from homefeed.distributed.swing import fit_swing

    local, dist = Swing(settings=SWING[name]).fit(hot).table_, fit_swing(hot_sds, SWING[name]).table_
    assert local.nnz > 50
    np.testing.assert_array_equal(dist.indptr, local.indptr)
    np.testing.assert_array_equal(dist.neighbors, local.neighbors)
    np.testing.assert_array_equal(dist.scores, local.scores)


def test_tiny_shop_session_graph_read_from_the_folder(spark, tiny_dataset_dir):
    """The default session graph of the tiny shop, Spark reading the dataset folder, equals the local one. (Its
    channel tables and recall figures under `--engine spark`: tests/test_cli_engine.py.)"""
    from homefeed.data.dataset import Dataset
    from homefeed.distributed.build import spark_dataset
    from homefeed.distributed.graph import session_graph

    ds = Dataset.load(tiny_dataset_dir)
    graph, want = session_graph(spark_dataset(spark, ds)), build_graph(ds.events_in("train"), ds.n_items)
    assert want.nnz > 1000
    np.testing.assert_array_equal(graph.indptr, want.indptr)
    np.testing.assert_array_equal(graph.indices, want.indices)
    np.testing.assert_array_equal(graph.weights, want.weights)


def test_local_cluster_crosses_processes(hot, tmp_path):
    """Swing on `local-cluster[2,1,1024]` (two executor JVMs, their own Python workers: the pandas UDFs, the grouped
    `applyInPandas` and the numba row kernel run there), read from Parquet: bitwise the local table. (Swing, not
    Item-CF: the same machinery crosses the processes and the check takes ~8 s less; Item-CF is compared on
    local[2] above, with four settings.)"""
    import json
    import subprocess
    import sys

    from conftest import SPARK_TEST_CONF

    hot.save(tmp_path / "ds")
    done = subprocess.run([sys.executable, "-m", "homefeed.distributed.selfcheck", str(tmp_path / "ds"),
                           "--master", "local-cluster[2,1,1024]", "--shuffle-partitions", "2",
                           "--tables", "swing", "--json",
                           *(f"--conf={k}={v}" for k, v in SPARK_TEST_CONF.items())],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"swing"} and report["swing"]["equal"] and report["swing"]["max_rel"] == 0.0, report
