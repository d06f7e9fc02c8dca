"""Reflow (`w12_jax.reflow`): regressing the field on the chords of a monotone affine coupling makes one Euler
step land on the coupling's endpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w12_jax.config import Config
from w12_jax.networks import make_flow_network
from w12_jax.reflow import reflow, reflow_pairs
from w12_jax.reference import sample_reference
from w12_jax.sample import sample
from w12_jax.train import init_train_state

CFG = Config(dataset="moons", data_shape=(3,), embed_dim=3, architecture="mlp", reference="gaussian",
             potential_hidden=(32, 32), potential_activation="tanh", discriminator_hidden=(8,), batch_size=64,
             n_critic=1, T=1.0, dt=0.25, lam=0.5)


def test_reflow_of_an_affine_monotone_coupling_makes_one_euler_step_exact():
    """x1 = A x0 + b with A symmetric positive definite is the gradient of a convex function, so its chords
    x0 + (t/T)(x1 − x0) form a potential flow; after reflow one Euler step x0 + T v(x0, 0) lands on x1 to
    within 10 % of the distance travelled (before: the untrained field, about 100 %)."""
    A = jnp.diag(jnp.array([2.0, 0.5, 1.0]))
    b = jnp.array([1.0, -0.5, 0.25])
    x0 = np.asarray(sample_reference(CFG, jax.random.PRNGKey(1), (4000,)))
    x1 = x0 @ np.asarray(A) + np.asarray(b)
    params = init_train_state(CFG).potential_ema
    trained, losses = reflow(CFG, params, x0, x1, iterations=1500, key=jax.random.PRNGKey(2), lr=3e-3)

    test_x0 = np.asarray(sample_reference(CFG, jax.random.PRNGKey(3), (1000,)))
    target = test_x0 @ np.asarray(A) + np.asarray(b)
    travel = np.mean(np.linalg.norm(target - test_x0, axis=-1))

    def one_step_error(p):
        x_T = np.asarray(sample(make_flow_network(CFG), p, test_x0, T=CFG.T, lam=CFG.lam, solver="euler",
                                num_steps=1).x_T)
        return np.mean(np.linalg.norm(x_T - target, axis=-1)) / travel

    assert one_step_error(params) > 0.5
    assert one_step_error(trained) < 0.1
    assert np.mean(losses[-100:]) < 0.05 * np.mean(losses[:10])


def test_reflow_pairs_solved_in_chunks_equal_one_solve_and_bad_input_is_refused():
    params = init_train_state(CFG).potential_ema
    x0, x1 = reflow_pairs(CFG, params, 50, chunk=16, solver="euler", num_steps=4)
    direct = sample(make_flow_network(CFG), params, x0, T=CFG.T, lam=CFG.lam, solver="euler", num_steps=4).x_T
    np.testing.assert_allclose(x1, np.asarray(direct), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pairs must both have shape"):
        reflow(CFG, params, x0, x1[:, :2], iterations=1, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="iterations"):
        reflow(CFG, params, x0, x1, iterations=0, key=jax.random.PRNGKey(0))
