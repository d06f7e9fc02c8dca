"""The straightness penalties of design.md §11 as a registry of named pure functions, like `divergences`.

    G = mean phi(x_K) + lam·KE + Σ_w w · R_w(flow)       w: the config field `Penalty.weight_key`

Each R_w is 0 on a flow that solves the MFG system (straight characteristics, U(·, T) = phi); the formulas
are in `mfg`. A penalty reads what it needs from `PenaltyInputs`, which computes ∇U(x_K, T) at most once
when several penalties need it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax

from w12_jax import mfg
from w12_jax.config import PENALTY_WEIGHTS
from w12_jax.flow import EulerFlow, ScalarPotential, potential_derivatives


def terminal_gradient(u: ScalarPotential | None, v: Callable | None, x_T, T: float, lam: float) -> jax.Array:
    """∇U(x_K, T) of a potential u for one sample, or −lam·v(x_K, T) of a direct field v for a batch: (B, *shape)."""
    if u is None:
        return -lam * v(x_T, T)
    return potential_derivatives(u, x_T, T)[0]


class PenaltyInputs:
    """What a penalty reads: u(x, t) for one sample (None for a direct velocity field v(x (B, *shape), t),
    whose −lam·v stands in for ∇U), the unrolled flow from x0 (B, *shape), the frozen critic phi(x) for one
    sample, a PRNG key (the chord times) and T, h, lam."""

    def __init__(self, u: ScalarPotential | None, flow: EulerFlow, x0: jax.Array, critic: Callable, key, T: float,
                 dt: float, lam: float, v: Callable | None = None):
        self.u, self.v, self.flow, self.x0, self.critic, self.key = u, v, flow, x0, critic, key
        self.T, self.dt, self.lam = T, dt, lam

    @functools.cached_property
    def grad_u_T(self) -> jax.Array:
        """∇U(x_K, T) (or −lam·v(x_K, T)): (B, *shape)."""
        return terminal_gradient(self.u, self.v, self.flow.x_T, self.T, self.lam)

    def grad_u(self, z, t) -> jax.Array:
        """∇U(z_i, t_i) (or −lam·v(z_i, t_i)) for z (B, *shape), t (B,)."""
        if self.u is None:
            return -self.lam * self.v(z, t)
        return jax.vmap(jax.grad(self.u))(z, t)


def hj(p: PenaltyInputs):
    """R_HJ on the flowed particles (`mfg.hj_residual`)."""
    return mfg.hj_residual(p.flow.dt_u, p.flow.grad_u, p.dt, p.lam)


def terminal(p: PenaltyInputs):
    """R_T = mean |∇U(x_K, T) − ∇phi(x_K)| with phi frozen (`mfg.terminal_residual`)."""
    return mfg.terminal_residual(p.grad_u_T, jax.vmap(jax.grad(p.critic))(p.flow.x_T))


def velocity(p: PenaltyInputs):
    """R_V = Σ_k h mean |∇U(x_{k+1}, t_{k+1}) − ∇U(x_k, t_k)|² / h² (`mfg.velocity_consistency`)."""
    return mfg.velocity_consistency(p.flow.grad_u, p.grad_u_T, p.dt)


def chord(p: PenaltyInputs):
    """R_C at t_i ~ U[0, T] (from the key) on the chords x0 → x_K held fixed (stop_gradient), so that it
    shapes U between the grid points without pulling the samples (`mfg.chord_consistency`)."""
    x_T = jax.lax.stop_gradient(p.flow.x_T)
    t = jax.random.uniform(p.key, (p.x0.shape[0],), p.x0.dtype, 0.0, p.T)
    grad_u_chord = p.grad_u(mfg.chord_points(p.x0, x_T, t, p.T), t)
    return mfg.chord_consistency(grad_u_chord, p.x0, x_T, p.T, p.lam)


class Penalty(NamedTuple):
    """A straightness penalty: the config field holding its weight, and R(inputs) -> ()."""

    weight_key: str
    value: Callable[[PenaltyInputs], jax.Array]
    needs_key: bool = False  # draws random numbers (from PenaltyInputs.key)


# the order in which their weighted values are added to G
PENALTIES: dict[str, Penalty] = {
    "hj": Penalty("hj_weight", hj),
    "terminal": Penalty("terminal_weight", terminal),
    "velocity": Penalty("velocity_weight", velocity),
    "chord": Penalty("chord_weight", chord, needs_key=True),
}
assert tuple(p.weight_key for p in PENALTIES.values()) == PENALTY_WEIGHTS, "config.PENALTY_WEIGHTS lists them"


def active_penalties(config) -> tuple[tuple[float, Penalty], ...]:
    """(weight, penalty) for every penalty whose weight in `config` is > 0, in registry order."""
    return tuple((getattr(config, p.weight_key), p) for p in PENALTIES.values() if getattr(config, p.weight_key) > 0)


def penalty_values(active: tuple[tuple[float, Penalty], ...], inputs: PenaltyInputs) -> dict:
    """{weight_key: R (unweighted)} of the `active` penalties."""
    return {p.weight_key: p.value(inputs) for _, p in active}
