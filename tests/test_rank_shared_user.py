"""One user's request passes its history once (seq (1, L, S)): the same logits as the history repeated per row.

In eval mode the sequence blocks then do the user-side work once (embedding the history, DIN's key
projection, BST's K/V of the behaviour tokens); training keeps the per-row path, which is the reference
here. The exported TorchScript (fp32 and int8) must broadcast the history as the eager model does, and
the served ranker sends it once. Also: the online cross counts' bincount path equals their sorted path.
"""
import json

import numpy as np
import polars as pl
import pytest
import torch

from homefeed.rank.blocks_sequence import BST, TargetAttention, TransformerLayer
from homefeed.rank.export import export_torchscript, load_torchscript, one_user_batch, quantize_int8, random_batch
from homefeed.rank.model import PRESETS, ModelConfig, RankModel
from homefeed.rank.online import _window_matches
from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField

SPEC = FeatureSpec(
    sparse=[SparseField(name=n, vocab_size=v, group=g) for n, v, g in
            [("user_id", 30, "user"), ("age", 9, "user"), ("item_id", 50, "item"), ("category", 7, "item"),
             ("channel", 4, "context")]],
    dense=[DenseField(name="price", group="item"), DenseField(name="n_clicks", group="cross")],
    sequence=[SequenceField(name="hist_item_id", shares="item_id"), SequenceField(name="hist_category", shares="category")],
    max_len=6, n_gap_buckets=8,
)
CONFIGS = {name: PRESETS[name] for name in PRESETS} | {  # every preset, and every sequence block in other company
    "mean_pool": ModelConfig(sequence="mean", deep="mlp"),
    "bst_2_layers": ModelConfig(sequence="bst", deep="mlp", transformer_layers=2),
    "bst_cross_fm_resnet": ModelConfig(sequence="bst", cross="v2", fm=True, deep="resnet", hidden=[8]),
    "din_cross_only": ModelConfig(sequence="din", cross="v1"),
}


def model(name: str) -> RankModel:
    torch.manual_seed(0)
    config = ModelConfig.model_validate(CONFIGS[name].model_dump() | {"embed_dim": 4, "hidden": [16, 8]})
    return RankModel(SPEC, config).eval()


