"""Which case goes to which split: the one place the folder and CSV sources (image_folder, cine_folder, msd) decide.

A source lists its cases by id (the image file's stem, e.g. ``21`` or ``hippocampus_001``) and, where its layout
says so, the split each case comes from (``given``): ``data.train_root`` / ``val_root`` / ``test_root`` folders, a
``split`` column in a pairs CSV, or the Decathlon's test entries that have labels. A split file
(``data.split_file``: nnU-Net's ``splits_final.json``, a list of folds of which ``data.fold`` is used, or
``{"train": [...], "val": [...], "test": [...]}``) names cases the same way and adds to the layout: it may pick the
val cases among the layout's training cases, and must place every case the layout leaves open (a case it does
not list is an error, never dropped or sent to test silently). ``resolve`` returns ``{split: [case indices]}``:

test
    the cases given as test (by the layout or the file; then possibly none), else a seeded ``data.test_fraction``
    of all cases.
val
    the cases given as val (a ``val_root`` or CSV ``val`` rows, or the file's ``val`` list when it has one), else
    fold ``data.fold`` of ``data.num_folds``-fold cross-validation over the non-test cases (nnU-Net's split:
    scikit-learn ``KFold(k, shuffle=True, random_state=12345)`` over the sorted case ids), else a seeded
    ``data.val_fraction`` (of all cases by default; of the non-test cases when the test split is given).
train
    the rest; it must not be empty.

Two ways of choosing the same split are an error naming both: a split file and ``num_folds``; a ``val_root`` and
a file's ``val`` list or ``num_folds``; ``test_fraction`` / ``val_fraction`` away from their defaults where that
split is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from medjax import schema
from medjax.errors import MedjaxError

SPLITS = ("train", "val", "test")
ROOT_KEYS = {"train": "train_root", "val": "val_root", "test": "test_root"}
NNUNET_SEED = 12345  # nnU-Net's generate_crossval_split


def split_cases(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) case indices, each sorted: a seeded permutation's first round(val_fraction * n) cases are
    val (at least 1 when val_fraction > 0, and at least 1 case is always left for training). Same arguments,
    same split, on every machine (numpy's PCG64)."""
    if int(n) != n or n < 1:
        raise MedjaxError(f"split_cases needs n >= 1 cases, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise MedjaxError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = int(n)
    n_val = 0 if val_fraction == 0 else min(n - 1, max(1, int(round(val_fraction * n))))
    if val_fraction > 0 and n_val == 0:
        raise MedjaxError(f"cannot hold out a validation case from {n} case(s): need at least 2")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(j) for j in perm[n_val:]), sorted(int(j) for j in perm[:n_val])


def case_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """The default split of n cases: `test_fraction` of all cases first (`split_cases` with `seed`), then
    `val_fraction` of all cases out of the rest (with `seed + 1`); empty val / test splits are left out."""
    _check_fractions(val_fraction, test_fraction)
    rest, test = split_cases(n, test_fraction, seed)
    train, val = _draw_val(rest, val_fraction * n / len(rest), seed, f"val_fraction={val_fraction} of {n} cases")
    return _named(train, val, test)


def kfold(n: int, num_folds: int, fold: int, seed: int = NNUNET_SEED) -> tuple[list[int], list[int]]:
    """(train, val) positions 0..n-1 of fold `fold`: scikit-learn's `KFold(num_folds, shuffle=True,
    random_state=seed)` without scikit-learn (a `RandomState(seed)` shuffle, then folds of n // k cases, the
    first n % k one larger). nnU-Net applies it to its sorted case ids; both lists are sorted."""
    if not 0 <= fold < num_folds:
        raise MedjaxError(f"config.data.fold={fold} is out of range: config.data.num_folds={num_folds} makes "
                          f"folds 0..{num_folds - 1}")
    if num_folds > n:
        raise MedjaxError(f"config.data.num_folds={num_folds} folds need at least {num_folds} cases outside the "
                          f"test split, there are {n}")
    order = np.random.RandomState(seed).permutation(n)
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    start = int(sizes[:fold].sum())
    val = sorted(int(i) for i in order[start:start + sizes[fold]])
    return sorted(set(range(n)) - set(val)), val


def split_roots(cfg: ml_collections.ConfigDict) -> list[tuple[str | None, str]]:
    """[(split, folder)]: the `data.train_root` / `val_root` / `test_root` folders (relative to `data.root`,
    absolute kept) that are set, or [(None, data.root)] when none is."""
    given = [(split, cfg[key]) for split, key in ROOT_KEYS.items() if cfg[key]]
    if not given:
        return [(None, cfg.root or "")]
    if not cfg.train_root:
        raise MedjaxError(f"config.data.{ROOT_KEYS[given[0][0]]} needs config.data.train_root (the folder of the "
                          f"training cases, in the same layout)")
    return [(split, os.path.join(cfg.root or "", str(folder))) for split, folder in given]


