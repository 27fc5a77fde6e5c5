"""Read and write PyTorch-style state dicts as `{name: numpy array}`: `.pt`/`.pth`, `.safetensors`, `.npz`.

`.pt`/`.pth` go through `torch.load(weights_only=True)` (never plain unpickling: a checkpoint is code otherwise),
which needs torch installed; `.safetensors` and `.npz` need no torch. Common wrappers are unwrapped: a dict holding
the weights under "state_dict", "model", "model_state_dict", "network" or "net" (MONAI bundles, Lightning, our
users' training scripts), and the "module." prefix `DataParallel` / DDP add to every key.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from medjax.errors import MedjaxError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net")
FORMATS = (".pt", ".pth", ".safetensors", ".npz")


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".bin":
        ext = ".pt"  # torch.save'd files named *.bin (Hugging Face style)
    if ext not in FORMATS:
        raise MedjaxError(f"{path}: unknown weight file type {ext!r}; supported: {', '.join(FORMATS)} (and .bin)")
    return ext


def _to_numpy(value, key: str, path: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        return np.asarray(value)
    raise MedjaxError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")


def _unwrap(obj, path: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise MedjaxError(f"{path} holds a {type(obj).__name__}, not a state dict (save model.state_dict())")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            if not any(hasattr(v, "shape") for v in obj.values() if not isinstance(v, Mapping)):
                return _unwrap(inner, path)
    return obj


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Drop `prefix` from every key if every key has it (what DataParallel / DDP wrapping adds)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{parameter name: numpy array}` from a weight file (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MedjaxError(f"weight file not found: {path}")
    ext = _format(path)
    try:
        if ext == ".safetensors":
            from safetensors.numpy import load_file

            raw = load_file(path)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        else:
            try:
                import torch
            except ImportError as e:
                raise MedjaxError(f"{path}: reading .pt/.pth files needs torch (pip install torch), or convert the "
                                  f"file to .safetensors") from e
            raw = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except MedjaxError:
        raise
    except Exception as e:  # corrupt / truncated files, pickles with disallowed globals
        raise MedjaxError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from e
    state = {str(k): _to_numpy(v, k, path) for k, v in raw.items()}
    if not state:
        raise MedjaxError(f"{path} holds no tensors")
    return strip_prefix(state)


def write_state_dict(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Write `state` as `.safetensors`, `.npz` or `.pt` (torch tensors; needs torch), atomically."""
    path = os.fspath(path)
    ext = _format(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    tmp = f"{path}.tmp{ext}"
    if ext == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, tmp)
    elif ext == ".npz":
        np.savez(tmp, **arrays)
    else:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)
    os.replace(tmp, path)
