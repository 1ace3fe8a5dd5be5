"""Export a trained RankModel for serving: TorchScript, ONNX, and an int8-weight quantised copy.

Each export is checked against the eager model on a batch (max |logit difference| < 1e-4), so a
silently different artefact never ships. Ids stay int64 in every format. The exported programs take
only the batch keys the model reads (`model.input_names`: sparse, dense, seq, seq_gap), with the
batch size and the sequence length free. The history may also come once for all rows (`seq` (1, L, S),
`seq_gap` (1, L): one user's request, `one_user_batch`); every export is checked on that form too.

The int8 variant stores every nn.Linear's weight as int8 with one float32 scale per output row
(symmetric per-channel weight-only quantisation, as torchao's Int8WeightOnlyConfig) and multiplies in
float32 after dequantising, with plain tensor ops: no `torch.ao` quantized tensors, which torch
deprecates and which warn at every load. Rounding changes the logits, so `quantize_int8` has no 1e-4
check against the fp32 model: compare AUCs with and without it (the target is a loss <= 0.002) and
`max_abs_diff` for the record; its TorchScript export is checked against the eager int8 model as usual.

    >>> path = export_torchscript(model, batch, "bst.pt")          # raises ExportMismatch if unequal
    >>> served = load_torchscript(path); logits = served(model_inputs(model, batch))
    >>> export_onnx(model, batch, "bst.onnx")                      # needs `onnx` and `onnxruntime`
    >>> small = quantize_int8(model); max_abs_diff(model, small, batch)
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from homefeed.rank.spec import FeatureSpec

TOLERANCE = 1e-4


class ExportMismatch(ValueError):
    """An exported model's logits differ from the eager model's by more than the tolerance."""


def random_batch(spec: FeatureSpec, n: int = 8, *, seed: int = 0) -> dict[str, Tensor]:
    """A valid batch of n random rows in the batch contract of `spec` (for tracing, tests, benchmarks).

    Sequences get random lengths 0..L, right-padded with 0 codes and gap bucket 0.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor([f.vocab_size for f in spec.sparse])
    sparse = (torch.rand(n, len(vocab), generator=g) * vocab).long()  # (n, F) in [0, vocab)
    seq_vocab = vocab[spec.target_indices]  # (S,)
    length = torch.randint(0, spec.max_len + 1, (n, 1), generator=g)
    real = torch.arange(spec.max_len) < length  # (n, L)
    seq = 1 + (torch.rand(n, spec.max_len, len(seq_vocab), generator=g) * (seq_vocab - 1)).long()  # in [1, vocab)
    seq = seq * real.unsqueeze(-1)  # (n, L, S), 0 = padding
    gaps = torch.randint(1, max(spec.n_gap_buckets, 2), (n, spec.max_len), generator=g) * real  # (n, L)
    return {"sparse": sparse, "dense": torch.randn(n, len(spec.dense), generator=g), "seq": seq, "seq_gap": gaps,
            "label": torch.randint(0, 2, (n,), generator=g).float(), "user": torch.arange(n)}


