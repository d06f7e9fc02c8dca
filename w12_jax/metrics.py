"""Evaluation metrics for W1⊕W2 proximal flows (design.md §5, §8, §9).

Three groups, all pure functions over explicit arrays (and PRNG keys where random):

- low-dimensional sample quality, ``x`` generated and ``y`` held-out data, arrays ``(n, d)``:
  ``energy_distance``, ``mmd_rbf``, ``sliced_wasserstein2``, ``sinkhorn_divergence``, ``off_manifold_mass``;
- flow diagnostics on an Euler path ``(K+1, n, *shape)`` of positions ``x_0..x_K`` at
  ``t_k = k·T/K``: ``straightness_deviation``, ``straightness_ratio``, ``path_kinetic_energy``,
  ``straight_line_bound``, ``discretization_deviation``;
- image quality for 28×28×1 digits in [0, 1]: a small CNN ``DigitClassifier`` trained on real
  digits, ``frechet_distance`` in its feature space, and ``image_quality``.

Pairwise statistics are evaluated in row chunks, so 10k × 10k pairs never sit in memory at once.
"""

from __future__ import annotations

import os
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from w12_jax import intervals, mfg
from w12_jax.intervals import BOOTSTRAP_RESAMPLES

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------
def _as_2d(name: str, a) -> Array:
    a = jnp.asarray(a, dtype=jnp.float32)
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {a.shape}")
    return a


def _as_pair(x, y) -> tuple[Array, Array]:
    x, y = _as_2d("x", x), _as_2d("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension d, got {x.shape} and {y.shape}")
    return x, y


def _check_chunk(chunk_size: int) -> None:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


# ----------------------------------------------------------------------------------------------
# Chunked pairwise reductions
# ----------------------------------------------------------------------------------------------
def _pad_rows(a: Array, chunk: int) -> tuple[Array, Array]:
    """Pad ``a`` (n, d) to a multiple of ``chunk`` rows; returns (chunks (c, chunk, d), mask (c, chunk))."""
    n = a.shape[0]
    num = -(-n // chunk)
    pad = num * chunk - n
    a_p = jnp.pad(a, ((0, pad), (0, 0)))
    mask = jnp.arange(num * chunk) < n
    return a_p.reshape(num, chunk, a.shape[1]), mask.reshape(num, chunk)


def _sq_dists(a: Array, b: Array) -> Array:
    """|a_i − b_j|² for a (c, d), b (m, d) -> (c, m), via |a|² + |b|² − 2 a·b, clipped at 0."""
    aa = jnp.sum(a * a, axis=1, keepdims=True)
    bb = jnp.sum(b * b, axis=1, keepdims=True).T
    ab = jnp.matmul(a, b.T, precision=_HIGHEST)
    return jnp.maximum(aa + bb - 2.0 * ab, 0.0)


def _pair_mean(
    a: Array,
    b: Array,
    kernel: Callable[[Array], Array],
    exclude_diagonal: bool,
    chunk_size: int,
) -> Array:
    """mean over pairs (i, j) of kernel(|a_i − b_j|²); with exclude_diagonal, pairs i = j are dropped.

    a: (n, d), b: (m, d); evaluated ``chunk_size`` rows of ``a`` at a time (memory O(chunk·m)).
    """
    n, m = a.shape[0], b.shape[0]
    chunk = min(int(chunk_size), n)
    chunks, mask = _pad_rows(a, chunk)
    starts = jnp.arange(chunks.shape[0]) * chunk
    cols = jnp.arange(m)

    def body(args):
        a_c, mask_c, start = args
        k = kernel(_sq_dists(a_c, b))
        keep = jnp.broadcast_to(mask_c[:, None], k.shape)
        if exclude_diagonal:
            rows = start + jnp.arange(chunk)
            keep = keep & (rows[:, None] != cols[None, :])
        return jnp.sum(jnp.where(keep, k, 0.0))

    total = jnp.sum(jax.lax.map(body, (chunks, mask, starts)))
    count = n * (m - 1) if exclude_diagonal else n * m
    return total / count


def _distance_kernel(sq: Array) -> Array:
    return jnp.sqrt(sq)


# ----------------------------------------------------------------------------------------------
# Low-dimensional sample quality
# ----------------------------------------------------------------------------------------------
def energy_distance(x, y, chunk_size: int = 1024) -> Array:
    """Energy distance  2 E|X−Y| − E|X−X'| − E|Y−Y'|  (unbiased U-statistic).

    The within-sample terms average over pairs i ≠ j (divide by n(n−1)), the cross term over all
    n·m pairs, so the estimate is unbiased for the population value (it can be slightly negative
    when the two laws are equal). x: (n, d), y: (m, d), n, m >= 2 -> scalar.
    Memory O(chunk_size · max(n, m)).
    """
    x, y = _as_pair(x, y)
    _check_chunk(chunk_size)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"energy_distance needs n, m >= 2, got {x.shape[0]} and {y.shape[0]}")
    # Distances are translation invariant; centring reduces cancellation in |a|²+|b|²−2a·b.
    return _energy_distance(x, y, int(chunk_size))


