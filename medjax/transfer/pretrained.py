"""A directory of pretrained medjax variables: what `medjax import-weights` writes and `config.init.from` reads.

    DIR/variables/   an Orbax checkpoint (StandardSave) of {"params": ..., "batch_stats": ...}
    DIR/meta.json    where the weights came from (architecture, layout, source file and its sha256, report counts)

The directory is written as `DIR.tmp-<pid>` and renamed when complete, so a reader sees a whole directory or
none. `read_orbax_variables` also reads the `params` / `batch_stats` of a training checkpoint's `state` item (any
optimizer, any model config: nothing about the run that wrote it needs to be known).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from medjax.errors import MedjaxError

VARIABLES = "variables"
META = "meta.json"
COLLECTIONS = ("params", "batch_stats")


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, META)) and os.path.isdir(os.path.join(path, VARIABLES))


def save_pretrained(directory: str | os.PathLike, variables: Mapping[str, Any], meta: dict, *,
                    overwrite: bool = False) -> None:
    """Write `variables` ({"params", "batch_stats"} of arrays) and `meta` (JSON-able) to `directory`, atomically.
    An existing `directory` is an error unless `overwrite`."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise MedjaxError(f"{directory} already exists (choose another --out, or pass --overwrite)")
    import orbax.checkpoint as ocp

    tree = {c: jax.tree.map(np.asarray, dict(variables.get(c) or {})) for c in COLLECTIONS}
    tmp = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, VARIABLES), tree)
        checkpointer.wait_until_finished()
        checkpointer.close()
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            old = f"{directory}.old-{os.getpid()}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_orbax_variables(path: str | os.PathLike, collections: Sequence[str] = COLLECTIONS) -> dict:
    """{collection: nested dict of numpy arrays} for the `collections` present in the Orbax PyTree checkpoint at
    `path` (other entries, e.g. a train state's optimizer state, are not read)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    try:
        checkpointer = ocp.PyTreeCheckpointer()
        metadata = checkpointer.metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        wanted = {c: tree[c] for c in collections if isinstance(tree, Mapping) and c in tree
                  and jax.tree.leaves(tree[c])}
        if "params" not in wanted:
            raise MedjaxError(f"{path} holds no 'params' (not a medjax checkpoint?)")
        item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                          partial_restore=True))
    except MedjaxError:
        raise
    except Exception as e:  # missing / corrupt / truncated checkpoints
        raise MedjaxError(f"cannot read medjax variables from {path}: {type(e).__name__}: {e}") from e
    out = {c: jax.tree.map(np.asarray, dict(restored[c])) for c in wanted}
    out.setdefault("batch_stats", {})
    return out


def load_pretrained(directory: str | os.PathLike) -> tuple[dict, dict]:
    """(variables, meta) from a directory written by `save_pretrained`."""
    directory = os.fspath(directory)
    if not is_pretrained_dir(directory):
        raise MedjaxError(f"{directory} is not a pretrained-weights directory (no {META} and {VARIABLES}/); write "
                          f"one with `medjax import-weights`")
    try:
        with open(os.path.join(directory, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise MedjaxError(f"cannot read {os.path.join(directory, META)}: {e}") from e
    return read_orbax_variables(os.path.join(directory, VARIABLES)), meta
