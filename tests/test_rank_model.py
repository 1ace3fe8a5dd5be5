"""RankModel: seeded golden values per preset, masking, free combinations, config errors, sparse gradients."""
import pytest
import torch
from pydantic import ValidationError

from homefeed.rank.export import random_batch
from homefeed.rank.model import EMBED_STD, FM_EMBED_STD, PRESETS, ModelConfig, RankModel, build_model, model_config
from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField


def tiny_spec(**changes) -> FeatureSpec:
    fields = [("user_id", 6, "user"), ("item_id", 11, "item"), ("category", 5, "item"), ("hour", 4, "context")]
    return FeatureSpec(
        sparse=[SparseField(name=n, vocab_size=v, group=g) for n, v, g in fields],
        dense=[DenseField(name="price", group="item"), DenseField(name="n_clicks", group="cross")],
        sequence=[SequenceField(name="hist_item_id", shares="item_id"), SequenceField(name="hist_category", shares="category")],
        max_len=4, n_gap_buckets=6,
    ).model_copy(update=changes)


BATCH = {  # 3 rows; sequences of length 1, 3, 3, right-padded with 0
    "sparse": torch.tensor([[4, 3, 2, 2], [0, 8, 1, 3], [3, 4, 3, 2]]),
    "dense": torch.tensor([[0.1978, 0.1306], [0.2424, 0.8616], [0.0727, 1.3484]]),
    "seq": torch.tensor([[[5, 3], [0, 0], [0, 0], [0, 0]], [[3, 2], [6, 4], [8, 1], [0, 0]], [[10, 4], [1, 1], [3, 4], [0, 0]]]),
    "seq_gap": torch.tensor([[1, 0, 0, 0], [4, 4, 1, 0], [5, 2, 5, 0]]),
}

# logits of torch.manual_seed(0); build_model(tiny_spec(), preset, embed_dim=4, hidden=[8, 4], embed_std=0.05) on BATCH
# (the goldens pin the arithmetic; embed_std=0.05, the init they were recorded with, keeps them when the default moves)
GOLDEN = {
    "lr": [0.0044933259, 0.010233496, -0.038966738],  # the wide dense weights start at 0
    "wdl": [0.033731062, 0.047037352, 0.034639239],
    "deepfm": [0.02936927, 0.039459459, 0.029715026],
    "pnn": [-0.085082963, -0.077635966, -0.052517388],
    "nfm": [0.18804197, 0.20239343, 0.1884651],
    "dcn": [-0.028943541, 0.10747753, 0.17161338],
    "dcnv2": [0.044669341, 0.06763912, 0.073942885],
    "deepresnet": [0.18933457, 0.17694744, 0.20333253],
    "din": [-0.00021097902, -0.00042450498, -0.0015204614],
    "bst": [0.0014651529, -0.00078508258, 0.0065073483],
}


def test_calibration_scales_and_shifts_the_logit_and_is_saved():
    model = seeded("deepfm")
    with torch.no_grad():
        raw = model(BATCH)
        model.calibration.copy_(torch.tensor([2.0, -0.5]))
        assert torch.allclose(model(BATCH), 2.0 * raw - 0.5)
    assert torch.equal(model.state_dict()["calibration"], torch.tensor([2.0, -0.5]))  # travels with checkpoints and exports


def test_embedding_rows_are_the_rows_the_batch_reads():
    model = seeded("din")
    (table, rows), = model.embedding_rows(BATCH)  # din: one table, no wide weights
    assert table is model.embedding.table
    offsets = model.embedding.offsets
    expected_sparse = (BATCH["sparse"] + offsets).reshape(-1)
    real = BATCH["seq"][..., 0] > 0  # 7 real steps x 2 sequence fields
    assert rows.numel() == expected_sparse.numel() + 2 * int(real.sum())
    assert torch.equal(rows[: expected_sparse.numel()], expected_sparse)
    assert int(rows[expected_sparse.numel()]) == int(offsets[1]) + 5  # row 0's first step: item 5 in item_id's rows
    deepfm = seeded("deepfm")
    tables = deepfm.embedding_rows(BATCH)  # field embeddings, then the wide weights (no sequence block)
    assert [t for t, _ in tables] == [deepfm.embedding.table, deepfm.wide.weights.table]
    assert torch.equal(tables[1][1], (BATCH["sparse"] + deepfm.wide.weights.offsets).reshape(-1))


def seeded(preset: str, spec: FeatureSpec | None = None, **overrides) -> RankModel:
    torch.manual_seed(0)
    return build_model(spec or tiny_spec(), preset, **({"embed_dim": 4, "hidden": [8, 4], "embed_std": 0.05} | overrides)).eval()


