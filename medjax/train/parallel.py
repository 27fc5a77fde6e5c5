"""Data parallelism over every device of every process.

Two strategies with one interface, so the loop never branches on which is in use:
- `ShardedStrategy` (default): `jax.jit` over a 1-D `Mesh` with axis `data`; the state is replicated
  (`P()`), batches are sharded on `data` (`P('data')`) and assembled from per-process rows with
  `jax.make_array_from_process_local_data`. XLA inserts the gradient all-reduce.
- `PmapStrategy`: the same step body under `jax.pmap(axis_name='data')` with explicit `pmean`s, for users of
  that API. Its state carries a leading local-device axis; checkpoints always hold the canonical replicated
  form, so a run can be resumed under either strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from medjax.errors import MedjaxError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices of all processes, ordered by process so each process owns a contiguous block."""
    devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (DATA_AXIS,))


class ShardedStrategy:
    """jit + NamedSharding data parallelism (the default)."""

    name = "sharding"
    axis_name = None  # XLA computes global statistics itself; no named axis inside the step

    def __init__(self, devices=None):
        self.mesh = make_mesh(devices)
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.num_devices = self.mesh.size

    def local_rows(self, global_batch_size: int) -> slice:
        """The rows of each global batch that this process feeds (a contiguous block)."""
        check_batch_size(global_batch_size, self.num_devices)
        index_map = self.data_sharding.addressable_devices_indices_map((global_batch_size,))
        starts = [idx[0].start or 0 for idx in index_map.values()]
        stops = [idx[0].stop if idx[0].stop is not None else global_batch_size for idx in index_map.values()]
        return slice(min(starts), max(stops))

    def init_state(self, create: Callable[..., Any], *args: Any) -> Any:
        """Build the state directly in its replicated sharding (nothing lands on one device first). `args` (host
        arrays, the same on every process, e.g. pretrained weights) are placed replicated and passed to `create`."""
        args = jax.tree.map(
            lambda a: jax.make_array_from_callback(np.shape(a), self.replicated, lambda idx: np.asarray(a)[idx]), args)
        return jax.jit(create, out_shardings=self.replicated)(*args)

    def compile_train_step(self, step_fn: Callable) -> Callable:
        return jax.jit(step_fn, in_shardings=(self.replicated, self.data_sharding),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

    def compile_eval_step(self, eval_fn: Callable) -> Callable:
        return jax.jit(eval_fn, in_shardings=(self.replicated, self.data_sharding), out_shardings=self.data_sharding)

    def put_batch(self, local_batch: dict[str, np.ndarray], global_batch_size: int) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(self.data_sharding, v, (global_batch_size, *v.shape[1:]))
            for k, v in local_batch.items()
        }

    def to_canonical(self, state: Any) -> Any:
        """The replicated state that checkpoints hold."""
        return state

    def from_canonical(self, state: Any) -> Any:
        return state

    def abstract_canonical(self, state_shape: Any) -> Any:
        """ShapeDtypeStructs carrying the replicated sharding, for Orbax restore."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), state_shape)

    def outputs_to_host(self, outputs: Any) -> Any:
        """Global per-example outputs as numpy on every process (all-gathered across processes)."""
        if jax.process_count() == 1:
            return jax.device_get(outputs)
        return multihost_utils.process_allgather(outputs, tiled=True)

    def metrics_to_host(self, metrics: Any) -> Any:
        return jax.device_get(metrics)


class PmapStrategy(ShardedStrategy):
    """`jax.pmap` over local devices with collectives across all processes; same numbers as `sharding`."""

    name = "pmap"
    axis_name = DATA_AXIS

    def __init__(self, devices=None):
        super().__init__(devices)
        self.local_devices = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        self._pmap = lambda f, **kw: jax.pmap(f, axis_name=DATA_AXIS, devices=devices and self.local_devices, **kw)
        self._replicate = self._pmap(lambda x: x)

    def compile_train_step(self, step_fn: Callable) -> Callable:
        return self._pmap(step_fn, donate_argnums=(0,))

    def compile_eval_step(self, eval_fn: Callable) -> Callable:
        return self._pmap(eval_fn)

    def init_state(self, create: Callable[..., Any], *args: Any) -> Any:
        return self.from_canonical(super().init_state(create, *args))

    def put_batch(self, local_batch: dict[str, np.ndarray], global_batch_size: int) -> dict[str, np.ndarray]:
        n = len(self.local_devices)
        return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in local_batch.items()}

    def to_canonical(self, state: Any) -> Any:
        """Stacked per-device copies -> one replicated global array per leaf (no host round trip)."""

        def leaf(x):
            by_device = {s.device: s.data for s in x.addressable_shards}
            pieces = [by_device[d].reshape(x.shape[1:]) for d in self.local_devices]
            return jax.make_array_from_single_device_arrays(x.shape[1:], self.replicated, pieces)

        return jax.tree.map(leaf, state)

    def from_canonical(self, state: Any) -> Any:
        """Replicated global arrays -> one stacked copy per local device (one transfer, at start or resume)."""
        n = len(self.local_devices)
        stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x.addressable_data(0)), (n, *x.shape)), state)
        return self._replicate(stacked)

    def outputs_to_host(self, outputs: Any) -> Any:
        local = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), outputs)
        if jax.process_count() == 1:
            return local
        return multihost_utils.process_allgather(local, tiled=True)

    def metrics_to_host(self, metrics: Any) -> Any:
        return jax.tree.map(lambda x: np.asarray(x)[0], metrics)


STRATEGIES = {"sharding": ShardedStrategy, "pmap": PmapStrategy}


def make_strategy(name: str, devices=None) -> ShardedStrategy:
    """`devices` (default: all) restricts the mesh, e.g. to compare 1 against 4 devices in one process."""
    if name not in STRATEGIES:
        raise MedjaxError(f"unknown config.parallel.strategy={name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](devices)


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
    if global_batch_size % num_devices:
        raise MedjaxError(
            f"config.batch_size={global_batch_size} must be divisible by the number of devices ({num_devices})"
        )



def replicated_to_host(tree: Any) -> Any:
    """Numpy copies of replicated arrays (this process's copy; works when other processes own devices too)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
