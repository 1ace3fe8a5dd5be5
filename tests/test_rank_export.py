"""Export: TorchScript and ONNX give the eager logits (max abs diff < 1e-4) at other batch sizes and
sequence lengths than the traced example; int8 quantisation replaces the linears, stays close, and warns nothing."""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from homefeed.rank.export import (
    ExportMismatch, Int8Linear, check_onnx, check_torchscript, export_onnx, export_torchscript, load_torchscript,
    max_abs_diff, model_inputs, quantize_int8, random_batch,
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


def test_int8_linear_rounds_each_row_to_its_own_scale():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight[1] *= 1000  # one row far larger: a per-tensor scale would flatten the others to 0
    q = Int8Linear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127
    step = lin.weight.detach().abs().amax(dim=1, keepdim=True) / 127  # (3, 1) each row's rounding step
    assert ((q.weight - lin.weight).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(5, 6)
    torch.testing.assert_close(q(x), lin(x), rtol=0, atol=float(step.max() * x.abs().sum(dim=1).max()))


@pytest.mark.parametrize("preset", ["deepfm", "din", "bst"])
def test_quantized_model_replaces_every_linear_and_stays_close(preset, tmp_path):
    m = model(preset)
    q = quantize_int8(m)
    assert not any(isinstance(x, nn.Linear) for x in q.modules())
    assert sum(isinstance(x, Int8Linear) for x in q.modules()) == sum(isinstance(x, nn.Linear) for x in m.modules()) > 0
    diff = max_abs_diff(m, q, OTHER)
    assert 0 < diff < 0.01  # measured 3e-4 .. 5e-4 here (torch.ao dynamic int8: 3e-3 .. 2e-2)
    path = export_torchscript(q, EXAMPLE, tmp_path / f"{preset}_int8.pt")  # the served artefact
    assert check_torchscript(q, path, OTHER) < 1e-4
    assert max_abs_diff(lambda b: m(b), load_torchscript(path), model_inputs(m, OTHER)) < 0.01


def test_int8_artefact_stores_int8_weights(tmp_path):
    m = build_model(SPEC, "bst", embed_dim=4, hidden=[512, 256]).eval()  # linears outweigh the small tables
    fp32 = export_torchscript(m, EXAMPLE, tmp_path / "fp32.pt").stat().st_size
    int8 = export_torchscript(quantize_int8(m), EXAMPLE, tmp_path / "int8.pt").stat().st_size
    assert int8 < 0.4 * fp32, (int8, fp32)


def test_quantizing_and_serving_int8_warns_nothing(tmp_path):
    """torch.ao quantized tensors warn at every start on torch 2.13: in Python when quantising, and from C++
    (on stderr, past `warnings`) when a server loads the TorchScript file. Neither may happen."""
    m = model("bst")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_int8(m)
        q(model_inputs(m, OTHER))
        path = export_torchscript(q, EXAMPLE, tmp_path / "int8.pt")
    bad = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, (DeprecationWarning, UserWarning))]
    assert not bad, bad
    serve = ("import sys; sys.path.insert(0, sys.argv[2]); import torch\n"
             "from homefeed.rank.export import load_torchscript, model_inputs\n"
             "from test_rank_export import OTHER, model\n"
             "with torch.inference_mode():  # as ServedRanker.predict\n"
             "    print(float(load_torchscript(sys.argv[1])(model_inputs(model('bst'), OTHER)).sum()))\n")
    run = subprocess.run([sys.executable, "-W", "always", "-c", serve, str(path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with torch.no_grad():
        assert float(run.stdout) == pytest.approx(float(q(model_inputs(m, OTHER)).sum()), abs=1e-3)
    assert "warn" not in run.stderr.lower(), run.stderr
