"""Checkpoints of a ranking model: weights as .npz (float32 arrays by parameter name) and metadata as .json; no pickle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def save_checkpoint(model: nn.Module, stem: str | Path, *, meta: dict | None = None) -> Path:
    """Weights as `<stem>.npz` (float32 arrays by parameter name) and `meta` as `<stem>.json`; no pickle."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
              for k, v in model.state_dict().items()}
    np.savez(stem.with_suffix(".npz"), **arrays)
    stem.with_suffix(".json").write_text(json.dumps(meta or {}, indent=1))
    return stem.with_suffix(".npz")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by `save_checkpoint` into `model` (names and shapes must match)."""
    with np.load(path, allow_pickle=False) as arrays:
        state = model.state_dict()
        extra = sorted(set(arrays.files) - set(state))
        missing = sorted(set(state) - set(arrays.files))
        if extra or missing:
            raise ValueError(f"{path}: checkpoint does not fit {type(model).__name__}: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        model.load_state_dict({k: torch.from_numpy(arrays[k]).to(state[k].dtype) for k in state})
    return model