@partial(jax.jit, static_argnums=2)
def _energy_distance(x: Array, y: Array, chunk_size: int) -> Array:
    # Distances are translation invariant; centring reduces cancellation in |a|²+|b|²−2a·b.
    c = jnp.mean(jnp.concatenate([x, y], axis=0), axis=0, keepdims=True)
    x, y = x - c, y - c
    exy = _pair_mean(x, y, _distance_kernel, False, chunk_size)
    exx = _pair_mean(x, x, _distance_kernel, True, chunk_size)
    eyy = _pair_mean(y, y, _distance_kernel, True, chunk_size)
    return 2.0 * exy - exx - eyy


DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def mmd_rbf(x, y, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS, chunk_size: int = 1024) -> Array:
    """Squared MMD with k(a, b) = Σ_σ exp(−|a−b|² / (2σ²)) (unbiased U-statistic).

    MMD² = E k(X,X') + E k(Y,Y') − 2 E k(X,Y), within-sample terms over pairs i ≠ j.
    x: (n, d), y: (m, d), n, m >= 2 -> scalar (≈ 0 for equal laws, can be slightly negative).
    """
    x, y = _as_pair(x, y)
    _check_chunk(chunk_size)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"mmd_rbf needs n, m >= 2, got {x.shape[0]} and {y.shape[0]}")
    bw = tuple(float(s) for s in bandwidths)
    if len(bw) == 0 or min(bw) <= 0.0:
        raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers, got {bandwidths}")
    return _mmd_rbf(x, y, tuple(1.0 / (2.0 * s * s) for s in bw), int(chunk_size))


@partial(jax.jit, static_argnums=(2, 3))
def _mmd_rbf(x: Array, y: Array, inv: tuple[float, ...], chunk_size: int) -> Array:
    def kernel(sq):
        return sum(jnp.exp(-c * sq) for c in inv)

    kxx = _pair_mean(x, x, kernel, True, chunk_size)
    kyy = _pair_mean(y, y, kernel, True, chunk_size)
    kxy = _pair_mean(x, y, kernel, False, chunk_size)
    return kxx + kyy - 2.0 * kxy


def _quantiles(sorted_proj: Array, u: Array) -> Array:
    """Linear interpolation of the empirical quantile function.

    sorted_proj: (p, n) ascending, u: (N,) in (0, 1) -> (p, N). Sample i sits at level (i + ½)/n,
    so for N = n and u_i = (i + ½)/n this returns the sorted samples exactly.
    """
    n = sorted_proj.shape[1]
    pos = jnp.clip(u * n - 0.5, 0.0, n - 1.0)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n - 1)
    w = (pos - lo.astype(pos.dtype))[None, :]
    return (1.0 - w) * sorted_proj[:, lo] + w * sorted_proj[:, hi]


def sliced_wasserstein2(x, y, key: Array, num_projections: int = 256) -> Array:
    """Sliced W2²:  E_θ W2²(θ·X, θ·Y), θ uniform on the unit sphere S^{d−1}.

    Each 1-D W2² is ∫_0^1 |F⁻¹_θ·X(u) − F⁻¹_θ·Y(u)|² du, evaluated on the grid u_i = (i + ½)/N,
    N = max(n, m): for n = m that is the mean squared difference of the sorted projections; for
    n ≠ m the empirical quantile functions are linearly interpolated. For N(0, I) vs N(m, I) the
    value is E(θ·m)² = |m|²/d. x: (n, d), y: (m, d), key: PRNG key -> scalar.
    """
    x, y = _as_pair(x, y)
    if int(num_projections) < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    d = x.shape[1]
    theta = jax.random.normal(key, (int(num_projections), d), dtype=jnp.float32)
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    px = jnp.sort(jnp.matmul(theta, x.T, precision=_HIGHEST), axis=1)
    py = jnp.sort(jnp.matmul(theta, y.T, precision=_HIGHEST), axis=1)
    n, m = x.shape[0], y.shape[0]
    if n != m:
        big = max(n, m)
        u = (jnp.arange(big, dtype=jnp.float32) + 0.5) / big
        px, py = _quantiles(px, u), _quantiles(py, u)
    return jnp.mean((px - py) ** 2)