def model_inputs(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The subset of `batch` the model reads, in `model.input_names` order."""
    missing = [k for k in model.input_names if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; the model reads {model.input_names}, the batch has {sorted(batch)}")
    return {k: batch[k] for k in model.input_names}


def one_user_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`batch` with its first row's history standing for every row (seq (1, L, S), seq_gap (1, L)), as serving sends it."""
    return {k: v[:1] if k in ("seq", "seq_gap") else v for k, v in batch.items()}


def max_abs_diff(reference: Callable, candidate: Callable, batch: dict[str, Tensor]) -> float:
    """max |reference(batch) - candidate(batch)| over the logits, both called on the same dict, no grad."""
    with torch.no_grad():
        return float((reference(batch) - candidate(batch)).abs().max())


def _check(diff: float, what: str, atol: float) -> float:
    if not diff < atol:
        raise ExportMismatch(f"{what}: max abs logit difference {diff:.3g} exceeds {atol:g}")
    return diff


def export_torchscript(model: nn.Module, example_batch: dict[str, Tensor], path: str | Path, *, atol: float = TOLERANCE) -> Path:
    """Trace `model` (in eval mode) on `example_batch`, save it to `path`, check it, return the path.

    The traced module takes one dict of tensors (the keys in `model.input_names`).
    """
    model.eval()
    inputs = model_inputs(model, example_batch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance mode; tracing still works
        traced = torch.jit.trace(model, (inputs,), strict=False)
        torch.jit.save(traced, str(path))
    check_torchscript(model, path, example_batch, atol=atol)
    if "seq" in inputs:  # the trace must broadcast one user's history as the eager model does
        check_torchscript(model, path, one_user_batch(example_batch), atol=atol)
    return Path(path)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation warning (torch.export is the successor; tracing still works)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def check_torchscript(model: nn.Module, path: str | Path, batch: dict[str, Tensor], *, atol: float = TOLERANCE) -> float:
    """Load the TorchScript file and compare it with `model` on `batch`; returns the max abs diff."""
    loaded = load_torchscript(path)
    inputs = model_inputs(model, batch)
    return _check(max_abs_diff(lambda b: model(b), lambda b: loaded(b), inputs), f"TorchScript {path}", atol)


class _Positional(nn.Module):
    """The model with one positional tensor per input name (ONNX wants tensors, not a dict).

    Export it in eval mode: the exporter restores the wrapper's own mode afterwards, recursively.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.names = model, list(model.input_names)

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(dict(zip(self.names, tensors)))


_FREE_AXES = {"sparse": {0: "batch"}, "dense": {0: "batch"},  # the history's rows: batch, or 1 (one user)
              "seq": {0: "history_rows", 1: "length"}, "seq_gap": {0: "history_rows", 1: "length"}}


def export_onnx(model: nn.Module, example_batch: dict[str, Tensor], path: str | Path, *, opset: int = 17, atol: float = TOLERANCE) -> Path:
    """Export to ONNX (inputs named as in `model.input_names`, output "logit"), check it with onnxruntime."""
    model.eval()
    inputs = model_inputs(model, example_batch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Positional(model).eval(), tuple(inputs.values()), str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=["logit"],
                          dynamic_axes={k: _FREE_AXES[k] for k in inputs} | {"logit": {0: "batch"}})
    check_onnx(model, path, example_batch, atol=atol)
    if "seq" in inputs:
        check_onnx(model, path, one_user_batch(example_batch), atol=atol)
    return Path(path)


def onnx_session(path: str | Path, *, threads: int = 1):
    """An onnxruntime InferenceSession for `path` (imports onnxruntime lazily: it is optional)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path: str | Path, batch: dict[str, Tensor], *, atol: float = TOLERANCE) -> float:
    """Run the ONNX file with onnxruntime on `batch` and compare with `model`; returns the max abs diff."""
    session = onnx_session(path)
    inputs = model_inputs(model, batch)

    def run(b: dict[str, Tensor]) -> Tensor:
        feeds = {k: np.ascontiguousarray(v.numpy()) for k, v in b.items()}
        return torch.from_numpy(session.run(["logit"], feeds)[0])

    return _check(max_abs_diff(lambda b: model(b), run, inputs), f"ONNX {path}", atol)


class Int8Linear(nn.Module):
    """nn.Linear with its weight stored as int8 rows times a float32 scale per row; computes in float32.

    Symmetric per output channel: scale_o = max_i |W_oi| / 127, W_oi ~ scale_o * round(W_oi / scale_o),
    so each row keeps its own range (a relative error of at most 1/254 of its largest weight).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # (out,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(w / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    @property
    def weight(self) -> Tensor:
        """The dequantised (out, in) float32 weight."""
        return self.weight_int8.float() * self.scale.unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def quantize_int8(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every nn.Linear replaced by an `Int8Linear`; the original is untouched.

    Embedding tables stay float32. The copy runs eagerly and traces to TorchScript like the original.
    """
    quantized = copy.deepcopy(model).eval()
    for parent in list(quantized.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return quantized