def one_user(n: int = 40, seed: int = 1, *, user_row: int = 0) -> tuple[dict, dict]:
    """(batch with the history once, the same batch with that history repeated on every row)."""
    b = random_batch(SPEC, n, seed=seed)
    b["seq"][user_row, :3] = torch.tensor([[5, 2], [9, 1], [5, 2]])  # a real history (random lengths may be 0)
    b["seq_gap"][user_row, :3] = torch.tensor([6, 3, 1])
    b = {**b, "seq": b["seq"][user_row:user_row + 1], "seq_gap": b["seq_gap"][user_row:user_row + 1]}
    repeated = {**b, "seq": b["seq"].expand(n, -1, -1).contiguous(), "seq_gap": b["seq_gap"].expand(n, -1).contiguous()}
    return b, repeated


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_history_once_equals_it_repeated_and_the_training_path(name):
    m = model(name)
    once, repeated = one_user()
    with torch.no_grad():
        shared = m(once)
        eval_rows = m(repeated)
        m.train()  # the per-row path training runs (no dropout here): the reference
        reference = m(repeated)
        m.eval()
    assert shared.shape == (40,)
    torch.testing.assert_close(shared, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(eval_rows, reference, rtol=0, atol=1e-5)
    if m.sequence is not None:  # the history matters: another one changes the logits
        seq = once["seq"].clone()
        seq[0, 0] = torch.tensor([33, 4])  # another first step
        other = {**once, "seq": seq}
        with torch.no_grad():
            assert not torch.allclose(m(other), shared, atol=1e-6)


def test_every_sequence_block_and_preset_is_covered():
    blocks = {c.sequence for c in CONFIGS.values()}
    assert {"mean", "din", "bst"} <= blocks and set(PRESETS) <= set(CONFIGS)


@pytest.mark.parametrize("users", ["one", "per_row"])
def test_attend_target_is_the_last_row_of_the_full_layer(users):
    torch.manual_seed(3)
    layer = TransformerLayer(8, 2, 12).eval()
    B, L = 5, 4
    target = torch.randn(B, 1, 8)
    context = torch.randn(1 if users == "one" else B, L, 8)
    real = torch.tensor([[True, True, False, False]]).expand(context.shape[0], L)
    full_x = torch.cat([context.expand(B, -1, -1), target], dim=1)
    full_real = torch.cat([real.expand(B, -1), torch.ones(B, 1, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        want = layer(full_x, full_real, last_only=True)
        got = layer.attend_target(target, context, real)
        context_changed = layer.attend_target(target, context + torch.randn_like(context) * (~real).unsqueeze(-1), real)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(context_changed, got, rtol=0, atol=1e-6)  # padded steps change nothing


@pytest.mark.parametrize("block", ["din", "bst"])
def test_blocks_take_one_history_for_many_targets(block):
    torch.manual_seed(4)
    m = (TargetAttention(8, [6, 4]) if block == "din" else BST(8, n_gap_buckets=5, heads=2, ffn_dim=12)).eval()
    query, keys = torch.randn(7, 8), torch.randn(1, 3, 8)
    gaps, mask = torch.tensor([[4, 2, 0]]), torch.tensor([[True, True, False]])
    with torch.no_grad():
        once = m(query, keys, gaps, mask)
        rows = m(query, keys.expand(7, -1, -1), gaps.expand(7, -1), mask.expand(7, -1))
    assert once.shape == (7, 8)
    torch.testing.assert_close(once, rows, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["din", "bst", "mean_pool"])
def test_exported_models_broadcast_the_history(name, tmp_path):
    m = model(name)
    example = random_batch(SPEC, 8, seed=2)  # traced on a per-row batch, as the build traces training rows
    once, repeated = one_user(300, seed=5, user_row=7)
    inputs = lambda b: {k: b[k] for k in m.input_names}  # noqa: E731
    loaded = load_torchscript(export_torchscript(m, example, tmp_path / "m.pt"))
    quant = quantize_int8(m)
    loaded_q = load_torchscript(export_torchscript(quant, example, tmp_path / "q.pt"))
    with torch.no_grad():
        fp32 = m(repeated)
        torch.testing.assert_close(loaded(inputs(once)), fp32, rtol=0, atol=1e-5)
        int8_once, int8_rows = loaded_q(inputs(once)), quant(repeated)
    torch.testing.assert_close(int8_once, int8_rows, rtol=0, atol=1e-4)  # int8 quantisation of the same tensors
    assert float((int8_once - fp32).abs().max()) < 0.05  # and still close to fp32


def test_one_user_batch_keeps_the_first_history():
    b = random_batch(SPEC, 6, seed=0)
    once = one_user_batch(b)
    assert once["seq"].shape == (1, 6, 2) and once["seq_gap"].shape == (1, 6) and once["sparse"].shape == (6, 5)
    assert torch.equal(once["seq"][0], b["seq"][0])


def test_served_ranker_sends_the_history_once(tiny_bundle):
    from homefeed.config import Config
    from homefeed.serve.artefacts import ServingBundle
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.state import SQLiteStore

    served = json.loads((tiny_bundle / "rank" / "served.json").read_text())
    assert served["shared_sequence"] is True
    bundle = ServingBundle.load(tiny_bundle)
    ranker = bundle.ranker
    assert ranker.shared_sequence
    p = Pipeline(bundle, SQLiteStore(tiny_bundle.parent / "shared_user_state.db"), Config())
    try:
        indptr, _, _, ts = bundle.history
        code = int(np.argmax(np.diff(indptr)))  # the most active user, just after their history
        raw = str(bundle.vocabs["user"].decode(pl.Series([code], dtype=pl.Int32))[0])
        state = p.user_state(raw, int(ts[indptr[code + 1] - 1]) + 60)
        cands = p.recall(state, [])
    finally:
        p.close()
    once = ranker.features(state, cands, {}, shared_sequence=True)
    rows = ranker.features(state, cands, {})
    assert once["seq"].shape[0] == 1 and rows["seq"].shape[0] == len(cands) > 50 and (once["seq_gap"] > 0).any()
    assert torch.equal(rows["seq"], once["seq"].expand_as(rows["seq"]))
    np.testing.assert_allclose(ranker.score(state, cands, {}), ranker.predict(rows), rtol=0, atol=1e-6)


def test_cross_counts_bincount_path_equals_the_sorted_path():
    rng = np.random.default_rng(0)
    windows = np.array([3, 50, 10**9])
    for _ in range(30):
        keys = rng.integers(0, 40, int(rng.integers(1, 200)))
        age = rng.integers(0, 100, keys.size)
        queries = rng.integers(-2, 45, 300)
        dense = _window_matches(keys, age, queries, windows)
        far = 1 << 40  # codes past DENSE_KEYS: the sorted path, same answer
        sparse = _window_matches(keys + far, age, np.where(queries > 0, queries + far, queries), windows)
        np.testing.assert_array_equal(dense, sparse)
        want = np.array([[((keys == q) & (age <= w)).sum() if q > 0 else 0 for q in queries] for w in windows])
        np.testing.assert_array_equal(dense, want)


@pytest.mark.parametrize("real_steps", [0, 1, 6])
def test_din_shared_history_keeps_only_real_steps_and_equals_the_rows(real_steps, tmp_path):
    """Serving DIN keeps only the user's real steps in one (B, E) x (E, L'H) product: same logits, whatever L'."""
    m = model("din")
    once, _ = one_user(50, seed=6)
    once["seq"] = once["seq"].clone()
    once["seq"][0, real_steps:] = 0  # right padding after `real_steps` real steps
    once["seq"][0, :real_steps] = torch.randint(1, 7, (real_steps, 2))
    once["sparse"] = once["sparse"].clone()
    once["sparse"][:, 2] = torch.arange(50)  # 50 distinct candidate items: no tied scores
    repeated = {**once, "seq": once["seq"].expand(50, -1, -1).contiguous()}
    traced = load_torchscript(export_torchscript(m, random_batch(SPEC, 8, seed=2), tmp_path / "din.pt"))
    with torch.no_grad():
        shared, served = m(once), traced({k: once[k] for k in m.input_names})
        m.train()
        reference = m(repeated)
    torch.testing.assert_close(shared, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(served, reference, rtol=0, atol=1e-5)
    order = lambda x: torch.argsort(x, descending=True, stable=True)  # noqa: E731
    assert torch.equal(order(shared), order(reference))  # the same candidates in the same order: the same page


@pytest.mark.parametrize("name", ["din", "deepfm", "pnn", "nfm", "deepresnet", "bst_cross_fm_resnet"])
@pytest.mark.parametrize("large_vocab", [30, 500])  # every field small (no GEMM part), or user_id and item_id large
def test_deep_tower_by_field_equals_the_plain_first_layer(name, large_vocab, tmp_path):
    """Eval mode computes the small fields' share of the tower's first layer by lookup: the same logits (and in
    TorchScript, fp32 and int8), for a batch past `small_batch` and one under it."""
    spec = SPEC.model_copy(update={"sparse": [f.model_copy(update={"vocab_size": large_vocab}) if f.name in ("user_id", "item_id")
                                              else f for f in SPEC.sparse]})
    torch.manual_seed(0)
    config = ModelConfig.model_validate(CONFIGS[name].model_dump() | {"embed_dim": 4, "hidden": [16, 8]})
    m = RankModel(spec, config).eval()
    small = (len(spec.sparse) - (large_vocab > 64) * 2) if config.deep_fields else 0  # NFM's tower reads no fields
    assert m.small.numel() == small and m.small_batch <= 200
    big, small = random_batch(spec, 300, seed=8), random_batch(spec, 5, seed=9)
    loaded = load_torchscript(export_torchscript(m, random_batch(spec, 8, seed=2), tmp_path / "m.pt"))
    quant = quantize_int8(m)
    loaded_q = load_torchscript(export_torchscript(quant, random_batch(spec, 8, seed=2), tmp_path / "q.pt"))
    inputs = lambda b: {k: b[k] for k in m.input_names}  # noqa: E731
    for batch in (big, small):
        with torch.no_grad():
            by_field, served, served_q = m(batch), loaded(inputs(batch)), loaded_q(inputs(batch))
            m.train()
            plain = m(batch)  # the training path: the plain Linear on the whole input
            m.eval()
            quant.train()
            plain_q = quant(batch)
            quant.eval()
        torch.testing.assert_close(by_field, plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(served, plain, rtol=0, atol=1e-5)
        torch.testing.assert_close(served_q, plain_q, rtol=0, atol=1e-4)
