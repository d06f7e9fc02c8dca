"""The compiled outer iteration: reproducible, compiled once, and the metrics it promises."""

import dataclasses

import jax
import numpy as np

from w12_jax.config import Config
from w12_jax.train import METRICS, init_train_state, make_optimizers, make_train_step

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


def _data(cfg, i):
    return np.random.default_rng([1, i]).normal(size=(cfg.n_critic, cfg.batch_size, 2))


def test_potential_ema_is_the_warmed_up_average_of_the_parameter_path():
    state, step = init_train_state(CFG), make_train_step(CFG, devices=jax.devices()[:1])
    state, _ = step(state, _data(CFG, 0))
    for a, b in zip(jax.tree_util.tree_leaves(state.potential_ema), jax.tree_util.tree_leaves(state.potential_params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # ema_decay = 0: the parameters themselves

    cfg = dataclasses.replace(CFG, ema_decay=0.5)
    state, step = init_train_state(cfg), make_train_step(cfg, devices=jax.devices()[:1])
    expected = jax.device_get(state.potential_params)
    for i in range(12):  # d = min(0.5, (1 + i)/(10 + i)): 0.1, 0.18, ..., then 0.5 from i = 8 on
        state, _ = step(state, _data(cfg, i))
        d = min(0.5, (1 + i) / (10 + i))
        expected = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, expected,
                                          jax.device_get(state.potential_params))
    for a, b in zip(jax.tree_util.tree_leaves(state.potential_ema), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(jax.tree_util.tree_leaves(state.potential_ema)[0],
                           jax.tree_util.tree_leaves(state.potential_params)[0])


def test_cosine_schedule_scales_each_adam_update_by_half_one_plus_cosine():
    cfg = dataclasses.replace(CFG, iterations=4, n_critic=3, lr_schedule="cosine")
    constant, cosine = make_optimizers(dataclasses.replace(cfg, lr_schedule="constant")), make_optimizers(cfg)
    for which, total in ((0, cfg.iterations), (1, cfg.iterations * cfg.n_critic)):  # U, then phi
        params = {"w": np.ones(3, np.float32)}
        s_const, s_cos = constant[which].init(params), cosine[which].init(params)
        for s in range(total + 1):
            grads = {"w": np.random.default_rng(s).normal(size=3).astype(np.float32)}
            u_const, s_const = constant[which].update(grads, s_const, params)
            u_cos, s_cos = cosine[which].update(grads, s_cos, params)
            factor = 0.5 * (1 + np.cos(np.pi * min(s, total) / total))  # 1 at s = 0, 0 from s = total on
            np.testing.assert_allclose(u_cos["w"], factor * u_const["w"], rtol=1e-5, atol=1e-12)
