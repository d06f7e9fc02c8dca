"""Multi-process (multi-host) training through `jax.distributed`.

Every process runs the same program: it calls `initialize(...)` before any other JAX call, builds the same
config and data, and calls the step from `make_train_step` with the same global batch (a pure function of
(seed, step)); the mesh spans the devices of all processes and each device computes its slice of the
batch. On CPU the cross-process collectives go through gloo.
"""

from __future__ import annotations

from typing import Optional

import jax


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
