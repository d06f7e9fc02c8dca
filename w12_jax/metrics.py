"""Sample distances for W1⊕W2 proximal flows (design.md §8, §9).

Pure functions over explicit arrays (and PRNG keys where random):

- low-dimensional sample quality, ``x`` generated and ``y`` held-out data, arrays ``(n, d)``:
  ``energy_distance``, ``mmd_rbf``, ``sliced_wasserstein2``, ``sinkhorn_divergence`` (and
  ``sinkhorn_divergence_and_sd``), ``eps_scaling_sinkhorn_divergence``, ``off_manifold_mass``;
- the Fréchet distance of Gaussians (``gaussian_frechet_distance``) and of feature sets (``frechet_distance``).

Flow diagnostics on Euler paths live in `w12_jax.path_metrics`, the digit classifier in
`w12_jax.classifier`, image quality through its features in `w12_jax.image_metrics` (which shares the
chunked helpers ``check_chunk``, ``pad_rows`` and ``sq_dists`` defined here).

Pairwise statistics are evaluated in row chunks, so 10k × 10k pairs never sit in memory at once.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


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


def check_chunk(chunk_size: int) -> None:
    """Raise ValueError unless ``chunk_size`` >= 1."""
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


# ----------------------------------------------------------------------------------------------
# Chunked pairwise reductions
# ----------------------------------------------------------------------------------------------
def pad_rows(a: Array, chunk: int) -> tuple[Array, Array]:
    """Pad ``a`` (n, d) to a multiple of ``chunk`` rows; returns (chunks (c, chunk, d), mask (c, chunk))."""
    n = a.shape[0]
    num = -(-n // chunk)
    pad = num * chunk - n
    a_p = jnp.pad(a, ((0, pad), (0, 0)))
    mask = jnp.arange(num * chunk) < n
    return a_p.reshape(num, chunk, a.shape[1]), mask.reshape(num, chunk)


def sq_dists(a: Array, b: Array) -> Array:
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
    chunks, mask = pad_rows(a, chunk)
    starts = jnp.arange(chunks.shape[0]) * chunk
    cols = jnp.arange(m)

    def body(args):
        a_c, mask_c, start = args
        k = kernel(sq_dists(a_c, b))
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
    check_chunk(chunk_size)
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
    check_chunk(chunk_size)
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
        return 0.5 * sq_dists(a, b)

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
