"""Mean-field-game losses and optimality indicators (DESIGN.md §5, §6).

Optimality: ∂tU − |∇U|²/(2 lam) = 0 (backward HJ), U(·, T) = phi* (terminal condition).
"""

from __future__ import annotations

import jax.numpy as jnp


def hj_pointwise(dt_u, grad_u, lam):
    """∂tU − |∇U|²/(2 lam) per particle: dt_u (..., B), grad_u (..., B, *shape) -> (..., B)."""
    # minus sign: with it, characteristics are straight lines (DESIGN.md §5); the authors' script has +
    sq = jnp.sum(grad_u.reshape(dt_u.shape + (-1,)) ** 2, axis=-1)
    return dt_u - sq / (2.0 * lam)


def hj_residual(dt_u, grad_u, h: float, lam: float):
    """R_HJ = Σ_k h · mean_i |∂tU(x_k^i, t_k) − |∇U(x_k^i, t_k)|²/(2 lam)|; dt_u (K, B), grad_u (K, B, *shape)."""
    return h * jnp.sum(jnp.mean(jnp.abs(hj_pointwise(dt_u, grad_u, lam)), axis=-1))


def terminal_residual(grad_u_T, grad_phi_T):
    """R_T = mean_i |∇U(x_K^i, T) − ∇phi(x_K^i)|; both (B, *shape)."""
    d = (grad_u_T - grad_phi_T).reshape(grad_u_T.shape[0], -1)
    return jnp.mean(jnp.sqrt(jnp.sum(d**2, axis=-1)))


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
