"""The compiled outer iteration: reproducible, compiled once, and the metrics it promises."""

import jax
import numpy as np

from w12_jax.config import Config
from w12_jax.train import METRICS, init_train_state, make_train_step

CFG = Config(dataset="8gaussians", data_shape=(2,), architecture="mlp", reference="gaussian", T=1.0, dt=0.2,
             lam=0.5, potential_hidden=(16, 16), potential_activation="tanh", discriminator_hidden=(16, 16),
             batch_size=8, n_critic=3)


def run(cfg, iterations=3):
    state, step = init_train_state(cfg), make_train_step(cfg, devices=jax.devices()[:1])
    history = []
    for i in range(iterations):
        state, metrics = step(state, np.random.default_rng([1, i]).normal(size=(cfg.n_critic, cfg.batch_size, 2)))
        history.append({k: np.asarray(v) for k, v in metrics.items()})
    return state, history, step


def test_same_seed_is_bit_identical_and_other_seed_differs():
    s1, h1, step = run(CFG)
    s2, h2, _ = run(CFG)
    assert [sorted(h) for h in h1] == [sorted(METRICS)] * 3
    for a, b in zip(h1, h2):
        assert all(np.array_equal(a[k], b[k]) for k in METRICS)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    _, h3, _ = run(Config(**{**CFG.to_dict(), "seed": 1, "data_shape": (2,), "potential_hidden": (16, 16),
                             "discriminator_hidden": (16, 16), "conv_channels": (8, 8)}))
    assert not np.array_equal(h1[-1]["kinetic_energy"], h3[-1]["kinetic_energy"])
    assert int(s1.step) == 3


def test_step_compiles_once():
    _, _, step = run(CFG, iterations=4)
    assert step.jitted._cache_size() == 1