def test_every_preset_has_a_golden_value():
    assert set(GOLDEN) == set(PRESETS)


@pytest.mark.parametrize("preset", GOLDEN)
def test_seeded_golden_logits(preset):
    with torch.no_grad():
        logits = seeded(preset)(BATCH)
    assert logits.shape == (3,) and logits.dtype == torch.float32
    assert torch.allclose(logits, torch.tensor(GOLDEN[preset]), rtol=1e-4, atol=1e-7), logits.tolist()


@pytest.mark.parametrize("preset", ["din", "bst"])
def test_padded_positions_change_nothing(preset):
    model = seeded(preset)
    with torch.no_grad():
        base = model(BATCH)
        pad = lambda t: torch.cat([t, torch.zeros((3, 3) + t.shape[2:], dtype=t.dtype)], dim=1)  # noqa: E731
        longer = model({**BATCH, "seq": pad(BATCH["seq"]), "seq_gap": pad(BATCH["seq_gap"])})  # L = 7
        noisy = BATCH["seq"].clone()
        noisy[0, 1:, 1] = 3  # the category of padded steps (the item code 0 marks padding)
        gaps = BATCH["seq_gap"].clone()
        gaps[:, 3] = 5
        noisy_out = model({**BATCH, "seq": noisy, "seq_gap": gaps})
        moved = model({**BATCH, "seq": BATCH["seq"].roll(1, 0)})  # another history does change the logits
    assert torch.allclose(longer, base, atol=1e-6) and torch.allclose(noisy_out, base, atol=1e-6)
    assert not torch.allclose(moved, base, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_rows_are_scored_independently_of_the_batch(preset):
    model = seeded(preset)
    batch = random_batch(tiny_spec(), 16, seed=3)
    with torch.no_grad():
        whole = model(batch)
        alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}) for i in range(3)])
    assert torch.allclose(whole[:3], alone, atol=1e-5)


def test_free_combination_bst_with_cross_and_fm_trains():
    config = ModelConfig(sequence="bst", cross="v2", fm=True, deep="resnet", embed_dim=4, hidden=[8])
    model = RankModel(tiny_spec(), config)
    batch = random_batch(tiny_spec(), 32, seed=0)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])
    loss.backward()
    assert model.cross.layers[0].weight.grad.abs().sum() > 0
    assert model.sequence.layers[0].q.weight.grad.abs().sum() > 0


def test_sparse_gradients_touch_only_looked_up_rows():
    model = seeded("deepfm", sparse_grad=True)
    model(BATCH).sum().backward()
    grad = model.embedding.table.weight.grad
    assert grad.is_sparse
    rows = (BATCH["sparse"] + model.embedding.offsets).unique()
    assert torch.equal(grad.coalesce().indices()[0].unique(), rows)
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert len(model.sparse_parameters()) == 2 and not dense_ids & {id(p) for p in model.sparse_parameters()}
    assert len(dense_ids) + 2 == len(list(model.parameters()))


def test_unknown_config_key_fails_with_its_name():
    with pytest.raises(ValidationError, match="crossing_layers"):
        ModelConfig(crossing_layers=3)
    with pytest.raises(ValueError, match="unknown model setting 'crossing_layers'.*cross_layers"):
        build_model(tiny_spec(), "dcn", crossing_layers=3)
    with pytest.raises(ValueError, match="unknown model preset 'deepfn'; valid presets: lr, wdl, deepfm"):
        build_model(tiny_spec(), "deepfn")
    assert model_config("dcn", cross_layers=5).cross_layers == 5 and PRESETS["dcn"].cross_layers == 3


@pytest.mark.parametrize("settings, message", [
    ({}, "nothing reaches the logit"),
    ({"linear": True, "product": "inner"}, "product feeds the deep tower"),
    ({"linear": True, "bi_interaction": True}, "bi_interaction feeds the deep tower"),
    ({"deep": "mlp", "deep_fields": False}, "the deep tower gets no input"),
    ({"linear": True, "sequence": "din"}, "reaches the logit only through"),
    ({"deep": "mlp", "hidden": []}, "at least 1 item"),
    ({"deep": "mlp", "cross": "v3"}, "cross"),
])
def test_structural_mistakes_raise_when_the_config_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**settings)


def test_spec_mismatches_raise_when_the_model_is_built():
    with pytest.raises(ValueError, match="needs sequence fields"):
        build_model(tiny_spec(sequence=[]), "din")
    with pytest.raises(ValueError, match="E = 2 sequence fields x embed_dim 4 = 8 is not divisible by heads=3"):
        build_model(tiny_spec(), "bst", embed_dim=4, heads=3)


