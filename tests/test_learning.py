"""A real learning test: W1⊕W2 on 8 Gaussians moves the reference close to held-out data."""

import time

import jax
import numpy as np

from w12_jax.config import Config
from w12_jax.data import load_dataset, sample_batches
from w12_jax.metrics import energy_distance
from w12_jax.networks import make_potential
from w12_jax.reference import sample_reference
from w12_jax.sample import sample
from w12_jax.train import init_train_state, make_train_step

# design.md §6 low-dim setting (T, h, lam, L, mu, networks) with larger learning rates for a short run
CFG = Config(dataset="8gaussians", data_shape=(2,), architecture="mlp", reference="gaussian", T=1.0, dt=0.2,
             lam=0.5, L=1.0, gp_weight=0.1, potential_hidden=(64,) * 5, potential_activation="tanh",
             discriminator_hidden=(64,) * 3, batch_size=200, lr_potential=1e-3, lr_discriminator=1e-3,
             iterations=1000)


def test_w1w2_learns_eight_gaussians():
    start = time.perf_counter()
    ds = load_dataset(CFG.dataset, seed=0, num_samples=10_000)
    state, step = init_train_state(CFG), make_train_step(CFG, devices=jax.devices()[:1])
    for i in range(CFG.iterations):
        state, metrics = step(state, sample_batches(ds.train, seed=CFG.seed, step=i, num_batches=CFG.n_critic,
                                                    batch_size=CFG.batch_size))
    x0 = sample_reference(CFG, jax.random.PRNGKey(123), (2000,))
    x_T = sample(make_potential(CFG), state.potential_params, x0, T=CFG.T, lam=CFG.lam, dt=CFG.dt).x_T
    before = float(energy_distance(np.asarray(x0), ds.heldout))
    after = float(energy_distance(np.asarray(x_T), ds.heldout))
    print(f"energy distance to held-out: reference {before:.4f}, generated {after:.4f}, "
          f"{time.perf_counter() - start:.0f} s")
    assert before > 5 * after
    assert all(np.isfinite(float(v)) for v in metrics.values())
