"""Training batches from a random-access source with grain: seeded reshuffling every epoch, this process's rows
of each global batch, per-example host preprocessing, threaded prefetching, and a checkpointable position.

Position `g` of the endless stream is example `g` of grain's `shuffle().repeat()` (a new permutation per epoch
from the seed); the global batch `s` is positions `[s*B, (s+1)*B)` and each process reads only its own rows of
it. So, as with `TrainStream`, the global batch does not depend on the number of processes or devices, and a
host transform that needs randomness gets `np.random.default_rng([seed, g])`, a function of the position alone:
a resumed run draws the same patches. The iterator state (the next batch) is what the checkpoint stores.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medjax.errors import MedjaxError

Transform = Callable[[dict, np.random.Generator], dict]


class GrainStream:
    """Endless per-process training batches with the `next / get_state / set_state` interface of TrainStream."""

    def __init__(self, source: Any, global_batch_size: int, rows: slice, seed: int,
                 transform: Transform | None = None, keys: tuple[str, ...] | None = None,
                 num_threads: int = 2, prefetch: int = 4):
        import grain

        if len(source) == 0:
            raise MedjaxError("train split: the split is empty")
        self.seed, self.num_examples = seed, len(source)
        shuffled = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
        local = rows.stop - rows.start

        def example(i: int) -> dict:
            g = (i // local) * global_batch_size + rows.start + i % local
            raw = shuffled[g]
            out = transform(raw, np.random.default_rng([seed, g])) if transform else raw
            out = {k: np.asarray(out[k]) for k in (keys or out)}  # default: every key (image, label, mask...)
            out["index"] = np.int32(g)
            out["weight"] = np.float32(1.0)
            return out

        batches = grain.MapDataset.range(sys.maxsize // global_batch_size).map(example).batch(local)
        self._dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                                 prefetch_buffer_size=prefetch))
        self._iter = iter(self._dataset)

    def __iter__(self) -> GrainStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def get_state(self) -> dict:
        return {"grain": self._iter.get_state(), "seed": self.seed, "num_examples": self.num_examples}

    def set_state(self, state: Mapping) -> None:
        if "grain" not in state or state["seed"] != self.seed or state["num_examples"] != self.num_examples:
            raise MedjaxError(
                f"checkpointed data stream ({dict(state)}) does not match this run (seed={self.seed}, "
                f"{self.num_examples} examples): resume with the same config and data")
        self._iter.set_state(dict(state["grain"]))


def materialize(source: Any, keys: tuple[str, ...] | None = None, num_threads: int = 4) -> dict[str, np.ndarray]:
    """Read a whole fixed-shape split into arrays (evaluation splits), in stored order, with grain threads;
    `keys=None` keeps every key of the examples."""
    import grain

    n = len(source)
    if n == 0:
        raise MedjaxError("eval split: the split is empty")
    ds = grain.MapDataset.source(source).map(lambda e: {k: np.asarray(e[k]) for k in (keys or e)}).batch(min(n, 256))
    chunks = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads)))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