def roots_name(cfg: ml_collections.ConfigDict) -> str:
    """How messages name the split roots that are set, e.g. 'config.data.train_root/test_root'."""
    return "config.data." + "/".join(key for key in ROOT_KEYS.values() if cfg[key])


def resolve(cases: Sequence[str], cfg: ml_collections.ConfigDict, given: Sequence[str] | None = None,
            given_by: str = "") -> dict[str, list[int]]:
    """Sorted case indices per split (see the module docstring); empty val / test splits are left out.

    `cases`: one id per case; `given`: per case the split the source's layout puts it in ('train', 'val' or
    'test'), or None when the layout gives no split; `given_by` names that layout in messages."""
    n = len(cases)
    if given is not None and len(given) != n:
        raise ValueError(f"resolve: {len(given)} given splits for {n} cases")
    split_file = _path(cfg.root, cfg.split_file) if cfg.split_file else ""
    _check_folds(cfg, split_file)
    if split_file or cfg.num_folds:
        _check_unique(cases, "config.data.split_file" if split_file else "config.data.num_folds")
    val_by = given_by if given is not None and "val" in given else ""
    if split_file:
        listed, where = _read_split_file(split_file, cfg.fold)
        if val_by and "val" in listed:
            raise MedjaxError(f"{val_by} gives the validation cases and so does {where}: use one of them")
        given_by, given = (f"{given_by} with {where}" if given is not None else where,
                           _merge_file(cases, listed, where, given, given_by))
        val_by = val_by or (where if "val" in listed else "")
    _check_chosen_once(cfg, given_by if given is not None else "", val_by)
    if given is None and not cfg.num_folds:
        return case_split(n, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    if given is None:
        _check_fractions(cfg.val_fraction, cfg.test_fraction)
        rest, test = split_cases(n, cfg.test_fraction, cfg.split_seed)
    else:
        test = [i for i, g in enumerate(given) if g == "test"]
        rest = [i for i, g in enumerate(given) if g != "test"]
    if not rest:
        raise MedjaxError(f"the train split is empty: {given_by} gives every case to the test split")
    if val_by:
        val = [i for i in rest if given[i] == "val"]
        train = [i for i in rest if given[i] != "val"]
    elif cfg.num_folds:
        order = sorted(rest, key=lambda i: cases[i])
        train_pos, val_pos = kfold(len(order), cfg.num_folds, cfg.fold)
        train, val = [order[j] for j in train_pos], [order[j] for j in val_pos]
    else:
        train, val = _draw_val(rest, cfg.val_fraction, cfg.split_seed,
                               f"val_fraction={cfg.val_fraction} of the {len(rest)} non-test cases")
    if not train:
        raise MedjaxError(f"the train split is empty: {given_by} leaves no case for training")
    return _named(train, val, test)


def select(arrays: Mapping[str, np.ndarray], split: Mapping[str, list[int]]) -> dict[str, dict[str, np.ndarray]]:
    """In-memory arrays (one row per case) divided by `split` ({split: case indices})."""
    return {name: {k: v[np.asarray(idx, np.int64)] for k, v in arrays.items()} for name, idx in split.items()}


def select_ids(cases: Sequence[str], split: Mapping[str, list[int]]) -> dict[str, list[str]]:
    """The case ids of each split ({split: case indices}), in the order `select` puts the examples."""
    return {name: [cases[i] for i in idx] for name, idx in split.items()}


def case_id(filename: str) -> str:
    """A case's id from its file name: the name without folders and extension (`.nii.gz` counts as one)."""
    name = os.path.basename(os.path.normpath(filename))
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _named(train: list[int], val: list[int], test: list[int]) -> dict[str, list[int]]:
    out = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    return {k: v for k, v in out.items() if v or k == "train"}


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise MedjaxError(f"config.data.val_fraction={val_fraction} and test_fraction={test_fraction} must be "
                          f">= 0 and leave cases for training")


def _draw_val(rest: list[int], share: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """(train, val) out of the case indices `rest`: a seeded `share` of them (`split_cases` with seed + 1)."""
    if share >= 1:
        raise MedjaxError(f"cannot hold out {what} for validation: no case would be left for training")
    train_pos, val_pos = split_cases(len(rest), share, seed + 1)
    return [rest[j] for j in train_pos], [rest[j] for j in val_pos]


def _path(root: str, value: str) -> str:
    return os.path.join(root or "", str(value))


def _check_folds(cfg: ml_collections.ConfigDict, split_file: str) -> None:
    if split_file and cfg.num_folds:
        raise MedjaxError(f"config.data.split_file={cfg.split_file!r} and config.data.num_folds={cfg.num_folds} "
                          f"both choose the validation cases: set one of them")
    if cfg.num_folds < 0 or cfg.num_folds == 1:
        raise MedjaxError(f"config.data.num_folds={cfg.num_folds}: k-fold cross-validation needs k >= 2 (0 = off)")
    if cfg.fold and not (split_file or cfg.num_folds):
        raise MedjaxError(f"config.data.fold={cfg.fold} picks a fold, but neither config.data.split_file nor "
                          f"config.data.num_folds is set")


def _check_chosen_once(cfg: ml_collections.ConfigDict, test_by: str, val_by: str) -> None:
    """A fraction set away from its default where the split it would draw is given is a contradiction."""
    spec = schema.data_spec(cfg.name)
    if val_by and cfg.num_folds:
        raise MedjaxError(f"{val_by} gives the validation cases and so does config.data.num_folds={cfg.num_folds}: "
                          f"use one of them")
    val_by = val_by or (f"config.data.num_folds={cfg.num_folds}" if cfg.num_folds else "")
    for key, by, what in (("test_fraction", test_by, "test"), ("val_fraction", val_by, "validation")):
        default = spec[key].default
        if by and cfg[key] != default:
            raise MedjaxError(f"config.data.{key}={cfg[key]} contradicts {by}, which gives the {what} split: leave "
                              f"{key} at {default}")


def _check_unique(cases: Sequence[str], key: str) -> None:
    first: dict[str, int] = {}
    for i, case in enumerate(cases):
        if case in first:
            raise MedjaxError(f"{key} names cases by id, but cases {first[case]} and {i} share the id {case!r}: "
                              f"rename one of the files")
        first[case] = i


def _read_split_file(path: str, fold: int) -> tuple[dict[str, list[str]], str]:
    """({split: [case ids]}, how to name it) of a split file: nnU-Net's list of folds (fold `fold`) or
    {"train", "val", "test"}."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise MedjaxError(f"config.data.split_file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MedjaxError(f"cannot read split file {path}: {e}") from e
    if isinstance(content, list):  # nnU-Net splits_final.json
        if not 0 <= fold < len(content):
            raise MedjaxError(f"config.data.fold={fold} is out of range: {path} holds {len(content)} folds "
                              f"(0..{len(content) - 1})")
        chosen, where, allowed = content[fold], f"{path} (fold {fold})", ("train", "val")
    elif isinstance(content, dict):
        if fold:
            raise MedjaxError(f"config.data.fold={fold} picks a fold, but {path} holds one split "
                              f"(train/val/test), not nnU-Net's list of folds")
        chosen, where, allowed = content, path, SPLITS
    else:
        raise MedjaxError(f"{path}: expected nnU-Net's list of folds [{{\"train\": [...], \"val\": [...]}}, ...] or "
                          f"{{\"train\": [...], \"val\": [...], \"test\": [...]}}, got {type(content).__name__}")
    if not isinstance(chosen, dict) or "train" not in chosen or set(chosen) - set(allowed):
        keys = sorted(chosen) if isinstance(chosen, dict) else type(chosen).__name__
        raise MedjaxError(f"{where}: expected the keys {'/'.join(allowed)} (train required), got {keys}")
    out = {}
    for split, ids in chosen.items():
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            raise MedjaxError(f"{where}: '{split}' must be a list of case ids (strings), got {ids!r:.80}")
        out[split] = ids
    return out, where


def _merge_file(cases: Sequence[str], listed: dict[str, list[str]], where: str, given: Sequence[str] | None,
                given_by: str) -> list[str]:
    """Each case's split by the file, checked against the layout's: they may agree, the file may pick the val cases
    among the layout's training cases, and the layout alone may place test (and val) cases; every other case must
    be listed exactly once."""
    index = {case: i for i, case in enumerate(cases)}
    by_file: dict[int, str] = {}
    for split, ids in listed.items():
        for case in ids:
            if case not in index:
                shown = ", ".join(sorted(cases)[:5]) + (" ..." if len(cases) > 5 else "")
                raise MedjaxError(f"{where} names case {case!r}, which is not among the {len(cases)} cases of the "
                                  f"data ({shown})")
            if index[case] in by_file:
                raise MedjaxError(f"case {case!r} is in two splits of {where}: '{by_file[index[case]]}' and '{split}'")
            by_file[index[case]] = split
    merged = []
    for i, case in enumerate(cases):
        layout, file = given[i] if given is not None else None, by_file.get(i)
        if file is None and layout in (None, "train"):
            raise MedjaxError(f"case {case!r} is in no split of {where}: list it (the {{train, val, test}} form "
                              f"takes 'test'), or give the test cases by their own folder")
        if file is not None and layout not in (None, file) and (layout, file) != ("train", "val"):
            raise MedjaxError(f"case {case!r} is in two splits: '{layout}' by {given_by} and '{file}' by {where}")
        merged.append(file or layout)
    return merged
