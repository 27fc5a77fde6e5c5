"""Host-side batching of in-memory arrays: a seeded, resumable training stream and padded eval batches.

The training stream is a pure function of (seed, position): epoch `e` is `permutation(seed, e)` of the examples,
and the global batch at position `p` is the next `global_batch_size` indices of that endless sequence. Every
process computes the same global indices and keeps only its own rows, so the global batch, and hence the result,
does not depend on the number of processes or devices. The position is the whole loader state; the checkpoint
stores it, which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from medjax.errors import MedjaxError

Arrays = Mapping[str, np.ndarray]


def _check_arrays(arrays: Arrays, what: str) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes:
        raise MedjaxError(f"{what}: no arrays")
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise MedjaxError(f"{what}: arrays have different lengths {sizes}")
    if n == 0:
        raise MedjaxError(f"{what}: the split is empty")
    return n


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch; identical on every process."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_indices(seed: int, position: int, count: int, n: int) -> np.ndarray:
    """`count` example indices of the endless shuffled sequence, starting at `position`."""
    out = []
    while count > 0:
        epoch, offset = divmod(position, n)
        take = min(count, n - offset)
        out.append(epoch_permutation(seed, epoch, n)[offset : offset + take])
        position += take
        count -= take
    return np.concatenate(out)


class TrainStream:
    """Endless shuffled training batches (this process's rows of each global batch), resumable by position.
    `transform(example, rng)` runs per example on the host (e.g. clip sampling) with
    `np.random.default_rng([seed, g])`, `g` the example's position in the stream."""

    def __init__(self, arrays: Arrays, global_batch_size: int, rows: slice, seed: int,
                 transform: Callable[[dict, np.random.Generator], dict] | None = None):
        self.arrays = dict(arrays)
        self.transform = transform
        self.n = _check_arrays(self.arrays, "train split")
        self.global_batch_size = global_batch_size
        self.rows = rows
        self.seed = seed
        self.position = 0

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx = global_indices(self.seed, self.position, self.global_batch_size, self.n)
        self.position += self.global_batch_size
        local = idx[self.rows]
        positions = (np.arange(self.global_batch_size) + self.position - self.global_batch_size)[self.rows]
        if self.transform is None:
            batch = {k: v[local] for k, v in self.arrays.items()}
        else:  # per example, seeded by its stream position (as GrainStream): a resumed run draws the same
            examples = [self.transform({k: v[i] for k, v in self.arrays.items()},
                                       np.random.default_rng([self.seed, int(g)])) for i, g in zip(local, positions)]
            batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        batch["index"] = positions.astype(np.int32)
        batch["weight"] = np.ones(len(local), np.float32)
        return batch

    def get_state(self) -> dict:
        return {"position": int(self.position), "seed": int(self.seed), "num_examples": int(self.n)}

    def set_state(self, state: Mapping) -> None:
        if int(state["seed"]) != self.seed or int(state["num_examples"]) != self.n:
            raise MedjaxError(
                f"checkpointed data stream (seed={state['seed']}, {state['num_examples']} examples) does not match "
                f"this run (seed={self.seed}, {self.n} examples): resume with the same config and data"
            )
        self.position = int(state["position"])


def eval_batches(arrays: Arrays, global_batch_size: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order; the last batch is padded with weight-0 copies so nothing is dropped."""
    n = _check_arrays(arrays, "eval split")
    for start in range(0, n, global_batch_size):
        idx = np.arange(start, start + global_batch_size)
        weight = (idx < n).astype(np.float32)
        idx = np.minimum(idx, n - 1)
        batch = {k: v[idx[rows]] for k, v in arrays.items()}
        batch["index"] = idx[rows].astype(np.int32)
        batch["weight"] = weight[rows]
        yield batch
