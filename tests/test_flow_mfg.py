"""Closed-form solutions of the MFG system (design.md §5): HJ residual, straight paths, kinetic energy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w12_jax.flow import euler_flow, kinetic_energy
from w12_jax.mfg import hj_pointwise, hj_residual, straight_line_bound, terminal_residual

T, K, LAM = 2.0, 8, 0.5
H = T / K
A = jnp.array([0.7, -1.3, 0.4])
S_T = 1.5


def affine(x, t):
    """U = a·x + |a|² t / (2 lam) + c."""
    return jnp.dot(A, x) + jnp.dot(A, A) * t / (2 * LAM) + 3.0


def s(t):
    return S_T + (T - t) / LAM


def quadratic(x, t):
    """U = |x|² / (2 s(t)), s(t) = s_T + (T - t)/lam."""
    return jnp.sum(x**2) / (2 * s(t))


@pytest.fixture
def x0():
    return jax.random.normal(jax.random.PRNGKey(0), (128, 3))


def flipped_hj_residual(dt_u, grad_u):
    """The authors' '+' sign: Σ_k h mean |∂tU + |∇U|²/(2 lam)|."""
    sq = jnp.sum(grad_u**2, axis=-1)
    return H * jnp.sum(jnp.mean(jnp.abs(dt_u + sq / (2 * LAM)), axis=-1))


@pytest.mark.parametrize("u", [affine, quadratic], ids=["affine", "quadratic"])
def test_hj_residual_vanishes_on_closed_forms_and_detects_flipped_sign(u, x0):
    flow = euler_flow(u, x0, T, K, LAM)
    assert float(hj_residual(flow.dt_u, flow.grad_u, H, LAM)) < 1e-4
    assert float(jnp.max(jnp.abs(hj_pointwise(flow.dt_u, flow.grad_u, LAM)))) < 1e-4
    assert float(flipped_hj_residual(flow.dt_u, flow.grad_u)) > 0.1


def test_quadratic_euler_flow_is_straight_and_contracting(x0):
    flow = euler_flow(quadratic, x0, T, K, LAM, keep_path=True)
    ts = jnp.arange(K + 1) * H
    expected = x0[None] * (s(ts) / s(0.0))[:, None, None]
    np.testing.assert_allclose(flow.path, expected, atol=1e-5)
    # constant speed: every step moves by the same displacement
    steps = np.diff(np.asarray(flow.path), axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[:1], steps.shape), atol=1e-5)


def test_affine_kinetic_energy_is_exact(x0):
    flow = euler_flow(affine, x0, T, K, LAM, keep_path=True)
    exact = T * float(jnp.dot(A, A)) / (2 * LAM**2)
    assert float(kinetic_energy(flow.grad_u, H, LAM)) == pytest.approx(exact, rel=1e-6)
    # straight constant-speed paths attain the lower bound ½ E|x_T - x_0|²/T
    assert float(straight_line_bound(x0, flow.x_T, T)) == pytest.approx(exact, rel=1e-5)


def test_kinetic_energy_exceeds_straight_line_bound_for_bent_paths(x0):
    def swirl(x, t):  # time-dependent gradient field: paths turn
        return jnp.sin(3 * t) * x[0] + jnp.cos(3 * t) * x[1]

    flow = euler_flow(swirl, x0, T, K, LAM)
    assert float(kinetic_energy(flow.grad_u, H, LAM)) > 1.5 * float(straight_line_bound(x0, flow.x_T, T))


def test_terminal_residual_is_mean_gradient_distance():
    g1 = jnp.zeros((4, 2, 2))
    g2 = g1.at[:, 0, 0].set(jnp.array([3.0, 4.0, 0.0, 1.0]))
    assert float(terminal_residual(g1, g2)) == pytest.approx(2.0)


@pytest.mark.parametrize("width, confined", [(3, True), (8, False)])
def test_mlp_potential_moves_particles_only_in_its_first_layer_span(width, confined):
    # ∇x U = W1ᵀ(...) for U = MLP(W1 x + w_t t + b): with width < d the flow never leaves x0 + row space of W1
    # (an MLP potential narrower than 784 cannot remove the reference noise of an MNIST image)
    from w12_jax.flow import scalar_potential
    from w12_jax.networks import Potential

    d = 6
    potential = Potential(hidden=(width, 16), activation="tanh")
    x0 = jax.random.normal(jax.random.PRNGKey(0), (32, d))
    params = potential.init(jax.random.PRNGKey(1), x0, jnp.zeros((32,)))
    displacement = np.asarray(euler_flow(scalar_potential(potential, params), x0, 1.0, 4, 0.5).x_T - x0)
    sv = np.linalg.svd(displacement, compute_uv=False)
    assert (sv[3] / sv[0] < 1e-5) if confined else (sv[-1] / sv[0] > 1e-2), sv  # rank 3, or all of R^6
    if confined:
        w_x = np.asarray(params["params"]["ScalarMLP_0"]["Dense_0"]["kernel"])[:d]  # (d, width); row d is t's
        q, _ = np.linalg.qr(w_x)
        off_span = displacement - displacement @ q @ q.T
        assert np.linalg.norm(off_span) < 1e-5 * np.linalg.norm(displacement)
