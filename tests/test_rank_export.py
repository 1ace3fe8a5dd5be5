"""Export: TorchScript and ONNX give the eager logits (max abs diff < 1e-4) at other batch sizes and
sequence lengths than the traced example; int8 dynamic quantisation replaces the linears and stays close."""
import pytest
import torch
from torch import nn

from homefeed.rank.export import (
    ExportMismatch, check_onnx, check_torchscript, export_onnx, export_torchscript, load_torchscript, max_abs_diff,
    model_inputs,
    quantize_dynamic, random_batch,
)
from homefeed.rank.model import PRESETS, build_model
from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField

SPEC = FeatureSpec(
    sparse=[SparseField(name=n, vocab_size=v, group=g) for n, v, g in
            [("user_id", 30, "user"), ("item_id", 50, "item"), ("category", 7, "item"), ("channel", 4, "context")]],
    dense=[DenseField(name="price", group="item")],
    sequence=[SequenceField(name="hist_item_id", shares="item_id"), SequenceField(name="hist_category", shares="category")],
    max_len=5, n_gap_buckets=8,
)
EXAMPLE = random_batch(SPEC, 4, seed=0)
OTHER = random_batch(SPEC.model_copy(update={"max_len": 9}), 33, seed=1)  # other batch size and length


def model(preset: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC, preset, embed_dim=4, hidden=[16, 8]).eval()


def test_random_batch_follows_the_contract():
    b = random_batch(SPEC, 64, seed=2)
    assert b["sparse"].dtype == b["seq"].dtype == b["seq_gap"].dtype == torch.int64
    assert b["sparse"].shape == (64, 4) and b["dense"].shape == (64, 1) and b["seq"].shape == (64, 5, 2)
    assert (b["sparse"] < torch.tensor([30, 50, 7, 4])).all() and (b["seq"][..., 1] < 7).all()
    real = b["seq"][..., 0] > 0
    assert torch.equal(real, b["seq"][..., 1] > 0) and torch.equal(real, b["seq_gap"] > 0)
    assert (real[:, 1:] <= real[:, :-1]).all()  # right-padded


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_torchscript_equals_eager(preset, tmp_path):
    m = model(preset)
    path = export_torchscript(m, EXAMPLE, tmp_path / f"{preset}.pt")
    assert check_torchscript(m, path, OTHER) < 1e-4
    loaded = load_torchscript(path)
    assert loaded(model_inputs(m, OTHER)).shape == (33,)


@pytest.mark.parametrize("preset", ["deepfm", "dcnv2", "pnn", "din", "bst"])
def test_onnx_equals_eager(preset, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = model(preset)
    path = export_onnx(m, EXAMPLE, tmp_path / f"{preset}.onnx")
    assert check_onnx(m, path, OTHER) < 1e-4


def test_a_changed_model_fails_the_check(tmp_path):
    m = model("deepfm")
    path = export_torchscript(m, EXAMPLE, tmp_path / "m.pt")
    with torch.no_grad():
        m.bias += 0.01
    with pytest.raises(ExportMismatch, match="exceeds 0.0001"):
        check_torchscript(m, path, OTHER)


def test_quantized_bst_replaces_every_linear_and_stays_close(tmp_path):
    m = model("bst")
    q = quantize_dynamic(m)
    assert not any(type(x) is nn.Linear for x in q.modules())
    assert any(type(x) is nn.Linear for x in m.modules())  # the original is untouched
    assert 0 < max_abs_diff(m, q, OTHER) < 0.05
    path = export_torchscript(q, EXAMPLE, tmp_path / "bst_int8.pt")  # the served artefact
    assert check_torchscript(q, path, OTHER) < 1e-4


def test_missing_input_is_named():
    m = model("bst")
    with pytest.raises(KeyError, match="seq_gap"):
        model_inputs(m, {k: v for k, v in EXAMPLE.items() if k != "seq_gap"})
