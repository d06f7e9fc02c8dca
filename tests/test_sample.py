"""`sample` against the training integrator, and the observed order of diffrax solvers."""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from w12_jax.config import Config
from w12_jax.flow import euler_flow, scalar_potential
from w12_jax.networks import make_potential
from w12_jax.sample import get_solver, sample

CFG = Config(dataset="moons", data_shape=(2,), architecture="mlp", reference="gaussian", T=1.0, dt=0.2, lam=0.5,
             potential_hidden=(32, 32), potential_activation="tanh")


def random_potential(cfg, seed=0, scale=3.0):
    """An MLP potential with its last layer scaled so the flow moves particles O(1)."""
    potential = make_potential(cfg)
    params = potential.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + cfg.data_shape), jnp.zeros((1,)))
    params = jax.tree_util.tree_map(lambda p: p * scale if p.ndim == 2 and p.shape[-1] == 1 else p, params)
    return potential, params


def test_euler_sample_equals_training_integrator():
    potential, params = random_potential(CFG)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    train = euler_flow(scalar_potential(potential, params), x0, CFG.T, CFG.num_steps, CFG.lam, keep_path=True)
    res = sample(potential, params, x0, T=CFG.T, lam=CFG.lam, solver="euler", dt=CFG.dt, save_points=CFG.num_steps + 1)
    np.testing.assert_allclose(res.x_T, train.x_T, atol=1e-6)
    np.testing.assert_allclose(res.path, train.path, atol=1e-6)
    assert int(res.nfe) == CFG.num_steps
    assert float(jnp.mean(jnp.abs(res.x_T - x0))) > 0.1  # the flow actually moves the particles


def test_solvers_converge_to_fine_euler_with_expected_order():
    with enable_x64():
        cfg = dataclasses.replace(CFG, T=1.0)
        potential, params = random_potential(cfg)
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        x0 = jax.random.normal(jax.random.PRNGKey(2), (32, 2), dtype=jnp.float64)
        u = scalar_potential(potential, params)
        reference = jax.jit(lambda x: euler_flow(u, x, cfg.T, 2**16, cfg.lam).x_T)(x0)
        scale = float(jnp.mean(jnp.abs(reference - x0)))
        assert scale > 0.1
        hs = [1 / 2, 1 / 4, 1 / 8, 1 / 16]

        def errors(solver):
            return np.array([float(jnp.mean(jnp.abs(
                sample(potential, params, x0, T=cfg.T, lam=cfg.lam, solver=solver, dt=h).x_T - reference)))
                for h in hs])

        heun = errors("heun")
        order = np.polyfit(np.log(hs), np.log(heun), 1)[0]
        assert order >= 1.5, (heun, order)
        assert np.all(np.diff(heun) < 0)
        for name in ("tsit5", "dopri5"):
            err = errors(name)
            assert err[-1] < 1e-4 * scale and np.all(err <= heun), (name, err, heun)
        adaptive = sample(potential, params, x0, T=cfg.T, lam=cfg.lam, solver=diffrax.Dopri5(), rtol=1e-8, atol=1e-8)
        assert float(jnp.mean(jnp.abs(adaptive.x_T - reference))) < 1e-4 * scale
        assert int(adaptive.nfe) == 6 * int(adaptive.num_steps) + 1


def test_nfe_counts_stages():
    potential, params = random_potential(CFG)
    x0 = jnp.zeros((4, 2))
    for name, per_step, extra in (("euler", 1, 0), ("heun", 2, 0), ("midpoint", 2, 0), ("ralston", 2, 0),
                                  ("tsit5", 6, 1), ("dopri5", 6, 1)):
        assert int(sample(potential, params, x0, T=1.0, lam=0.5, solver=name, num_steps=7).nfe) == 7 * per_step + extra


def test_bad_sampling_arguments_raise():
    potential, params = random_potential(CFG)
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="euler, heun, midpoint"):
        get_solver("rk4")
    with pytest.raises(ValueError, match="divide"):
        sample(potential, params, x0, T=1.0, lam=0.5, dt=0.3)
    with pytest.raises(ValueError, match="exactly one"):
        sample(potential, params, x0, T=1.0, lam=0.5)


