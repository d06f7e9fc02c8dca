"""One process of the multi-process test: python tests/multiprocess_worker.py PID NPROC PORT OUT.npz"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from w12_jax.distributed import initialize  # noqa: E402

if __name__ == "__main__":
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    initialize(f"127.0.0.1:{port}", nproc, pid)
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, os.path.dirname(__file__))
    from test_multiprocess import CFG, ITERATIONS, float64_state, global_batch  # noqa: E402

    from w12_jax.train import make_train_step  # noqa: E402

    assert jax.device_count() == 2 * nproc and jax.local_device_count() == 2
    state, step = float64_state(), make_train_step(CFG)
    for i in range(ITERATIONS):
        state, metrics = step(state, global_batch(i))
    local = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_shards[0].data),
                                   (state.potential_params, state.discriminator_params, metrics))
    np.savez(out, *jax.tree_util.tree_leaves(local))
