"""Process-level setup that must happen before JAX touches a backend: fake CPU devices and jax.distributed."""

from __future__ import annotations

import os

import jax

from medjax.errors import MedjaxError


def configure_devices(num_cpu_devices: int | None) -> None:
    """Expose `num_cpu_devices` CPU devices (for testing data parallelism without accelerators)."""
    if num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))


LOST_TIMEOUT_VAR = "MEDJAX_LOST_PROCESS_TIMEOUT_S"
DEFAULT_LOST_TIMEOUT_S = 60  # jax's own default heartbeat timeout is 100 s


def requested(coordinator_address: str | None = None, num_processes: int | None = None,
              process_id: int | None = None) -> tuple[int | None, int | None] | None:
    """(process id, number of processes) when flags or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID variables ask for a run of several processes ((None, None) under MEDJAX_DISTRIBUTED=auto,
    where jax.distributed detects them), else None."""
    env = os.environ
    if env.get("MEDJAX_DISTRIBUTED") == "auto":
        return None, None
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if address is None and count is None:
        return None
    if address is None or count is None or pid is None:
        raise MedjaxError("multi-process runs need all of coordinator address, number of processes and process id "
                          "(--coordinator_address/--num_processes/--process_id or JAX_COORDINATOR_ADDRESS/"
                          "JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    return (int(pid), int(count)) if int(count) > 1 else None


def lost_timeout_s() -> int:
    """Seconds without a heartbeat after which the coordination service declares a process lost."""
    value = os.environ.get(LOST_TIMEOUT_VAR) or str(DEFAULT_LOST_TIMEOUT_S)
    try:
        return max(1, round(float(value)))
    except ValueError:
        raise MedjaxError(f"{LOST_TIMEOUT_VAR}={value!r} is not a number of seconds") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process run when `requested` says so; a single process needs nothing. (jax.distributed also
    auto-detects SLURM etc. when it is called without arguments: set MEDJAX_DISTRIBUTED=auto for that.) A process
    that stops sending heartbeats for `lost_timeout_s()` is declared lost (see medjax.train.supervisor)."""
    which = requested(coordinator_address, num_processes, process_id)
    if which is None:
        return
    timeout = lost_timeout_s()
    if which == (None, None):
        jax.distributed.initialize(heartbeat_timeout_seconds=timeout)
        return
    pid, count = which
    address = coordinator_address or os.environ["JAX_COORDINATOR_ADDRESS"]
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=pid,
                               heartbeat_timeout_seconds=timeout)
