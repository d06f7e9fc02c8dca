"""Multi-process (multi-host) training through `jax.distributed`.

Every process runs the same program: it calls `initialize(...)` before any other JAX call, builds the same
config and data, and calls the step from `make_train_step` with the same global batch (a pure function of
(seed, step)); the mesh spans the devices of all processes and each device computes its slice of the
batch. On CPU the cross-process collectives go through gloo. The mesh and shardings of the data-parallel
step are here too: one 1-D axis "data" over all devices, parameters replicated, batches split.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
    """Join a multi-process JAX run (arguments as `jax.distributed.initialize`; None = auto-detect on
    Cloud TPU / SLURM / Open MPI). Sets gloo CPU collectives so that CPU-only runs work too."""
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
    """True on process 0, the one that writes metrics, plots and checkpoints' metadata."""
    return jax.process_index() == 0


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """1-D mesh with axis "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a (n_critic, B, *shape) data block: batch axis 1 split over "data"."""
    return NamedSharding(mesh, P(None, "data"))


def global_array(value, sharding: NamedSharding) -> jax.Array:
    """A jax.Array with `sharding` from a host value that every process holds in full (numpy or jax)."""
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    host = np.asarray(value)
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype))  # float64 -> float32 unless x64 is on
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