AUTHORS_EPSILON = 0.0025  # geomloss SamplesLoss("sinkhorn", p=2, blur=0.05): eps = blur² (design.md §8)


def sinkhorn_divergence(x, y, epsilon: float = AUTHORS_EPSILON, threshold: float = 1e-3,
                        max_iterations: int = 10_000) -> Array:
    """Debiased Sinkhorn divergence S_eps(x, y) = OT_eps(x, y) − ½OT_eps(x, x) − ½OT_eps(y, y) with the cost
    ½|x − y|² (so S → ½W2² as eps → 0), uniform weights, through ott-jax. x: (n, d), y: (m, d) -> scalar.

    The authors' low-dimensional figures use eps = 0.0025 on the first two coordinates (design.md §8).
    eps is annealed from 1 (×0.9 per iteration) to its target, which takes most of the iterations out of
    a small-eps solve; `threshold` is the marginal error at which each Sinkhorn solve stops.
    """
    return sinkhorn_divergence_and_sd(x, y, epsilon, threshold, max_iterations)[0]


def sinkhorn_divergence_and_sd(x, y, epsilon: float = AUTHORS_EPSILON, threshold: float = 1e-3,
                               max_iterations: int = 10_000) -> tuple[Array, Array]:
    """(S_eps(x, y), its first-order sampling sd) from one set of solves (`sinkhorn_divergence`).

    S is differentiable in each measure, with gradient the debiased dual potential (Feydy et al. 2019), so
    to first order S(α_n, β_m) − S(α, β) = mean_i F(x_i) + mean_j G(y_j) − E[…], F = f_xy − f_xx,
    G = g_xy − g_yy (the potentials of the three solves), and

        sd² = Var_i F(x_i) / n + Var_j G(y_j) / m        (the central limit theorem of del Barrio et al. 2023).

    At α = β the first-order term vanishes and this sd tends to 0: it does not cover the estimator's
    second-order spread there (the floor of data against data).
    """
    x, y = _as_pair(x, y)
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    with jax.numpy_rank_promotion("allow"):  # ott-jax broadcasts ranks implicitly
        value, variance = _sinkhorn_divergence(x, y, float(epsilon), float(threshold), int(max_iterations))
    return value, jnp.sqrt(variance)


@partial(jax.jit, static_argnums=(2, 3, 4))
def _sinkhorn_divergence(x: Array, y: Array, epsilon: float, threshold: float,
                         max_iterations: int) -> tuple[Array, Array]:
    from ott.geometry import epsilon_scheduler, pointcloud
    from ott.tools.sinkhorn_divergence import sinkhorn_divergence as ott_divergence

    scale = 1.0 / np.sqrt(2.0)  # |x/√2 − y/√2|² = ½|x − y|²: ott's squared Euclidean cost on scaled points
    eps = epsilon_scheduler.Epsilon(target=epsilon, init=max(1.0, 1.0 / epsilon), decay=0.9)
    value, out = ott_divergence(pointcloud.PointCloud, x * scale, y * scale, epsilon=eps,
                                solve_kwargs={"threshold": threshold, "max_iterations": max_iterations})
    (f_xy, g_xy), (f_xx, _), (_, g_yy) = out.potentials
    variance = jnp.var(f_xy - f_xx) / x.shape[0] + jnp.var(g_xy - g_yy) / y.shape[0]
    return value, variance


AUTHORS_BLUR, AUTHORS_SCALING = 0.05, 0.5  # geomloss SamplesLoss("sinkhorn", p=2, blur=0.05), default scaling


