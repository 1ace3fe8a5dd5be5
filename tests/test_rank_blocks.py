"""Rank blocks: a shape test for each, hand-computed values on tiny inputs, masking of padded steps."""
import itertools

import pytest
import torch

from homefeed.rank.blocks import FM, MLP, BiInteraction, CrossNet, FieldEmbedding, InnerProduct, OuterProduct, ResidualMLP, Wide
from homefeed.rank.blocks_sequence import BST, MeanPool, TargetAttention, TransformerLayer

B, F, D, L, E = 3, 4, 5, 6, 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_field_embedding_puts_each_field_at_its_offset_in_one_table():
    emb = FieldEmbedding([3, 2, 4], D)
    assert emb.table.weight.shape == (9, D) and emb.offsets.tolist() == [0, 3, 5]
    codes = torch.tensor([[2, 1, 3], [0, 0, 0]])
    out = emb(codes)  # (2, 3, D)
    assert out.shape == (2, 3, D)
    assert torch.equal(out[0], emb.table.weight[[2, 4, 8]])
    seq = torch.tensor([[[1, 2], [0, 0]]])  # (1, L=2, 2 fields sharing fields 1 and 2)
    assert torch.equal(emb.lookup(seq, emb.offsets[[1, 2]])[0, 0], emb.table.weight[[4, 7]])


def test_field_embedding_rejects_an_empty_vocabulary():
    with pytest.raises(ValueError, match="at least 1 code"):
        FieldEmbedding([3, 0], D)


