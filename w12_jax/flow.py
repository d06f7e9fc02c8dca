"""The flow dx/dt = −∇U(x, t)/lam: forward Euler unrolled for training, and its discrete kinetic energy.

    x_{k+1} = x_k − (h/lam) ∇U(x_k, t_k),   t_k = k h,   K = T/h           (design.md §3)
    KE = Σ_k h · mean_i ½ |∇U(x_k^i, t_k)/lam|²   (the velocity actually used)
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

ScalarPotential = Callable[[jax.Array, jax.Array], jax.Array]  # (x: data_shape, t: ()) -> ()

# Loops of at most this many steps are unrolled: XLA:CPU runs a while-loop body on one thread, so a
# rolled 5-step flow took 2.0x as long as the unrolled one on 2 cores (benchmarks/results/README.md).
MAX_UNROLL = 16


def unroll_for(num_steps: int) -> int | bool:
    """`lax.scan`'s `unroll`: everything for short loops (≤ MAX_UNROLL), else a rolled loop."""
    return True if num_steps <= MAX_UNROLL else 1


def scalar_potential(potential, params) -> ScalarPotential:
    """u(x, t) for ONE sample from a batched Flax potential module and its params."""

    def u(x, t):
        return potential.apply(params, x[None], jnp.reshape(t, (1,)))[0]

    return u


def potential_derivatives(u: ScalarPotential, x, t):
    """(∇_x U(x_i, t), ∂_t U(x_i, t)) for a batch x (B, *shape) at one time t: shapes (B, *shape), (B,)."""
    return jax.vmap(jax.grad(u, argnums=(0, 1)), in_axes=(0, None))(x, jnp.asarray(t, x.dtype))


def velocity(network, params, lam: float):
    """v(x, t) for a batch x (B, *shape) at times t (B,) or one time (): −∇U(x, t)/lam for a potential
    network, the output itself for a `networks.VelocityField`."""
    from w12_jax.networks import VelocityField

    if isinstance(network, VelocityField):
        return lambda x, t: network.apply(params, x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]))
    u = scalar_potential(network, params)

    def v(x, t):
        t = jnp.asarray(t, x.dtype)
        if t.ndim == 0:
            return -potential_derivatives(u, x, t)[0] / lam
        return -jax.vmap(jax.grad(u))(x, t) / lam

    return v


class EulerFlow(NamedTuple):
    """Result of `euler_flow`: x_T (B, *shape); ∇U and ∂tU at (x_k, t_k), k < K: (K, B, *shape), (K, B);
    path x_0..x_K (K+1, B, *shape) when requested, else None."""

    x_T: jax.Array
    grad_u: jax.Array
    dt_u: jax.Array
    path: Optional[jax.Array]


def euler_flow(u: ScalarPotential, x0, T: float, num_steps: int, lam: float, keep_path: bool = False) -> EulerFlow:
    """Forward Euler for dx/dt = −∇U/lam from t=0 to T in `num_steps` steps (differentiable, `lax.scan`)."""
    h = T / num_steps

    def step(x, k):
        t = k * h
        g, dtu = potential_derivatives(u, x, t)
        x_next = x - (h / lam) * g
        return x_next, (g, dtu, x)

    x_T, (grad_u, dt_u, xs) = jax.lax.scan(step, x0, jnp.arange(num_steps, dtype=x0.dtype),
                                           unroll=unroll_for(num_steps))
    path = jnp.concatenate([xs, x_T[None]], axis=0) if keep_path else None
    return EulerFlow(x_T, grad_u, dt_u, path)


def kinetic_energy(grad_u, h: float, lam: float):
    """KE = Σ_k h · mean_i ½ |∇U(x_k^i, t_k)/lam|², from grad_u of shape (K, B, *shape)."""
    sq = jnp.sum((grad_u / lam).reshape(grad_u.shape[0], grad_u.shape[1], -1) ** 2, axis=-1)
    return h * jnp.sum(jnp.mean(0.5 * sq, axis=1))


def euler_velocity_flow(v, x0, T: float, num_steps: int, lam: float) -> EulerFlow:
    """Forward Euler x_{k+1} = x_k + h v(x_k, t_k) for a direct velocity field v(x (B, *shape), t ()) -> (B, *shape)
    (design.md §12), differentiable. Returned as an `EulerFlow` with grad_u = −lam·v(x_k, t_k), the ∇U a
    gradient field would have, so that kinetic energy and penalties read it alike; dt_u = 0 (no potential)."""
    h = T / num_steps

    def step(x, k):
        vk = v(x, k * h)
        return x + h * vk, -lam * vk

    x_T, grad_u = jax.lax.scan(step, x0, jnp.arange(num_steps, dtype=x0.dtype), unroll=unroll_for(num_steps))
    return EulerFlow(x_T, grad_u, jnp.zeros(grad_u.shape[:2], x0.dtype), None)