def eps_scaling_sinkhorn_divergence(x, y, blur: float = AUTHORS_BLUR, scaling: float = AUTHORS_SCALING) -> Array:
    """Debiased Sinkhorn divergence by ε-scaling, the estimator the authors' figures come from (geomloss's
    SamplesLoss("sinkhorn", p=2, blur, scaling), design.md §8): cost C = ½|x − y|², uniform weights.

    ε runs down the schedule D², then exp(e) for e from 2 log D to 2 log blur in steps of 2 log scaling, then
    blur² (D: the diagonal of the joint bounding box); at each ε one averaged symmetric update of the four
    potentials, f ← ½(f + softmin_ε(C, log b + g/ε)) and likewise g, f_xx, g_yy, with
    softmin_ε(C, h)_i = −ε log Σ_j exp(h_j − C_ij/ε); then one last update at blur². The divergence is
    mean_i (f_xy − f_xx)(x_i) + mean_j (g_xy − g_yy)(y_j). A fixed ~log(D/blur)/log(1/scaling) + 2 updates,
    not a solve to convergence: it is the authors' number, not `sinkhorn_divergence`'s.
    x: (n, d), y: (m, d) -> scalar. Memory: the n·m, n² and m² cost matrices.
    """
    x, y = _as_pair(x, y)
    if not (0 < blur and 0 < scaling < 1):
        raise ValueError(f"need blur > 0 and 0 < scaling < 1, got {blur}, {scaling}")
    both = np.concatenate([np.asarray(x), np.asarray(y)])
    diameter = float(np.linalg.norm(both.max(axis=0) - both.min(axis=0)))
    schedule = ([diameter ** 2] + list(np.exp(np.arange(2 * np.log(diameter), 2 * np.log(blur), 2 * np.log(scaling))))
                + [blur ** 2])
    return _eps_scaling_sinkhorn(x, y, jnp.asarray(schedule, jnp.float32))


@jax.jit
def _eps_scaling_sinkhorn(x: Array, y: Array, schedule: Array) -> Array:
    def cost(a, b):
        return 0.5 * _sq_dists(a, b)

    c_xy, c_xx, c_yy = cost(x, y), cost(x, x), cost(y, y)
    log_a = jnp.full(x.shape[0], -jnp.log(x.shape[0]))
    log_b = jnp.full(y.shape[0], -jnp.log(y.shape[0]))

    def softmin(eps, c, h):  # −ε log Σ_j exp(h_j − c_ij/ε), over the columns of c
        return -eps * jax.nn.logsumexp(h[None, :] - c / eps, axis=1)

    def update(eps, f_ba, g_ab, f_aa, g_bb):
        return (softmin(eps, c_xy, log_b + g_ab / eps), softmin(eps, c_xy.T, log_a + f_ba / eps),
                softmin(eps, c_xx, log_a + f_aa / eps), softmin(eps, c_yy, log_b + g_bb / eps))

    eps0 = schedule[0]
    start = (softmin(eps0, c_xy, log_b), softmin(eps0, c_xy.T, log_a), softmin(eps0, c_xx, log_a),
             softmin(eps0, c_yy, log_b))

    def body(potentials, eps):
        new = update(eps, *potentials)
        return tuple(0.5 * (p + q) for p, q in zip(potentials, new)), None

    potentials, _ = jax.lax.scan(body, start, schedule)
    f_ba, g_ab, f_aa, g_bb = update(schedule[-1], *potentials)
    return jnp.mean(f_ba - f_aa) + jnp.mean(g_ab - g_bb)


def off_manifold_mass(x, manifold_dim: int = 2) -> Array:
    """Mean Euclidean norm of the padded coordinates:  mean_i |x_i[manifold_dim:]|.

    For data embedded in R^D by zero padding of its first ``manifold_dim`` coordinates this is 0
    on the data manifold. x: (n, D) with D >= manifold_dim -> scalar.
    """
    x = _as_2d("x", x)
    k = int(manifold_dim)
    if k < 0 or k > x.shape[1]:
        raise ValueError(f"manifold_dim must lie in [0, {x.shape[1]}], got {manifold_dim}")
    return jnp.mean(jnp.linalg.norm(x[:, k:], axis=1))


