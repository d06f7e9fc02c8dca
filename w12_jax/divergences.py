"""Dual objectives of the Lipschitz-regularized f-divergence D_f^{Gamma_L}(P‖Q) and its gradient penalty.

    D_f^{Gamma_L}(P‖Q) = sup_{phi L-Lipschitz} E_P[phi] − inf_nu ( nu + E_Q[f*(phi − nu)] )   (design.md §2)

P is the generated law rho_T (samples x), Q the data pi (samples y). Each `dual(phi_x, phi_y)` returns the
batch estimate of the bracket for the given values phi_x (n,), phi_y (m,); maximising it over phi gives the
divergence. `output` maps the network's raw output h to phi (identity except where f* needs a sign).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from w12_jax.config import DIVERGENCES


class Divergence(NamedTuple):
    name: str
    dual: Callable[[jax.Array, jax.Array], jax.Array]
    output: Callable[[jax.Array], jax.Array]


def kl_dual(phi_x, phi_y):
    """KL, f(r) = r log r (Donsker–Varadhan): mean phi(x) − log mean exp phi(y)."""
    # logsumexp − log m instead of log(mean(exp)) for stability
    return jnp.mean(phi_x) - (logsumexp(phi_y) - jnp.log(phi_y.shape[0]))


def reverse_kl_dual(phi_x, phi_y):
    """Reverse KL, f(r) = −log r, f*(s) = −1 − log(−s): mean phi(x) + 1 + mean log(−phi(y)), phi < 0."""
    return jnp.mean(phi_x) + 1.0 + jnp.mean(jnp.log(-phi_y))


def w1_dual(phi_x, phi_y):
    """Wasserstein-1 (IPM limit L → 0 of D_f^{Gamma_L} / L): mean phi(x) − mean phi(y)."""
    return jnp.mean(phi_x) - jnp.mean(phi_y)


def alpha_conjugate(s, alpha):
    """f_alpha*(s) for f_alpha(r) = (r^alpha − 1)/(alpha(alpha−1)) on r ≥ 0: for alpha > 1
    (alpha−1)^{alpha/(alpha−1)}/alpha · relu(s)^{alpha/(alpha−1)} + 1/(alpha(alpha−1)); for alpha < 1 (alpha ≠ 0),
    defined on s < 0 only, ((alpha−1)s)^{alpha/(alpha−1)}/alpha + 1/(alpha(alpha−1))."""
    p = alpha / (alpha - 1.0)
    if alpha < 1:
        return ((alpha - 1.0) * s) ** p / alpha + 1.0 / (alpha * (alpha - 1.0))
    return (alpha - 1.0) ** p / alpha * jnp.maximum(s, 0.0) ** p + 1.0 / (alpha * (alpha - 1.0))


def alpha_optimal_shift(phi_y, alpha, iterations: int = 60):
    """argmin_nu nu + mean f_alpha*(phi_y − nu), by bisection on mean ((alpha−1) relu(phi_y − nu))^{1/(alpha−1)} = 1.

    The root lies in [min phi − 1/(alpha−1), max phi]; returned without gradient (envelope theorem).
    """
    phi_y = jax.lax.stop_gradient(phi_y)

    def excess(nu):
        return jnp.mean(((alpha - 1.0) * jnp.maximum(phi_y - nu, 0.0)) ** (1.0 / (alpha - 1.0))) - 1.0

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = excess(mid) > 0  # root is to the right of mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jnp.min(phi_y) - 1.0 / (alpha - 1.0), jnp.max(phi_y)
    lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return 0.5 * (lo + hi)


def alpha_dual(phi_x, phi_y, alpha):
    """alpha-divergence, alpha > 1: mean phi(x) − min_nu [nu + mean f_alpha*(phi(y) − nu)], nu in closed form."""
    nu = alpha_optimal_shift(phi_y, alpha)
    return jnp.mean(phi_x) - (nu + jnp.mean(alpha_conjugate(phi_y - nu, alpha)))


def mass_covering_alpha_dual(phi_x, phi_y, alpha):
    """alpha-divergence, alpha < 1 (alpha ≠ 0), phi < 0: mean phi(x) − mean f_alpha*(phi(y)), where on s < 0
    f_alpha*(s) = ((alpha−1)s)^{alpha/(alpha−1)}/alpha + 1/(alpha(alpha−1)); the optimum phi = f_alpha'(p/q) =
    −(q/p)^{1−alpha}/(1−alpha). alpha → 0 is the reverse KL; alpha < 0 charges an uncovered region of Q more."""
    return jnp.mean(phi_x) - jnp.mean(alpha_conjugate(phi_y, alpha))


def _identity(h):
    return h


def _negative(h):
    # phi = −exp(h) < 0: the domain of the reverse-KL conjugate
    return -jnp.exp(h)


def get_divergence(name: str, alpha: float = 2.0) -> Divergence:
    """The divergence called `name` (one of config.DIVERGENCES)."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")
    if name == "alpha" and alpha in (0.0, 1.0):
        raise ValueError(f"alpha must be > 1 or < 1 and ≠ 0 (the limits are the KL and the reverse KL), got {alpha}")
    if name == "alpha" and alpha < 1:
        return Divergence("alpha", lambda px, py: mass_covering_alpha_dual(px, py, alpha), _negative)
    table = {
        "kl": Divergence("kl", kl_dual, _identity),
        "reverse_kl": Divergence("reverse_kl", reverse_kl_dual, _negative),
        "alpha": Divergence("alpha", lambda px, py: alpha_dual(px, py, alpha), _identity),
        "w1": Divergence("w1", w1_dual, _identity),
    }
    return table[name]


def gradient_penalty(critic_fn, x, y, key, L):
    """One-sided penalty GP = mean_i max(0, |∇phi(z_i)|² − L²), z_i = a_i y_i + (1 − a_i) x_i, a_i ~ U(0,1).

    critic_fn: per-sample phi, x -> scalar. x, y: (B, *shape). Returns (GP, |∇phi(z)| of shape (B,)).
    """
    a = jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype)
    z = a * y + (1.0 - a) * x
    grad_norm = gradient_norm(critic_fn, z)
    return jnp.mean(jnp.maximum(grad_norm**2 - L**2, 0.0)), grad_norm


def gradient_norm(critic_fn, x):
    """|∇phi(x_i)| for each sample: (B, *shape) -> (B,)."""
    g = jax.vmap(jax.grad(critic_fn))(x)
    return jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=-1))