def test_a_spec_without_dense_or_sequence_fields_works():
    spec = tiny_spec(dense=[], sequence=[])
    model = seeded("deepfm", spec)
    assert model.input_names == ["sparse"]
    assert model({"sparse": BATCH["sparse"]}).shape == (3,)


@pytest.mark.parametrize("preset,sparse_grad", [("deepfm", True), ("dcn", True), ("din", True), ("pnn", False), ("deepresnet", False)])
def test_training_first_layer_by_code_equals_the_plain_linear(preset, sparse_grad):
    """FieldLookupLinear (the small fields' part of the deep tower's first layer by code) against the plain
    Linear on the same weights and batch: logits within 1e-5, every gradient within 1e-5, same table rows."""
    spec = tiny_spec(sparse=tiny_spec().sparse + [SparseField(name="shop", vocab_size=600, group="item")])  # one large field
    batch = random_batch(spec, 64, seed=5)
    results = []
    for by_code in (True, False):
        model = seeded(preset, spec, sparse_grad=sparse_grad).train()
        assert model.train_small.tolist() == [0, 1, 2, 3] and model.train_large.tolist() == [4]
        if not by_code:
            model.train_min_rows = 10**9  # every batch takes the plain Linear
        logits = model(batch)
        (logits * torch.linspace(-1, 1, 64)).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (fast, fast_grads), (plain, plain_grads) = results
    assert torch.allclose(fast, plain, atol=1e-5) and not torch.equal(fast, torch.zeros_like(fast))
    assert set(fast_grads) == set(plain_grads)
    for name, g in plain_grads.items():
        f = fast_grads[name]
        assert f.is_sparse == g.is_sparse, name
        if g.is_sparse:  # the same rows (only those the batch read), then the same values
            f, g = f.coalesce(), g.coalesce()
            assert torch.equal(f.indices(), g.indices()), name
            f, g = f.values(), g.values()
        assert torch.allclose(f, g, atol=1e-5), (name, (f - g).abs().max())


def test_training_first_layer_by_code_is_off_for_small_batches_and_without_deep_fields():
    model = seeded("deepfm").train()
    assert model.train_min_rows == 2 * 11 and model.train_sizes == [6, 11, 5, 4]  # twice the largest small vocabulary
    nfm = seeded("nfm").train()
    assert nfm.train_small.numel() == 0  # the deep tower reads only the pool
    batch = random_batch(tiny_spec(), 64, seed=1)
    torch.nn.functional.binary_cross_entropy_with_logits(nfm(batch), batch["label"]).backward()
    assert nfm.deep[0].weight.grad.abs().sum() > 0


def test_training_first_layer_by_code_under_bf16_autocast_trains():
    spec = tiny_spec(sparse=tiny_spec().sparse + [SparseField(name="shop", vocab_size=600, group="item")])
    model, batch = seeded("deepfm", spec, sparse_grad=True).train(), random_batch(spec, 64, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"]).backward()
    assert model.deep[0].weight.grad.dtype == torch.float32 and model.deep[0].weight.grad.abs().sum() > 0
    assert model.embedding.table.weight.grad.is_sparse

def test_embed_std_default_is_small_with_the_fm_term_and_set_by_the_config():
    torch.manual_seed(0)
    spec = tiny_spec()
    std = lambda preset, **kw: float(build_model(spec, preset, **kw).embedding.table.weight.std())  # noqa: E731
    assert std("deepfm") == pytest.approx(FM_EMBED_STD, rel=0.25)  # FM reads the embeddings
    assert std("dcn") == pytest.approx(EMBED_STD, rel=0.25)
    assert std("bst", fm=True) == pytest.approx(FM_EMBED_STD, rel=0.25)  # the rule follows the block, not the preset name
    assert std("deepfm", embed_std=0.2) == pytest.approx(0.2, rel=0.25)
    with pytest.raises(ValidationError, match="embed_std"):
        model_config("deepfm", embed_std=0.0)


def test_small_embed_init_keeps_deepfm_pair_term_small():
    """Why FM gets a small init: its term sums F(F-1)/2 products of random vectors, noise of ~std^2 * sqrt(P D)."""
    spec = tiny_spec()
    batch = random_batch(spec, 256, seed=1)
    spread = {}
    for std in (EMBED_STD, FM_EMBED_STD):
        torch.manual_seed(0)
        model = build_model(spec, "deepfm", embed_std=std).eval()
        with torch.no_grad():
            spread[std] = float(model.fm(model.embedding(batch["sparse"])).std())
    assert spread[FM_EMBED_STD] < spread[EMBED_STD] / 10
