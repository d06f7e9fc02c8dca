"""Dual objectives against closed-form divergences of Gaussians; the gradient penalty against |w|² − L²."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w12_jax.divergences import alpha_dual, get_divergence, gradient_penalty, kl_dual, mass_covering_alpha_dual, \
    reverse_kl_dual, w1_dual

N = 200_000
MU = 1.0  # P = N(MU, 1), Q = N(0, 1)


@pytest.fixture(scope="module")
def gaussians():
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    return MU + jax.random.normal(kx, (N,)), jax.random.normal(ky, (N,))


def log_ratio(z):
    """log p(z)/q(z) for P = N(MU,1), Q = N(0,1)."""
    return MU * z - MU**2 / 2


def test_kl_dual_matches_closed_form_at_optimal_phi(gaussians):
    x, y = gaussians
    exact = MU**2 / 2  # KL(N(mu,1) || N(0,1))
    estimate = float(kl_dual(log_ratio(x), log_ratio(y)))
    assert abs(estimate - exact) / exact < 0.02, estimate


def test_kl_dual_is_smaller_for_non_optimal_phi(gaussians):
    x, y = gaussians
    optimal = float(kl_dual(log_ratio(x), log_ratio(y)))
    for phi in (lambda z: 0.5 * log_ratio(z), lambda z: log_ratio(z) + 0.3 * z**2, lambda z: jnp.tanh(z)):
        assert float(kl_dual(phi(x), phi(y))) < optimal - 0.01


def test_kl_dual_is_invariant_to_constant_shift(gaussians):
    x, y = gaussians
    a, b = kl_dual(log_ratio(x), log_ratio(y)), kl_dual(log_ratio(x) + 7.0, log_ratio(y) + 7.0)
    assert abs(float(a) - float(b)) < 1e-5


def test_reverse_kl_dual_matches_kl_of_swapped_pair(gaussians):
    x, y = gaussians
    # D_{-log}(P||Q) = KL(Q||P) = MU²/2; optimal phi = f'(p/q) = -q/p
    estimate = float(reverse_kl_dual(-jnp.exp(-log_ratio(x)), -jnp.exp(-log_ratio(y))))
    assert abs(estimate - MU**2 / 2) / (MU**2 / 2) < 0.02, estimate


def test_alpha2_dual_is_half_chi_square(gaussians):
    x, y = gaussians
    mu = 0.5  # chi²(N(mu,1)||N(0,1)) = exp(mu²) - 1; D_{f_2} = chi²/2
    xs, ys = x - MU + mu, y
    phi = lambda z: jnp.exp(mu * z - mu**2 / 2)  # f_2'(p/q) = p/q, up to the shift nu
    exact = (np.exp(mu**2) - 1) / 2
    estimate = float(alpha_dual(phi(xs), phi(ys), 2.0))
    assert abs(estimate - exact) / exact < 0.03, (estimate, exact)
    assert float(alpha_dual(0.5 * phi(xs), 0.5 * phi(ys), 2.0)) < exact - 0.01


@pytest.mark.parametrize("alpha", [-1.0, 0.5])
def test_mass_covering_alpha_dual_matches_closed_form_at_optimal_phi(gaussians, alpha):
    x, y = gaussians
    mu = 0.5  # D_{f_alpha}(N(mu,1)||N(0,1)) = (exp(alpha(alpha−1)mu²/2) − 1)/(alpha(alpha−1))
    xs, ys = x - MU + mu, y
    a = alpha * (alpha - 1)
    exact = (np.exp(a * mu**2 / 2) - 1) / a
    phi = lambda z: -jnp.exp((alpha - 1) * (mu * z - mu**2 / 2)) / (1 - alpha)  # f_alpha'(p/q) < 0
    divergence = get_divergence("alpha", alpha)
    estimate = float(divergence.dual(phi(xs), phi(ys)))
    assert abs(estimate - exact) / exact < 0.03, (estimate, exact)
    assert float(mass_covering_alpha_dual(2.0 * phi(xs), 2.0 * phi(ys), alpha)) < exact - 0.01
    assert float(divergence.output(jnp.array(3.0))) < 0  # phi = −exp(h): the conjugate's domain


def test_alpha_near_zero_is_the_reverse_kl(gaussians):
    x, y = gaussians
    phi_x, phi_y = -jnp.exp(-log_ratio(x)), -jnp.exp(-log_ratio(y))  # the reverse KL's optimum, −q/p
    near = float(mass_covering_alpha_dual(phi_x, phi_y, -1e-4))
    assert abs(near - float(reverse_kl_dual(phi_x, phi_y))) < 2e-3, near
    with pytest.raises(ValueError, match="alpha must be"):
        get_divergence("alpha", 0.0)


def test_w1_dual_with_identity_is_the_mean_shift(gaussians):
    x, y = gaussians
    assert abs(float(w1_dual(x, y)) - MU) < 0.01  # W1 of a translation is the shift, phi(z) = z optimal


def test_unknown_divergence_lists_choices():
    with pytest.raises(ValueError, match="kl, reverse_kl, alpha, w1"):
        get_divergence("jensen_shannon")


@pytest.mark.parametrize("w_norm, L", [(0.5, 1.0), (1.0, 1.0), (1.7, 1.0), (3.0, 2.0)])
def test_gradient_penalty_exact_for_linear_critic(w_norm, L):
    d = 5
    w = jax.random.normal(jax.random.PRNGKey(1), (d,))
    w = w_norm * w / jnp.linalg.norm(w)
    kx, ky, ka = jax.random.split(jax.random.PRNGKey(2), 3)
    x, y = jax.random.normal(kx, (64, d)), jax.random.normal(ky, (64, d)) + 2.0
    gp, grad_norm = gradient_penalty(lambda z: jnp.dot(w, z) + 0.3, x, y, ka, L)
    expected = max(w_norm**2 - L**2, 0.0)
    assert float(gp) == pytest.approx(expected, abs=1e-5)
    if w_norm <= L:
        assert float(gp) == 0.0
    np.testing.assert_allclose(grad_norm, w_norm, rtol=1e-5)


def test_gradient_penalty_counts_only_violating_interpolates():
    # phi(z) = z²/2 in 1-D: |phi'(z)| = |z|; with x = -y the interpolates are z = (2a-1) y.
    y = jnp.full((20_000, 1), 3.0)
    gp, _ = gradient_penalty(lambda z: 0.5 * jnp.sum(z**2), -y, y, jax.random.PRNGKey(3), 1.0)
    # E max(0, 9u² - 1), u ~ U(-1, 1), = ∫_{1/3}^{1} (9u² - 1) du = [3u³ - u]_{1/3}^{1} = 20/9
    exact = 20 / 9
    assert float(gp) == pytest.approx(exact, rel=0.02)