# ----------------------------------------------------------------------------------------------
# Flow diagnostics
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------
def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, q = np.linalg.eigh(cov)
    return (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """W2² between N(μa, Σa) and N(μb, Σb):  |μa−μb|² + tr(Σa + Σb − 2(Σa Σb)^{1/2}).

    tr(Σa Σb)^{1/2} = Σ √λ_i with λ_i the eigenvalues of the symmetric PSD matrix
    Σa^{1/2} Σb Σa^{1/2} (same spectrum as Σa Σb); negative round-off eigenvalues are clipped,
    so the result is real. Float64. mu: (d,), cov: (d, d) -> float.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0] if mu_a.ndim == 1 else -1
    if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"expected mu (d,) and cov (d, d), got {mu_a.shape}, {cov_a.shape}, {mu_b.shape}, {cov_b.shape}"
        )
    cov_a = 0.5 * (cov_a + cov_a.T)
    cov_b = 0.5 * (cov_b + cov_b.T)
    s = _psd_sqrt(cov_a)
    m = s @ cov_b @ s
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))
    diff = mu_a - mu_b
    value = float(diff @ diff) + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * tr_sqrt
    return max(value, 0.0)


def frechet_distance(feat_a, feat_b) -> float:
    """Fréchet distance of features:  |μa−μb|² + tr(Σa + Σb − 2(Σa Σb)^{1/2}).

    μ, Σ are the sample mean and covariance (ddof = 1) of each set, in float64.
    feat_a: (n, f), feat_b: (m, f), n, m >= 2 -> float (0 for identical feature sets).
    """
    a = np.asarray(feat_a, np.float64)
    b = np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features must have shapes (n, f), (m, f) with n, m >= 2, got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1]),
        b.mean(axis=0), np.cov(b, rowvar=False, ddof=1).reshape(b.shape[1], b.shape[1]),
    )


# ----------------------------------------------------------------------------------------------
# Digit classifier
# ----------------------------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """Small CNN for 28×28×1 digits in [0, 1]: conv 3×3 stride 2 ReLU, twice (28→14→7) → dense → logits.

    ``__call__(x)`` returns logits (B, 10); ``__call__(x, features=True)`` returns the
    ``feature_dim`` ReLU features of the dense layer (B, feature_dim), used for Fréchet distances.
    """

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: Array, features: bool = False) -> Array:
        x = x.reshape((x.shape[0],) + IMAGE_SHAPE)
        for c in self.channels:
            # Stride-2 convolutions instead of conv + pool: 4× cheaper on CPU, same 7×7 grid.
            x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2))(x))
        x = x.reshape((x.shape[0], -1))
        f = nn.relu(nn.Dense(self.feature_dim)(x))
        if features:
            return f
        return nn.Dense(NUM_CLASSES)(f)


def _as_images(name: str, images) -> np.ndarray:
    a = np.asarray(images, dtype=np.float32)
    if a.ndim < 2 or a.shape[0] < 1 or int(np.prod(a.shape[1:])) != 28 * 28:
        raise ValueError(f"{name} must have shape (n, 28, 28, 1) or (n, 784), got {a.shape}")
    return a.reshape((a.shape[0],) + IMAGE_SHAPE)


def _as_labels(name: str, labels, n: int) -> np.ndarray:
    lab = np.asarray(labels).astype(np.int32)
    if lab.shape != (n,) or lab.min() < 0 or lab.max() >= NUM_CLASSES:
        raise ValueError(f"{name} must have shape ({n},) with values in 0..9, got {lab.shape}")
    return lab


def classifier_apply(params, images, *, features: bool = False, batch_size: int = 1000) -> np.ndarray:
    """Logits (n, 10) or features (n, 128) of ``DigitClassifier`` on images (n, 28, 28, 1), in batches."""
    imgs = _as_images("images", images)
    outs = [
        np.asarray(_classifier_apply(params, jnp.asarray(imgs[i:i + batch_size]), features))
        for i in range(0, imgs.shape[0], batch_size)
    ]
    return np.concatenate(outs, axis=0)


@partial(jax.jit, static_argnums=2)
def _classifier_apply(params, x: Array, features: bool) -> Array:
    return DigitClassifier().apply({"params": params}, x, features=features)


def train_digit_classifier(
    train_images,
    train_labels,
    heldout_images,
    heldout_labels,
    *,
    seed: int = 0,
    epochs: int = 6,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_shift: int = 2,
):
    """Train ``DigitClassifier`` by softmax cross-entropy with optax Adam; returns (params, heldout accuracy).

    Images (n, 28, 28, 1) or (n, 784) in [0, 1], labels (n,) int in 0..9. Each epoch is one
    compiled ``lax.scan`` over shuffled mini-batches (a trailing partial batch is dropped), each
    image shifted at random by up to ``max_shift`` pixels; the learning rate follows a cosine
    decay. Deterministic given ``seed``.
    """
    x_tr = _as_images("train_images", train_images)
    y_tr = _as_labels("train_labels", train_labels, x_tr.shape[0])
    x_ho = _as_images("heldout_images", heldout_images)
    y_ho = _as_labels("heldout_labels", heldout_labels, x_ho.shape[0])
    epochs, batch_size, max_shift = int(epochs), int(batch_size), int(max_shift)
    if epochs < 1 or batch_size < 1 or x_tr.shape[0] < batch_size or max_shift < 0:
        raise ValueError(
            f"need epochs >= 1, 1 <= batch_size <= n_train, max_shift >= 0; got {epochs}, {batch_size}, {max_shift}"
        )

    model = DigitClassifier()
    key = jax.random.PRNGKey(seed)
    init_key, shuffle_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))["params"]
    steps_per_epoch = x_tr.shape[0] // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, steps_per_epoch * int(epochs))
    tx = optax.adam(schedule)
    opt_state = tx.init(params)
    x_all, y_all = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    def shift(img, k):
        # Random translation by up to max_shift pixels (zero fill): cheap augmentation.
        dy, dx = jax.random.randint(k, (2,), 0, 2 * max_shift + 1)
        padded = jnp.pad(img, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
        return jax.lax.dynamic_slice(padded, (dy, dx, 0), IMAGE_SHAPE)

    def step(carry, inp):
        p, s = carry
        idx, k = inp
        xb = x_all[idx]
        if max_shift > 0:
            xb = jax.vmap(shift)(xb, jax.random.split(k, batch_size))
        grads = jax.grad(loss_fn)(p, xb, y_all[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    @jax.jit
    def epoch(p, s, k):
        k_perm, k_aug = jax.random.split(k)
        perm = jax.random.permutation(k_perm, x_all.shape[0])[: steps_per_epoch * batch_size]
        keys = jax.random.split(k_aug, steps_per_epoch)
        (p, s), _ = jax.lax.scan(step, (p, s), (perm.reshape(steps_per_epoch, batch_size), keys))
        return p, s

    for e in range(int(epochs)):
        params, opt_state = epoch(params, opt_state, jax.random.fold_in(shuffle_key, e))

    pred = np.argmax(classifier_apply(params, x_ho), axis=1)
    accuracy = float(np.mean(pred == y_ho))
    return params, accuracy


def classifier_cache_path(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Path of the cached classifier: ``cache_dir``, else ``$W12_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/w12_jax``, else ``~/.cache/w12_jax``; file ``digit_classifier_seed{seed}.npz``."""
    if cache_dir is None:
        if os.environ.get("W12_CACHE_DIR"):
            cache_dir = os.environ["W12_CACHE_DIR"]
        elif os.environ.get("XDG_CACHE_HOME"):
            cache_dir = os.path.join(os.environ["XDG_CACHE_HOME"], "w12_jax")
        else:
            cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "w12_jax")
    return Path(cache_dir) / f"digit_classifier_seed{int(seed)}.npz"


