"""Process-level setup that must happen before JAX touches a backend: fake CPU devices and jax.distributed."""

from __future__ import annotations

import os

import jax

from medjax.errors import MedjaxError


def configure_devices(num_cpu_devices: int | None) -> None:
    """Expose `num_cpu_devices` CPU devices (for testing data parallelism without accelerators)."""
    if num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process run when asked to by flags or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID variables; a single process needs nothing. (jax.distributed also auto-detects SLURM etc.
    when it is called without arguments: set MEDJAX_DISTRIBUTED=auto for that.)"""
    env = os.environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if env.get("MEDJAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return
    if address is None and count is None:
        return
    if address is None or count is None or pid is None:
        raise MedjaxError("multi-process runs need all of coordinator address, number of processes and process id "
                          "(--coordinator_address/--num_processes/--process_id or JAX_COORDINATOR_ADDRESS/"
                          "JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    if int(count) > 1:
        jax.distributed.initialize(coordinator_address=address, num_processes=int(count), process_id=int(pid))
