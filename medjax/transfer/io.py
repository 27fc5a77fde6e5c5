"""Read and write PyTorch-style state dicts as `{name: numpy array}`: `.pt`/`.pth`, `.safetensors`, `.npz`.

`.pt`/`.pth` go through `torch.load(weights_only=True)` (never plain unpickling: a checkpoint is code otherwise),
which needs torch installed; `.safetensors` and `.npz` need no torch. Common wrappers are unwrapped: a dict holding
the weights under "state_dict", "model", "model_state_dict", "network" or "net" (MONAI bundles, Lightning, our
users' training scripts), and the "module." prefix `DataParallel` / DDP add to every key (and the "_orig_mod." of
`torch.compile`).

Arrays come back in numpy's own dtypes: bfloat16 (and float8) tensors are widened to float32, losslessly, from
`.pt` and `.safetensors` alike. `write_state_dict` keeps bfloat16 arrays (ml_dtypes, what JAX uses) as bfloat16 in
`.pt` and `.safetensors`; `.npz` cannot hold them and refuses. Key order is the file's for `.pt` and `.npz`;
`.safetensors` files keep none (they come back sorted by dtype, then name).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

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
        if value.is_floating_point() and str(value.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            value = value.float()  # bfloat16 / float8: numpy has no such dtype; float32 holds them exactly
        try:
            return value.numpy()
        except (TypeError, RuntimeError) as e:
            raise MedjaxError(f"{path}: entry {key!r} has dtype {value.dtype}, which numpy cannot hold") from e
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        value = np.asarray(value)
        if value.dtype.kind == "V" and value.dtype.itemsize <= 2:  # ml_dtypes bfloat16 / float8 (safetensors)
            try:
                value = value.astype(np.float32)
            except (TypeError, ValueError):
                pass
        if value.dtype.kind in "biufc":
            return value
        raise MedjaxError(f"{path}: entry {key!r} has dtype {value.dtype}, not a numeric tensor")
    raise MedjaxError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")


def _clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _refused_global(e: Exception) -> str | None:
    """The global torch.load(weights_only=True) refused ("GLOBAL __main__.C ..."), if that is what `e` says.

    torch words every unpickling failure as a page of "Weights only load failed" advice with terminal colour
    codes, corrupt files included; only a disallowed global means the file holds more than tensors."""
    m = re.search(r"Unsupported global: (GLOBAL \S+)", _clean(str(e)))
    return m.group(1) if m else None


def _first_line(e: Exception) -> str:
    """`e` in one line for a one-line MedjaxError; for torch's weights-only advice page, the actual error in it."""
    text = _clean(str(e))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else '(no message)'}"


def _unwrap(obj, path: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise MedjaxError(f"{path} holds a {type(obj).__name__}, not a state dict (save model.state_dict())")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and all(isinstance(k, str) for k in inner):  # empty: "holds no tensors"
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
        raise MedjaxError(f"weight file not found: {path}" if not os.path.exists(path)
                          else f"{path} is not a weight file (a directory?)")
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
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                refused = _refused_global(e)
                if refused is None:
                    raise
                raise MedjaxError(f"{path}: torch.load(weights_only=True) refused it ({refused} is not allowed): "
                                  f"the file pickles Python objects besides tensors, e.g. torch.save(model) rather "
                                  f"than torch.save(model.state_dict()); re-save just the state dict (only from a "
                                  f"file you trust)") from e
            raw = _unwrap(obj, path)
    except MedjaxError:
        raise
    except Exception as e:  # corrupt / truncated / not really this format
        raise MedjaxError(f"cannot read weights from {path} (corrupt, truncated or not a {ext} file): "
                          f"{_first_line(e)}") from e
    state = {str(k): _to_numpy(v, k, path) for k, v in raw.items()}
    if not state:
        raise MedjaxError(f"{path} holds no tensors")
    return strip_prefix(strip_prefix(state, "_orig_mod."))  # torch.compile, then DataParallel / DDP


def _is_bfloat16(a: np.ndarray) -> bool:
    return a.dtype.kind == "V" and a.dtype.name == "bfloat16"


def _torch_tensor(a: np.ndarray):
    import torch

    if _is_bfloat16(a):
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a if a.flags.writeable else a.copy())  # torch warns on read-only arrays (e.g. jax's)


def write_state_dict(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Write `state` as `.safetensors`, `.npz` or `.pt` (torch tensors; needs torch), atomically: a temporary file
    next to `path` is renamed over it once complete, and removed if writing fails."""
    path = os.fspath(path)
    ext = _format(path)
    # asarray + order="C", not ascontiguousarray: that turns 0-d arrays (num_batches_tracked) into shape (1,)
    arrays = {str(k): np.asarray(v, order="C") for k, v in state.items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "biufc" and not _is_bfloat16(a):
            raise MedjaxError(f"cannot write {path}: entry {k!r} has dtype {a.dtype}, not a numeric array")
        if ext == ".npz" and _is_bfloat16(a):
            raise MedjaxError(f"cannot write {path}: .npz cannot hold bfloat16 (entry {k!r}); write .safetensors or "
                              f".pt, or cast to float32")
    tmp = f"{path}.tmp{ext}"
    try:
        if ext == ".safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, tmp)
        elif ext == ".npz":
            with open(tmp, "wb") as f:  # a file object: np.savez(name) would append ".npz" to some names
                np.savez(f, **arrays)
        else:
            try:
                import torch
            except ImportError as e:
                raise MedjaxError(f"cannot write {path}: .pt/.pth files need torch; write .safetensors") from e
            torch.save({k: _torch_tensor(a) for k, a in arrays.items()}, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise MedjaxError(f"cannot write {path}: {e}") from e
        raise
