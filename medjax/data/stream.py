"""The one data path: random-access splits (in-memory arrays or array_record caches) read through grain.

A split is a random-access source (`len(source)`, `source[i] -> dict of arrays`); in-memory arrays become one
with `as_source`, whose `__getitems__` gathers a whole batch in one indexing operation. The training stream is a
pure function of (seed, position): epoch `e` is `epoch_permutation(seed, e)` of the examples and the global
batch at position `p` is the next `global_batch_size` indices of that endless sequence. Every process computes
the same global indices and reads only its own rows, so the global batch, and hence the result, does not depend
on the number of processes or devices; a host transform that needs randomness (clips, patches) gets
`np.random.default_rng([seed, g])`, `g` the example's position, so a resumed run draws the same. The position is
the whole stream state the checkpoint stores. grain's threads build the next batches while the step runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from medjax.errors import MedjaxError

Transform = Callable[[dict, np.random.Generator], dict]


class ArraySource:
    """In-memory arrays of equal length as a random-access source (grain's `RandomAccessDataSource`)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], what: str = "split"):
        self.arrays = dict(arrays)
        sizes = {k: len(v) for k, v in self.arrays.items()}
        if not sizes:
            raise MedjaxError(f"{what}: no arrays")
        self.n = next(iter(sizes.values()))
        if any(s != self.n for s in sizes.values()):
            raise MedjaxError(f"{what}: arrays have different lengths {sizes}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}

    def __getitems__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """A batch: every key gathered at `indices` at once."""
        return {k: v[indices] for k, v in self.arrays.items()}


def as_source(split: Any, what: str = "split") -> Any:
    """`split` as a random-access source: a dict of arrays is wrapped, a source is returned as it is."""
    return ArraySource(split, what) if isinstance(split, Mapping) else split


def num_examples(split: Any) -> int:
    return len(as_source(split))


def as_arrays(split: Any, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The whole split in memory (for preprocessing that needs every example, e.g. a GAN's intensity range)."""
    source = as_source(split)
    if isinstance(source, ArraySource):
        return {k: v for k, v in source.arrays.items() if keys is None or k in keys}
    n = len(source)
    if n == 0:
        raise MedjaxError("split is empty")
    return _gather(source, np.arange(n), keys)


def _gather(source: Any, indices: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    if isinstance(source, ArraySource):
        batch = source.__getitems__(indices)
    else:
        examples = [source[int(i)] for i in indices]
        batch = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
    return {k: v for k, v in batch.items() if keys is None or k in keys}


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch; identical on every process."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_indices(seed: int, position: int, count: int, n: int) -> np.ndarray:
    """`count` example indices of the endless shuffled sequence, starting at `position`."""
    out = []
    while count > 0:
        epoch, offset = divmod(position, n)
        take = min(count, n - offset)
        out.append(epoch_permutation(seed, epoch, n)[offset: offset + take])
        position += take
        count -= take
    return np.concatenate(out)


class TrainStream:
    """Endless shuffled training batches (this process's rows of each global batch), resumable by position.

    Each batch carries "index" (the examples' stream positions, which key the on-device augmentation) and
    "weight" (1; 0 marks padding rows of a `select`). `keys` restricts the example keys kept (default: all).
    `select` (batch number -> (global indices, weights), each (global_batch_size,)) replaces the shuffled order,
    e.g. by DP-SGD's Poisson batches (`medjax.privacy.sampling`); like the shuffled order it must be a pure
    function of the batch number.

    `members` K > 0 (a deep ensemble, `medjax.train.ensemble`) makes every array (rows, K, ...): member k's rows
    are the batch a stream of seed `seed + k` gives at the same position (its own order and host randomness).
    The one position restores every member."""

    def __init__(self, split: Any, global_batch_size: int, rows: slice, seed: int,
                 transform: Transform | None = None, keys: tuple[str, ...] | None = None,
                 num_threads: int = 2, prefetch: int = 4, members: int = 0,
                 select: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None):
        if members and select is not None:
            raise MedjaxError("a train stream of ensemble members cannot also take a `select` (DP-SGD's batches)")
        self.source = as_source(split, "train split")
        self.n = len(self.source)
        if self.n == 0:
            raise MedjaxError("train split: the split is empty")
        self.global_batch_size, self.rows, self.seed, self.members = global_batch_size, rows, seed, members
        self.transform, self.keys = transform, keys
        self.num_threads, self.prefetch, self.select = num_threads, prefetch, select
        self.position = 0
        self._iter: Iterator | None = None

    def batch_at(self, position: int) -> dict[str, np.ndarray]:
        """The batch that starts at stream position `position` (a pure function of it)."""
        if not self.members:
            return self._batch_of(self.seed, position)
        batches = [self._batch_of(self.seed + k, position) for k in range(self.members)]
        return {key: np.stack([b[key] for b in batches], axis=1) for key in batches[0]}

    def _batch_of(self, seed: int, position: int) -> dict[str, np.ndarray]:
        if self.select is None:
            idx = global_indices(seed, position, self.global_batch_size, self.n)[self.rows]
            weight = np.ones(len(idx), np.float32)
        else:
            idx, weight = (a[self.rows] for a in self.select(position // self.global_batch_size))
        positions = (np.arange(self.global_batch_size) + position)[self.rows]
        if self.transform is None:
            batch = _gather(self.source, idx, self.keys)
        else:
            examples = [self.transform(self.source[int(i)], np.random.default_rng([seed, int(g)]))
                        for i, g in zip(idx, positions)]
            batch = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in (self.keys or examples[0])}
        batch["index"] = positions.astype(np.int32)
        batch["weight"] = np.asarray(weight, np.float32)
        return batch

    def _start(self) -> Iterator:
        import grain

        start, b = self.position // self.global_batch_size, self.global_batch_size
        batches = grain.MapDataset.range(start, sys.maxsize // b).map(lambda s: self.batch_at(int(s) * b))
        return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                              prefetch_buffer_size=self.prefetch)))

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iter is None:
            self._iter = self._start()
        batch = next(self._iter)
        self.position += self.global_batch_size
        return batch

    def get_state(self) -> dict:
        state = {"position": int(self.position), "seed": int(self.seed), "num_examples": int(self.n)}
        return {**state, "members": self.members} if self.members else state

    def set_state(self, state: Mapping) -> None:
        if ("position" not in state or int(state["seed"]) != self.seed or int(state["num_examples"]) != self.n
                or int(state.get("members", 0)) != self.members):  # checkpoints of plain runs have no "members"
            raise MedjaxError(
                f"checkpointed data stream ({dict(state)}) does not match this run (seed={self.seed}, {self.n} "
                f"examples, {self.members or 'no'} ensemble members): resume with the same config and data")
        if int(state["position"]) % self.global_batch_size:
            raise MedjaxError(f"checkpointed data stream position {state['position']} is not a multiple of "
                              f"config.batch_size={self.global_batch_size}: resume with the same batch size")
        self.position = int(state["position"])
        self._iter = None  # restarted from the position on the next batch


def eval_batches(split: Any, global_batch_size: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order; the last batch is padded with weight-0 copies so nothing is dropped."""
    source = as_source(split, "eval split")
    n = len(source)
    if n == 0:
        raise MedjaxError("eval split: the split is empty")
    for start in range(0, n, global_batch_size):
        idx = np.arange(start, start + global_batch_size)
        weight = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)[rows]
        batch = _gather(source, idx)
        batch["index"] = idx.astype(np.int32)
        batch["weight"] = weight[rows]
        yield batch
