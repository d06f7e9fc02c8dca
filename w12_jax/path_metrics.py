"""Flow diagnostics on an Euler path (design.md §5, §9).

A path is an array ``(K+1, n, *shape)`` of positions ``x_0..x_K`` at ``t_k = k·T/K``:
``straightness_deviation``, ``straightness_ratio``, ``path_kinetic_energy``, ``straight_line_bound``
(of end points ``(n, *shape)``) and ``discretization_deviation`` (samples at step h against a reference
resolution). Pure functions, each returning a scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from w12_jax import mfg

Array = jax.Array


def _as_path(path) -> Array:
    path = jnp.asarray(path, dtype=jnp.float32)
    if path.ndim < 3 or path.shape[0] < 2:
        raise ValueError(f"path must have shape (K+1, n, *shape) with K >= 1, got {path.shape}")
    return path.reshape(path.shape[0], path.shape[1], -1)


def _check_T(T) -> float:
    T = float(T)
    if not T > 0.0:
        raise ValueError(f"T must be positive, got {T}")
    return T


def straightness_deviation(path, T: float) -> Array:
    """Σ_k h · mean_i |v_k^i − (x_K^i − x_0^i)/T|²,  v_k = (x_{k+1} − x_k)/h,  h = T/K.

    0 exactly for straight, constant-speed paths (design.md §5, §9). Equals 2·(KE − straight-line
    bound) of the same path. path: (K+1, n, *shape) -> scalar.
    """
    p = _as_path(path)
    T = _check_T(T)
    K = p.shape[0] - 1
    h = T / K
    v = (p[1:] - p[:-1]) / h
    mean_v = (p[-1:] - p[:1]) / T
    return h * jnp.sum(jnp.mean(jnp.sum((v - mean_v) ** 2, axis=-1), axis=1))


def straightness_ratio(path) -> Array:
    """mean_i |x_K^i − x_0^i|  /  mean_i Σ_k |x_{k+1}^i − x_k^i|  (ratio of means; 1 iff straight).

    Lies in [0, 1] (triangle inequality); a ratio of means, so particles that do not move carry no
    weight instead of giving 0/0. path: (K+1, n, *shape) -> scalar.
    """
    p = _as_path(path)
    chord = jnp.mean(jnp.linalg.norm(p[-1] - p[0], axis=-1))
    length = jnp.mean(jnp.sum(jnp.linalg.norm(p[1:] - p[:-1], axis=-1), axis=0))
    return chord / length


def path_kinetic_energy(path, T: float) -> Array:
    """Discrete kinetic energy of the path taken:  Σ_k h · mean_i ½|v_k^i|²,  v_k = (x_{k+1} − x_k)/h.

    path: (K+1, n, *shape) -> scalar (design.md §3; ≥ straight_line_bound(x_0, x_K, T)).
    """
    p = _as_path(path)
    T = _check_T(T)
    K = p.shape[0] - 1
    h = T / K
    v = (p[1:] - p[:-1]) / h
    return h * jnp.sum(jnp.mean(0.5 * jnp.sum(v * v, axis=-1), axis=1))


def straight_line_bound(x0, xT, T: float) -> Array:
    """Kinetic energy of straight constant-speed paths:  ½ mean_i |x_T^i − x_0^i|² / T.

    Lower bound on the kinetic energy of any path with these end points. x0, xT: (n, *shape).
    """
    x0 = jnp.asarray(x0, dtype=jnp.float32)
    xT = jnp.asarray(xT, dtype=jnp.float32)
    if x0.shape != xT.shape or x0.ndim < 2:
        raise ValueError(f"x0 and xT must share a shape (n, *shape), got {x0.shape} and {xT.shape}")
    return mfg.straight_line_bound(x0, xT, _check_T(T))


def discretization_deviation(x_h, x_ref) -> Array:
    """mean_i |x_h^i − x_ref^i|  /  mean_i |x_ref^i − x_ref^{(i+1) mod n}|.

    Distance between samples from the same x_0 at step h and at the reference resolution, in
    units of the mean distance between independent samples (the roll of x_ref pairs distinct
    samples); ≈ 1 when x_h is independent of x_ref. x_h, x_ref: (n, *shape), n >= 2 -> scalar.
    """
    a = jnp.asarray(x_h, dtype=jnp.float32)
    b = jnp.asarray(x_ref, dtype=jnp.float32)
    if a.shape != b.shape or a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"x_h and x_ref must share a shape (n, *shape) with n >= 2, got {a.shape} and {b.shape}")
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    num = jnp.mean(jnp.linalg.norm(a - b, axis=1))
    den = jnp.mean(jnp.linalg.norm(b - jnp.roll(b, 1, axis=0), axis=1))
    return num / den
