"""Export MIND's user tower for serving outside Python: TorchScript and ONNX, each checked against the eager tower.

The exported program maps (behaviours (B, L) int64 item codes, 0 = padding; profile (B, F) int64
codes) to (interests (B, K, D) float32, mask (B, K) bool, triggers (B, K) int64: the behaviour each
interest drew most from, 0 if none), with the batch size free and L fixed to
the tower's `max_len` (the serving side always left-pads to L). It holds the item tower and the
side-information codes, so a server needs only item codes. The tower is traced in eval mode, where
the routing logits are the fixed seeded draw (`routing.CapsuleRouting`), so the program is
deterministic. A file whose interests differ from the eager tower's by 1e-4 or more raises
`ExportMismatch` and is never shipped, the same rule as `homefeed.rank.export` (not imported here:
recall and rank do not import each other).

    >>> export_torchscript(model.user, behaviors, profile, "user_tower.pt")     # doctest: +SKIP
    >>> export_onnx(model.user, behaviors, profile, "user_tower.onnx")          # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

TOLERANCE = 1e-4
INPUTS, OUTPUTS = ["behaviors", "profile"], ["interests", "mask", "triggers"]


class ExportMismatch(ValueError):
    """An exported tower's interests or mask differ from the eager tower's."""


def max_abs_diff(reference: Callable, candidate: Callable, behaviors: Tensor, profile: Tensor) -> float:
    """max |interests| difference of two towers on one batch; inf when their masks or triggers differ."""
    with torch.no_grad():
        (a, mask_a, trig_a), (b, mask_b, trig_b) = reference(behaviors, profile), candidate(behaviors, profile)
    if not (torch.equal(mask_a.bool(), mask_b.bool()) and torch.equal(trig_a.long(), trig_b.long())):
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def _check(diff: float, what: str, atol: float) -> float:
    if not diff < atol:
        raise ExportMismatch(f"{what}: max abs interest difference {diff:.3g} exceeds {atol:g} (inf: masks or triggers differ)")
    return diff


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def trace(tower: nn.Module, behaviors: Tensor, profile: Tensor, *, atol: float = TOLERANCE) -> torch.jit.ScriptModule:
    """The tower (set to eval mode) traced on the example batch and checked against it: the program served and saved.

    A traced program runs a request in about a third of the eager tower's CPU time (no Python per layer).
    """
    tower.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance mode; tracing still works
        traced = torch.jit.trace(tower, (behaviors, profile))
    _check(max_abs_diff(tower, traced, behaviors, profile), "traced user tower", atol)
    return traced


def export_torchscript(tower: nn.Module, behaviors: Tensor, profile: Tensor, path: str | Path, *,
                       atol: float = TOLERANCE, traced: torch.jit.ScriptModule | None = None) -> Path:
    """Save `traced` (default: `tower` traced on the example batch) to `path`, check the file against the eager
    tower, return the path."""
    traced = trace(tower, behaviors, profile) if traced is None else traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, str(path))
    check_torchscript(tower, path, behaviors, profile, atol=atol)
    return Path(path)


def check_torchscript(tower: nn.Module, path: str | Path, behaviors: Tensor, profile: Tensor, *,
                      atol: float = TOLERANCE) -> float:
    """Max abs interest difference of the TorchScript file against `tower` on the batch (raises past atol)."""
    loaded = load_torchscript(path)
    return _check(max_abs_diff(tower, loaded, behaviors, profile), f"TorchScript {path}", atol)


def export_onnx(tower: nn.Module, behaviors: Tensor, profile: Tensor, path: str | Path, *, opset: int = 17,
                atol: float = TOLERANCE) -> Path:
    """Export to ONNX (inputs behaviors, profile; outputs interests, mask; batch axis free), check with onnxruntime."""
    tower.eval()
    axes = {name: {0: "batch"} for name in INPUTS + OUTPUTS}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, (behaviors, profile), str(path), dynamo=False, opset_version=opset,
                          input_names=INPUTS, output_names=OUTPUTS, dynamic_axes=axes)
    check_onnx(tower, path, behaviors, profile, atol=atol)
    return Path(path)


def onnx_session(path: str | Path, *, threads: int = 1):
    """An onnxruntime InferenceSession for `path` (onnxruntime is imported lazily: it is optional)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(tower: nn.Module, path: str | Path, behaviors: Tensor, profile: Tensor, *, atol: float = TOLERANCE) -> float:
    """Max abs interest difference of the ONNX file (run by onnxruntime) against `tower` (raises past atol)."""
    session = onnx_session(path)

    def run(b: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feeds = {"behaviors": np.ascontiguousarray(b.numpy()), "profile": np.ascontiguousarray(p.numpy())}
        return tuple(torch.from_numpy(x) for x in session.run(OUTPUTS, feeds))

    return _check(max_abs_diff(tower, run, behaviors, profile), f"ONNX {path}", atol)