def test_euler_on_a_given_grid_takes_those_steps():
    """ts = (t_0, ..., t_K): x_{k+1} = x_k − (t_{k+1} − t_k)∇U(x_k, t_k)/lam, written out by hand; bad grids
    raise; `step_grids.power_grid` is uniform at ρ = 1 and puts the first step at T(1 − 2^−ρ) for K = 2."""
    from experiments.step_grids import power_grid

    potential, params = random_potential(CFG)
    u = scalar_potential(potential, params)
    x = x0 = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    ts = (0.0, 0.1, 0.55, 1.0)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x - (t1 - t0) * jax.vmap(jax.grad(u), (0, None))(x, t0) / CFG.lam
    res = sample(potential, params, x0, T=1.0, lam=CFG.lam, ts=ts)
    np.testing.assert_allclose(res.x_T, x, atol=1e-5)
    assert int(res.nfe) == 3
    for bad in ((0.0, 0.6, 0.5, 1.0), (0.1, 1.0), (0.0, 0.9)):
        with pytest.raises(ValueError, match="increase from 0 to T"):
            sample(potential, params, x0, T=1.0, lam=CFG.lam, ts=bad)
    with pytest.raises(ValueError, match="give ts alone"):
        sample(potential, params, x0, T=1.0, lam=CFG.lam, ts=ts, num_steps=3)
    np.testing.assert_allclose(power_grid(5.0, 5, 1.0), np.linspace(0, 5, 6), atol=1e-12)
    np.testing.assert_allclose(power_grid(5.0, 2, 3.0), (0.0, 5.0 * (1 - 0.5**3), 5.0), atol=1e-12)


@pytest.mark.parametrize("dt", [1.0, 0.25])
def test_evaluate_one_step_columns_are_one_euler_step_from_the_same_x0(dt):
    """evaluate's one_step_* columns: with a one-step training grid (dt = T) they equal the main columns
    exactly; with four steps they are the quality of another sample set (deviation > 0)."""
    from w12_jax.data import load_dataset
    from w12_jax.evaluation import evaluate

    cfg = dataclasses.replace(CFG, dt=dt, num_samples=400)
    _, params = random_potential(cfg)
    ds = load_dataset("moons", seed=0, num_samples=400)
    report = evaluate(cfg, params, ds, num_samples=100)
    if dt == cfg.T:
        assert report["one_step_deviation"] == 0.0
        assert report["one_step_energy_distance"] == report["energy_distance"]
    else:
        assert report["one_step_deviation"] > 0.01
        assert report["one_step_energy_distance"] != report["energy_distance"]


def test_generator_then_flow_with_the_flows_own_euler_step_is_euler_on_the_grid_0_sT_T():
    """G(x0) = x0 + T·v(x0, 0) (the flow's one Euler step): the chord's point x_s = x0 + s(G − x0) is Euler's
    state at sT, so G-then-flow is Euler on ts = (0, sT, T); s = 0 is one Euler step; s outside [0, 1) raises."""
    from experiments.generator_then_flow import flow_velocity, generator_then_flow

    potential, params = random_potential(CFG)
    v = flow_velocity(CFG, params)
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (16, 2)))
    one_step = np.asarray(sample(potential, params, x0, T=CFG.T, lam=CFG.lam, num_steps=1).x_T)
    for s in (0.3, 0.7):
        two_steps = sample(potential, params, x0, T=CFG.T, lam=CFG.lam, ts=(0.0, s * CFG.T, CFG.T)).x_T
        np.testing.assert_allclose(generator_then_flow(v, CFG.T, one_step, x0, s), two_steps, atol=1e-5)
    np.testing.assert_allclose(generator_then_flow(v, CFG.T, 0 * x0, x0, 0.0), one_step, atol=1e-5)
    assert float(np.abs(generator_then_flow(v, CFG.T, one_step, x0, 0.7) - one_step).mean()) > 1e-3
    with pytest.raises(ValueError, match="fraction"):
        generator_then_flow(v, CFG.T, one_step, x0, 1.0)
