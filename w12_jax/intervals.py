"""Sampling intervals of the quality figures, and the summary of several training seeds.

    estimate, (lo, hi) = bootstrap_interval(metrics.frechet_distance, (gen_features, ref_features))
    lo, hi = wilson_interval(successes=870, n=1000)            # a proportion: precision, recall
    mean, (lo, hi) = mean_interval(per_sample_distances)       # a mean of independent values
    summary = seed_summary([132.3, 148.1, 140.0])               # mean, sd and t-interval over seeds

Every interval is two-sided at `level` (default 95 %) and covers the sampling error of a figure computed
from finitely many samples; `seed_summary` covers the spread between training runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 200


def normal_quantile(level: float = LEVEL) -> float:
    """z with P(|N(0, 1)| <= z) = level: 1.95996 at 95 %."""
    return _z(level)


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2.0))


def bootstrap_interval(statistic: Callable[..., float], arrays: Sequence[np.ndarray], *, seed: int = 0,
                       num_resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL
                       ) -> tuple[float, tuple[float, float]]:
    """(θ̂, θ̂ ∓ z·sd*): θ̂ = statistic(*arrays) and the normal bootstrap interval around it.

    sd* is the standard deviation of statistic(*resampled) over `num_resamples` resamples, each array's rows
    drawn with replacement independently of the others (generated samples and reference digits are two
    independent samples). The interval is centred on θ̂ rather than taken from the resamples' percentiles,
    because a resample holds repeated rows and biases distances such as the Fréchet distance upwards; their
    spread is still the sampling spread. arrays: each (n_i, ...) with n_i >= 2.
    """
    arrays = [np.asarray(a) for a in arrays]
    if not arrays or any(a.ndim < 1 or a.shape[0] < 2 for a in arrays):
        raise ValueError(f"bootstrap needs arrays of at least 2 rows, got shapes {[a.shape for a in arrays]}")
    if int(num_resamples) < 2:
        raise ValueError(f"num_resamples must be >= 2, got {num_resamples}")
    z = _z(level)
    estimate = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    replicates = np.array([float(statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays)))
                           for _ in range(int(num_resamples))])
    sd = float(np.std(replicates, ddof=1))
    return estimate, (estimate - z * sd, estimate + z * sd)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion p = successes / n:

        (p + z²/2n ∓ z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n),

    inside [0, 1] and not degenerate at p = 0 or 1 (Wilson, 1927)."""
    if int(n) < 1 or not 0 <= int(successes) <= int(n):
        raise ValueError(f"need 0 <= successes <= n, n >= 1; got {successes}, {n}")
    z, n = _z(level), int(n)
    p = int(successes) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(centre - half, 0.0)  # exact ends: no round-off at p = 0 or 1
    hi = 1.0 if successes == n else min(centre + half, 1.0)
    return float(lo), float(hi)


def mean_interval(values, level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """(mean, mean ∓ z·sd/√n) of n >= 2 independent values (central limit theorem)."""
    v = np.asarray(values, np.float64).ravel()
    if v.shape[0] < 2:
        raise ValueError(f"mean_interval needs at least 2 values, got {v.shape[0]}")
    mean, half = float(v.mean()), _z(level) * float(v.std(ddof=1)) / np.sqrt(v.shape[0])
    return mean, (mean - half, mean + half)


def seed_summary(values, level: float = LEVEL) -> dict:
    """{mean, sd, n, interval}: a figure over n training seeds; sd with ddof = 1 and the Student-t interval
    of the mean, mean ∓ t_{n−1}·sd/√n (None for a single seed)."""
    v = np.asarray(values, np.float64).ravel()
    if v.shape[0] < 1:
        raise ValueError("seed_summary needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = float(v.mean())
    if v.shape[0] == 1:
        return {"mean": mean, "sd": None, "n": 1, "interval": None}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2.0, v.shape[0] - 1)) * sd / np.sqrt(v.shape[0])
    return {"mean": mean, "sd": sd, "n": int(v.shape[0]), "interval": [mean - half, mean + half]}


def separated(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    """True when the intervals a = (lo, hi) and b do not overlap (False when either is missing)."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]
