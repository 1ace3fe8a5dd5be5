"""The served fast path gives the page the reference path gives: a speed-up may change the time, never the page.

On the tiny DIN bundle, each request is served three ways in fresh pipelines over fresh state stores: as
served (online features, the user's history once for all candidates, `shared_sequence`), with the history
repeated per candidate (the batch the model was trained on), and by the training feature code
(`ServedRanker.exact`). Scores agree to float rounding and every slot shows the same items in the same order.
"""
import numpy as np
import polars as pl
import pytest

from homefeed.config import Config
from homefeed.serve.artefacts import ServingBundle
from homefeed.serve.pipeline import Pipeline
from homefeed.serve.schemas import HomepageRequest
from homefeed.serve.state import SQLiteStore


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return ServingBundle.load(tiny_bundle)


def active_users(bundle, n: int) -> tuple[list[str], int]:
    """The n users with the longest histories in the bundle, and a time after every event of the log."""
    indptr, _, _, ts = bundle.history
    codes = np.argsort(-np.diff(indptr), kind="stable")[:n]
    raw = bundle.vocabs["user"].decode(pl.Series(codes.astype(np.int32), dtype=pl.Int32)).cast(pl.String).to_list()
    return raw, max(int(ts.max()) + 60, bundle.history_end + 3600)


def pages(bundle, tmp_path, name: str, users: list[str], now: int) -> list[dict[str, list[str]]]:
    p = Pipeline(bundle, SQLiteStore(tmp_path / f"{name}.db"), Config())
    try:
        out = []
        for user in users:
            page = p.homepage(HomepageRequest(user_id=user, now=now))
            assert page.degraded == [], (name, user, page.degraded)
            out.append({slot: [it.item_id for it in items] for slot, items in page.slots.items()})
        return out
    finally:
        p.close()


def test_fast_path_serves_the_reference_page(bundle, tmp_path):
    ranker = bundle.ranker
    assert ranker is not None and ranker.shared_sequence, "the tiny DIN bundle should serve the shared history"
    users, now = active_users(bundle, 6)
    served = pages(bundle, tmp_path, "served", users, now)
    probe = Pipeline(bundle, SQLiteStore(tmp_path / "probe.db"), Config())
    state = probe.user_state(users[0], now)
    cands = probe.recall(state, [])
    probe.close()
    fast = ranker.score(state, cands, {})
    try:
        ranker.shared_sequence = False  # the history once per candidate, as in training
        per_row = ranker.score(state, cands, {})
        rows_pages = pages(bundle, tmp_path, "per_row", users, now)
        ranker.exact = True  # the training feature code on a one-user slice
        exact = ranker.score(state, cands, {})
        exact_pages = pages(bundle, tmp_path, "exact", users, now)
    finally:
        ranker.shared_sequence, ranker.exact = True, False
    assert len(cands) > 50 and np.ptp(fast) > 0, "a degenerate request proves nothing"
    np.testing.assert_allclose(fast, per_row, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6)
    assert served == rows_pages
    assert served == exact_pages
    assert sum(len(v) for v in served[0].values()) == sum(Config().serve.slots.values())


def test_frozen_model_gives_the_logits_of_the_file(bundle, tiny_bundle, tmp_path):
    """ServedRanker serves its TorchScript frozen (weights folded into constants): the same logits as the file loaded."""
    import torch

    from homefeed.rank.export import load_torchscript

    ranker = bundle.ranker
    as_file = load_torchscript(tiny_bundle / "rank" / ranker.model_name).eval()
    users, now = active_users(bundle, 3)
    probe = Pipeline(bundle, SQLiteStore(tmp_path / "probe.db"), Config())
    try:
        for user in users:
            state = probe.user_state(user, now)
            batch = ranker.features(state, probe.recall(state, []), {}, shared_sequence=True)
            inputs = {k: batch[k] for k in ranker.inputs}
            with torch.inference_mode():
                np.testing.assert_allclose(ranker.model(inputs).numpy(), as_file(inputs).numpy(), rtol=0, atol=1e-6)
    finally:
        probe.close()


class InlineRecall(Pipeline):
    """The plain path: every channel run on the request thread, in order, then merged (no pool, no budget)."""

    def recall(self, state, degraded):
        k = self.cfg.recall.k_per_channel
        results = {name: ch.recall(state, k) for name, ch in self.bundle.channels.items()}
        return self.bundle.merger.merge(results, k=self.k_merge, seen=state.items)


def test_recall_on_the_pool_serves_the_page_of_inline_recall(bundle, tmp_path):
    """The served recall (`recall_runner.ChannelRun`: the channels in turn on one pool thread) merges the same lists
    as running them inline, so every full request and the next template serve the same page."""
    users, now = active_users(bundle, 6)
    cfg = Config.model_validate({"serve": {"recall_budget_ms": 30_000}})  # no channel late on a busy machine
    served, inline = Pipeline(bundle, SQLiteStore(tmp_path / "a.db"), cfg), InlineRecall(bundle, SQLiteStore(tmp_path / "b.db"), cfg)
    try:
        for user in users:
            state = served.user_state(user, now)
            a, b = served.recall(state, []), inline.recall(state, [])
            assert np.array_equal(a.items, b.items) and np.array_equal(a.channels, b.channels)
            for t in (now, now + 1):  # a full request, then the next template
                pa, pb = (p.homepage(HomepageRequest(user_id=user, now=t)) for p in (served, inline))
                assert pa.degraded == [] and pa.template_index == pb.template_index
                assert ({s: [(i.item_id, i.score) for i in v] for s, v in pa.slots.items()}
                        == {s: [(i.item_id, i.score) for i in v] for s, v in pb.slots.items()})
    finally:
        served.close()
        inline.close()
