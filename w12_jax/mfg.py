"""Mean-field-game losses, optimality indicators and straightness penalties (design.md §5, §6, §11).

Optimality: ∂tU − |∇U|²/(2 lam) = 0 (backward HJ), U(·, T) = phi* (terminal condition); then
d/dt ∇U(x(t), t) = 0 along characteristics, so optimal paths are straight at constant speed. Each penalty
below is 0 on such a flow; added to the potential loss G they pull a learned flow towards it.
"""

from __future__ import annotations

import jax.numpy as jnp


def hj_pointwise(dt_u, grad_u, lam):
    """∂tU − |∇U|²/(2 lam) per particle: dt_u (..., B), grad_u (..., B, *shape) -> (..., B)."""
    # minus sign: with it, characteristics are straight lines (design.md §5); the authors' script has +
    sq = jnp.sum(grad_u.reshape(dt_u.shape + (-1,)) ** 2, axis=-1)
    return dt_u - sq / (2.0 * lam)


def hj_residual(dt_u, grad_u, h: float, lam: float):
    """R_HJ = Σ_k h · mean_i |∂tU(x_k^i, t_k) − |∇U(x_k^i, t_k)|²/(2 lam)|; dt_u (K, B), grad_u (K, B, *shape)."""
    return h * jnp.sum(jnp.mean(jnp.abs(hj_pointwise(dt_u, grad_u, lam)), axis=-1))


def _row_norms(d):
    """|d_i| for d (B, ...) -> (B,), with gradient 0 (not NaN) where d_i = 0."""
    sq = jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def terminal_residual(grad_u_T, grad_phi_T):
    """R_T = mean_i |∇U(x_K^i, T) − ∇phi(x_K^i)|; both (B, *shape)."""
    return jnp.mean(_row_norms(grad_u_T - grad_phi_T))


def velocity_consistency(grad_u, grad_u_T, h: float):
    """R_V = Σ_{k<K} h · mean_i |∇U(x_{k+1}^i, t_{k+1}) − ∇U(x_k^i, t_k)|² / h² (design.md §11).

    grad_u (K, B, *shape) at (x_k, t_k), k < K, as `euler_flow` returns it; grad_u_T (B, *shape) at (x_K, T).
    The discrete form of d/dt ∇U(x(t), t) = 0: zero iff every Euler step uses the same velocity, and then one
    step of h = T lands where the K steps do.
    """
    g = jnp.concatenate([grad_u, grad_u_T[None]], axis=0)
    d = (g[1:] - g[:-1]).reshape(g.shape[0] - 1, g.shape[1], -1)
    return jnp.sum(jnp.mean(jnp.sum(d**2, axis=-1), axis=-1)) / h


def chord_points(x0, x_T, t, T: float):
    """z_i = x0_i + (t_i/T)(x_T_i − x0_i): the point at time t_i of the straight constant-speed path."""
    w = (t / T).reshape((-1,) + (1,) * (x0.ndim - 1))
    return x0 + w * (x_T - x0)


def chord_consistency(grad_u_chord, x0, x_T, T: float, lam: float):
    """R_C = lam · T · mean_i ½ |v(z_i, t_i) − (x_T_i − x0_i)/T|², v = −∇U/lam, z_i = `chord_points`,
    t_i ~ U[0, T].

    A one-sample Monte-Carlo estimate of lam ∫_0^T E ½|v(z(t), t) − v̄|² dt, the kinetic energy (in the units
    of the W2 term) of the gap between the field and the chord's constant velocity v̄ = (x_T − x0)/T: zero
    iff every chord x0 → x_T is a path of the flow, so that any solver, one Euler step included, follows it.
    grad_u_chord (B, *shape) = ∇U(z_i, t_i).
    """
    v_gap = (-grad_u_chord / lam - (x_T - x0) / T).reshape(x0.shape[0], -1)
    return lam * T * jnp.mean(0.5 * jnp.sum(v_gap**2, axis=-1))


def potential_objective(phi_T, kinetic, lam: float, w2_weight: float):
    """G = mean_i phi(x_K^i) + w2_weight · lam · KE (w2_weight 1: W2 proximal on, 0: off)."""
    return jnp.mean(phi_T) + w2_weight * lam * kinetic


def critic_objective(dual_value, penalty, gp_weight: float):
    """Loss minimised by phi: −(dual objective) + gp_weight · GP (gp_weight 0 without the W1 proximal)."""
    return -dual_value + gp_weight * penalty


def straight_line_bound(x0, x_T, T: float):
    """½ mean_i |x_T^i − x_0^i|² / T: the kinetic energy of straight constant-speed paths, a lower bound."""
    d = (x_T - x0).reshape(x0.shape[0], -1)
    return 0.5 * jnp.mean(jnp.sum(d**2, axis=-1)) / T


def jacobian_asymmetry(v, x, t, key):
    """E|uᵀJw − wᵀJu| of J = ∂v/∂x at a batch x (B, *shape), time t, for standard normal probes u, w (one JVP and
    one VJP per sample): 0 iff J is symmetric, as it is for a gradient field v = −∇U/lam (design.md §12)."""
    import jax

    ku, kw = jax.random.split(key)
    u = jax.random.normal(ku, x.shape, x.dtype)
    w = jax.random.normal(kw, x.shape, x.dtype)
    _, jw = jax.jvp(lambda y: v(y, t), (x,), (w,))
    _, pullback = jax.vjp(lambda y: v(y, t), x)
    (jtw,) = pullback(w)  # Jᵀw per sample (v acts on each sample alone): wᵀJu = uᵀ(Jᵀw)
    b = x.shape[0]
    return jnp.mean(jnp.abs(jnp.sum((u * (jw - jtw)).reshape(b, -1), -1)))