_ACC_KEY = "__heldout_accuracy__"


def _save_classifier(path: Path, params, accuracy: float) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {k: np.asarray(v) for k, v in flat.items()}
    arrays[_ACC_KEY] = np.asarray(accuracy, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file


def _load_classifier(path: Path):
    """(params, accuracy) from ``path``, or None when it is missing, unreadable or of another architecture."""
    if not path.is_file():
        return None
    template = jax.eval_shape(
        lambda: DigitClassifier().init(jax.random.PRNGKey(0), jnp.zeros((1,) + IMAGE_SHAPE))["params"]
    )
    expected = traverse_util.flatten_dict(template, sep="/")
    try:
        with np.load(path) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if _ACC_KEY not in stored or set(stored) - {_ACC_KEY} != set(expected):
        return None
    for k, spec in expected.items():
        if stored[k].shape != spec.shape:
            return None
    flat = {k: jnp.asarray(stored[k], dtype=expected[k].dtype) for k in expected}
    return traverse_util.unflatten_dict(flat, sep="/"), float(stored[_ACC_KEY])


def load_or_train_classifier(cache_dir: str | os.PathLike | None = None, seed: int = 0):
    """(params, heldout_accuracy) of ``DigitClassifier`` trained on the mnist5k train split.

    Reads ``classifier_cache_path(cache_dir, seed)`` when it holds parameters of the current
    architecture; otherwise (missing, corrupt or mismatched file) trains with
    ``train_digit_classifier`` on ``load_dataset("mnist5k", seed=seed)`` and (re)writes the cache.
    """
    path = classifier_cache_path(cache_dir, seed)
    cached = _load_classifier(path)
    if cached is not None:
        return cached
    from w12_jax.data import load_dataset  # deferred: metrics stays importable on its own

    ds = load_dataset("mnist5k", seed=seed)
    params, accuracy = train_digit_classifier(
        ds.train, ds.train_labels, ds.heldout, ds.heldout_labels, seed=seed
    )
    _save_classifier(path, params, accuracy)
    return params, accuracy


# ----------------------------------------------------------------------------------------------
# Image quality
# ----------------------------------------------------------------------------------------------
def nearest_train_distances(samples, train_images, chunk_size: int = 512) -> np.ndarray:
    """min_j |s_i − t_j| (L2 over all pixels) for every sample i: (n,) float32, the memorisation check.

    The nearest index is found with |s|² + |t|² − 2 s·t in chunks of ``chunk_size`` samples;
    the distance to it is then recomputed as |s_i − t_j| directly, so a sample that is a
    training image gives exactly 0. samples: (n, *shape), train_images: (m, *shape).
    """
    s = jnp.asarray(samples, dtype=jnp.float32)
    t = jnp.asarray(train_images, dtype=jnp.float32)
    if s.ndim < 2 or t.ndim < 2 or s.shape[1:] != t.shape[1:] or s.shape[0] < 1 or t.shape[0] < 1:
        raise ValueError(f"samples and train_images must have shapes (n, *shape), (m, *shape), got {s.shape} and {t.shape}")
    _check_chunk(chunk_size)
    s = s.reshape(s.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    return np.asarray(_nearest(s, t, min(int(chunk_size), s.shape[0])))[: s.shape[0]]


def nearest_train_distance(samples, train_images, chunk_size: int = 512) -> float:
    """mean_i min_j |s_i − t_j|: the mean of `nearest_train_distances`."""
    d = nearest_train_distances(samples, train_images, chunk_size)
    return float(np.sum(d, dtype=np.float32) / np.float32(d.shape[0]))


@partial(jax.jit, static_argnums=2)
def _nearest(s: Array, t: Array, chunk: int) -> Array:
    chunks, mask = _pad_rows(s, chunk)

    def body(args):
        s_c, m_c = args
        j = jnp.argmin(_sq_dists(s_c, t), axis=1)
        return jnp.where(m_c, jnp.linalg.norm(s_c - t[j], axis=1), 0.0)

    return jax.lax.map(body, (chunks, mask)).reshape(-1)


PRECISION_RECALL_NEIGHBOURS = 3  # k of Kynkäänniemi et al. (2019)


def _kth_neighbour_radii(a: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of every row of a (n, f) to its k-th nearest other row: (n,)."""
    out = np.empty(a.shape[0])
    for i in range(0, a.shape[0], chunk):
        d = _np_sq_dists(a[i:i + chunk], a)
        d[np.arange(d.shape[0]), np.arange(i, i + d.shape[0])] = np.inf  # not its own neighbour
        out[i:i + chunk] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


def _np_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(n,) bool: point i lies in some ball |x − centre_j| <= radius_j."""
    out = np.empty(points.shape[0], bool)
    r2 = radii[None, :] ** 2
    for i in range(0, points.shape[0], chunk):
        out[i:i + chunk] = np.any(_np_sq_dists(points[i:i + chunk], centres) <= r2 * (1 + 1e-9), axis=1)
    return out


def precision_recall_counts(real_features, fake_features, k: int = PRECISION_RECALL_NEIGHBOURS
                            ) -> tuple[int, int]:
    """(#fake inside the real manifold, #real inside the fake manifold), k-NN manifolds (Kynkäänniemi et al.
    2019): the manifold of a set is the union of balls around its points, each of radius the distance to its
    k-th nearest neighbour in the set. real: (n, f), fake: (m, f), n, m > k."""
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must have shapes (n, f), (m, f), got {real.shape} and {fake.shape}")
    if int(k) < 1 or min(real.shape[0], fake.shape[0]) <= int(k):
        raise ValueError(f"need k >= 1 and more than k points in each set, got k={k}, {real.shape[0]} and "
                         f"{fake.shape[0]} points")
    precise = _inside(fake, real, _kth_neighbour_radii(real, int(k)))
    recalled = _inside(real, fake, _kth_neighbour_radii(fake, int(k)))
    return int(precise.sum()), int(recalled.sum())


def precision_recall(real_features, fake_features, k: int = PRECISION_RECALL_NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) = (fraction of fake points inside the real k-NN manifold, fraction of real points
    inside the fake one): `precision_recall_counts` over the set sizes. 1 and 1 for a set against itself."""
    precise, recalled = precision_recall_counts(real_features, fake_features, k)
    return precise / np.shape(fake_features)[0], recalled / np.shape(real_features)[0]


def class_fractions(predicted_classes) -> np.ndarray:
    """(NUM_CLASSES,) predicted-class histogram  p_c = #{i: ŷ_i = c}/n."""
    c = np.asarray(predicted_classes)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ValueError(f"predicted_classes must have shape (n,), got {c.shape}")
    return np.bincount(c.astype(np.int64), minlength=NUM_CLASSES) / c.shape[0]


def class_entropy(predicted_classes) -> float:
    """Entropy (nats) of the predicted-class histogram:  −Σ_c p_c log p_c,  p_c = #{i: ŷ_i = c}/n.

    log 10 ≈ 2.303 when all ten classes are equally frequent, 0 when one class takes all.
    """
    p = class_fractions(predicted_classes)
    p = p[p > 0]
    return float(np.sum(p * np.log(1.0 / p)))


def image_quality(samples, classifier_params, classifier_accuracy, reference_images, train_images, *,
                  seed: int = 0, num_resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Quality of generated digits (n, 28, 28, 1) in [0, 1] through a trained ``DigitClassifier``.

    Returns a dict; each figure ``key`` that has one comes with ``key_interval`` = [lo, hi], its 95 %
    sampling interval (`w12_jax.intervals`):
      frechet_distance        Fréchet distance of classifier features, samples vs reference_images
                              (normal bootstrap interval, samples and reference resampled)
      precision, recall       k-NN precision and recall in the same features, k = PRECISION_RECALL_NEIGHBOURS
                              (Wilson intervals, given the two manifolds)
      class_entropy           entropy (nats) of the predicted-class histogram (log 10 = full coverage; bootstrap)
      class_fractions         the predicted-class histogram p_0 … p_9, as a list (sums to 1)
      min_class_fraction      min_c p_c: the rarest digit's share
      confidence              mean_i max_c softmax(logits_i)_c
      nearest_train_distance  mean_i min_j |s_i − train_j| (memorisation; normal interval of a mean)
      classifier_accuracy     held-out accuracy of the classifier used, passed through
    """
    s = _as_images("samples", samples)
    ref = _as_images("reference_images", reference_images)
    tr = _as_images("train_images", train_images)
    if s.shape[0] <= PRECISION_RECALL_NEIGHBOURS or ref.shape[0] <= PRECISION_RECALL_NEIGHBOURS:
        raise ValueError(f"need more than {PRECISION_RECALL_NEIGHBOURS} samples and reference images, got "
                         f"{s.shape[0]} and {ref.shape[0]}")
    logits = classifier_apply(classifier_params, s)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=1))
    predicted = np.argmax(logits, axis=1)
    feat_s = classifier_apply(classifier_params, s, features=True)
    feat_ref = classifier_apply(classifier_params, ref, features=True)
    fd, fd_interval = intervals.bootstrap_interval(frechet_distance, (feat_s, feat_ref), seed=seed,
                                                   num_resamples=num_resamples)
    entropy, entropy_interval = intervals.bootstrap_interval(class_entropy, (predicted,), seed=seed,
                                                             num_resamples=num_resamples)
    precise, recalled = precision_recall_counts(feat_ref, feat_s)
    nearest, nearest_interval = intervals.mean_interval(nearest_train_distances(s, tr))
    fractions = class_fractions(predicted)
    return {
        "frechet_distance": fd, "frechet_distance_interval": list(fd_interval),
        "precision": precise / s.shape[0], "precision_interval": list(intervals.wilson_interval(precise, s.shape[0])),
        "recall": recalled / ref.shape[0], "recall_interval": list(intervals.wilson_interval(recalled, ref.shape[0])),
        "class_entropy": entropy, "class_entropy_interval": list(entropy_interval),
        "class_fractions": [round(float(p), 6) for p in fractions],
        "min_class_fraction": float(fractions.min()),
        "confidence": float(np.mean(np.max(probs, axis=1))),
        "nearest_train_distance": nearest, "nearest_train_distance_interval": list(nearest_interval),
        "classifier_accuracy": float(classifier_accuracy),
    }
