"""Two processes on localhost (jax.distributed, gloo) end with the parameters of one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from w12_jax.config import Config
from w12_jax.train import init_train_state, make_train_step

CFG = Config(dataset="8gaussians", data_shape=(2,), architecture="mlp", reference="gaussian", T=1.0, dt=0.2,
             lam=0.5, potential_hidden=(16, 16), potential_activation="tanh", discriminator_hidden=(16, 16),
             batch_size=8, n_critic=2, lr_potential=1e-3, lr_discriminator=1e-3)
ITERATIONS = 3


def global_batch(step):
    """The global data batch of iteration `step`, identical in every process."""
    return np.random.default_rng([0, step]).normal(size=(CFG.n_critic, CFG.batch_size, 2))


def float64_state():
    """The initial state in float64 (under x64), so that rounding cannot flip an Adam step: the KL dual's
    gradient for phi's output bias is exactly 0, and in float32 Adam turns its rounding noise into ±lr steps."""
    return jax.tree_util.tree_map(lambda a: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a,
                                  init_train_state(CFG))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    port, worker = str(free_port()), os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(pid), "2", port, str(tmp_path / f"p{pid}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]

    with jax.enable_x64(True):
        state, step = float64_state(), make_train_step(CFG, devices=jax.devices()[:1])
        initial = [np.asarray(a) for a in jax.tree_util.tree_leaves(state.potential_params)]
        for i in range(ITERATIONS):
            state, metrics = step(state, global_batch(i))
        single = [np.asarray(a) for a in jax.tree_util.tree_leaves(
            (state.potential_params, state.discriminator_params, metrics))]
    results = [np.load(tmp_path / f"p{pid}.npz") for pid in range(2)]
    results = [[r[f"arr_{i}"] for i in range(len(single))] for r in results]
    for a, b in zip(results[0], results[1]):
        assert np.array_equal(a, b)  # both processes hold the same replicated parameters
    assert single[0].dtype == np.float64
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(single, initial)) > 1e-4  # training moved them
    for a, b in zip(results[0], single):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