def test_wide_sums_code_weights_and_the_dense_map():
    wide = Wide([3, 2], 2)
    with torch.no_grad():
        wide.weights.table.weight.copy_(torch.arange(5.0).unsqueeze(-1))  # weight of row r is r
        wide.dense.weight.copy_(torch.tensor([[10.0, 100.0]]))
    out = wide(torch.tensor([[2, 1], [0, 0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert out.tolist() == [2 + 4 + 10, 0 + 3 + 100]
    assert Wide([3, 2], 0)(torch.tensor([[1, 1]])).shape == (1,)


def test_fm_and_bi_interaction_equal_the_sum_over_field_pairs():
    e = torch.randn(B, F, D)
    pairs = sum(e[:, i] * e[:, j] for i, j in itertools.combinations(range(F), 2))  # (B, D)
    assert BiInteraction()(e).shape == (B, D)
    assert torch.allclose(BiInteraction()(e), pairs, atol=1e-5)
    assert FM()(e).shape == (B,)
    assert torch.allclose(FM()(e), pairs.sum(-1), atol=1e-5)


def test_inner_product_lists_each_pair_once_in_row_major_order():
    e = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])  # F=3, D=2
    assert InnerProduct(3)(e).tolist() == [[2.0, 0.0, 3.0]]  # <e0,e1>, <e0,e2>, <e1,e2>


def test_outer_product_applies_one_kernel_per_pair():
    op = OuterProduct(F, D)
    e = torch.randn(B, F, D)
    out = op(e)
    assert out.shape == (B, F * (F - 1) // 2)
    i, j = op.rows[4].item(), op.cols[4].item()
    assert torch.allclose(out[:, 4], torch.einsum("bd,de,be->b", e[:, i], op.kernel[4], e[:, j]), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 sparse fields"):
        InnerProduct(1)


def test_cross_v1_layer_by_hand():
    net = CrossNet(2, 1, version="v1")
    with torch.no_grad():
        net.w.copy_(torch.tensor([[1.0, 2.0]]))
        net.b.copy_(torch.tensor([[0.5, -0.5]]))
    x0 = torch.tensor([[1.0, 3.0]])  # x0 . w = 7
    assert net(x0).tolist() == [[1 * 7 + 0.5 + 1, 3 * 7 - 0.5 + 3]]


def test_cross_v2_shapes_and_errors():
    assert CrossNet(E, 3, version="v2")(torch.randn(B, E)).shape == (B, E)
    with pytest.raises(ValueError, match="valid: v1, v2"):
        CrossNet(E, 2, version="v3")


def test_towers_output_their_declared_width():
    x = torch.randn(B, 10)
    mlp, res = MLP(10, [7, 4], dropout=0.1), ResidualMLP(10, [6, 3])
    assert mlp(x).shape == (B, 4) == (B, mlp.out_dim)
    assert res(x).shape == (B, 6) == (B, res.out_dim)
    with pytest.raises(ValueError, match="at least one"):
        MLP(10, [])


def _sequence_inputs():
    query, keys = torch.randn(B, E), torch.randn(B, L, E)
    gaps = torch.randint(1, 5, (B, L))
    mask = torch.arange(L) < torch.tensor([[6], [2], [0]])  # row lengths 6, 2, 0
    return query, keys, gaps * mask, mask


SEQUENCE_BLOCKS = {
    "mean": lambda: MeanPool(),
    "din": lambda: TargetAttention(E, [6, 4]),
    "bst": lambda: BST(E, n_gap_buckets=5, heads=2, n_layers=2, ffn_dim=12),
}


@pytest.mark.parametrize("name", SEQUENCE_BLOCKS)
def test_sequence_block_shape_and_padded_steps_change_nothing(name):
    block = SEQUENCE_BLOCKS[name]().eval()
    query, keys, gaps, mask = _sequence_inputs()
    out = block(query, keys, gaps, mask)
    assert out.shape == (B, E) and torch.isfinite(out).all()
    noisy_keys = torch.where(mask.unsqueeze(-1), keys, torch.randn(B, L, E) * 100)
    noisy_gaps = torch.where(mask, gaps, torch.randint(1, 5, (B, L)))
    assert torch.allclose(block(query, noisy_keys, noisy_gaps, mask), out, atol=1e-5)
    # truncating row 1 to its 2 real steps gives the same answer
    assert torch.allclose(block(query[1:2], keys[1:2, :2], gaps[1:2, :2], mask[1:2, :2]), out[1:2], atol=1e-5)


def test_mean_pool_by_hand_and_empty_sequence_is_zero():
    query, keys, gaps, mask = _sequence_inputs()
    out = MeanPool()(query, keys, gaps, mask)
    assert torch.allclose(out[1], keys[1, :2].mean(0)) and torch.equal(out[2], torch.zeros(E))


def test_din_weights_are_not_normalised_and_empty_sequence_is_zero():
    din = TargetAttention(E, [6])
    query, keys, gaps, mask = _sequence_inputs()
    out = din(query, keys, gaps, mask)
    assert torch.equal(out[2], torch.zeros(E))
    doubled = din(query, torch.cat([keys[:, :2], keys[:, :2]], 1), gaps[:, :4], torch.ones(B, 4, dtype=torch.bool))
    single = din(query, keys[:, :2], gaps[:, :2], torch.ones(B, 2, dtype=torch.bool))
    assert torch.allclose(doubled, 2 * single, atol=1e-5)  # sum pooling keeps the intensity of repeated interest


def test_transformer_last_only_equals_the_last_row_of_the_full_layer():
    layer = TransformerLayer(E, 2, 12).eval()
    x, real = torch.randn(B, L, E), torch.arange(L) < torch.tensor([[6], [3], [1]])
    real[:, -1] = True
    full, last = layer(x, real), layer(x, real, last_only=True)
    assert full.shape == (B, L, E) and last.shape == (B, 1, E)
    assert torch.allclose(full[:, -1:], last, atol=1e-5)


def test_bst_uses_time_gaps_and_rejects_bad_heads():
    bst = BST(E, n_gap_buckets=5, heads=2).eval()
    query, keys, gaps, mask = _sequence_inputs()
    out = bst(query, keys, gaps, mask)
    assert not torch.allclose(bst(query, keys, (gaps % 4 + 1) * mask, mask)[:2], out[:2])
    with pytest.raises(ValueError, match="not divisible by 3"):
        BST(E, n_gap_buckets=5, heads=3)


def test_sum_by_slot_equals_index_add_per_field():
    from homefeed.rank.first_layer import sum_by_slot
    g = torch.Generator().manual_seed(0)
    grad, slots = torch.randn(50, 7, generator=g), torch.randint(0, 9, (50, 3), generator=g)  # repeats within and across rows
    expected = torch.zeros(9, 7)
    for s in range(3):
        expected.index_add_(0, slots[:, s], grad)
    assert torch.allclose(sum_by_slot(grad, slots, 9), expected, atol=1e-5)
    assert torch.allclose(sum_by_slot(grad.double(), slots, 9), expected.double(), atol=1e-5)  # the torch path
    assert torch.equal(sum_by_slot(grad[:, :0], slots, 9), torch.zeros(9, 0))
