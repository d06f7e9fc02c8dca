"""The seven 2-D toy distributions (design.md §10), sampled by `TOY_GENERATORS[name](rng, n)` -> (n, 2) float64.

- moons: two interleaved half-circles with Gaussian noise (std 0.05), stretched ×2 and shifted.
- pinwheel: five spiral arms, each a radially and tangentially jittered point rotated more with its radius.
- circles: two concentric noisy circles of radius 3 and 1.5.
- 8gaussians: eight isotropic Gaussians (std 0.25) on the circle of radius 2√2.
- checkerboard: uniform on the 8 black squares of a 4×4 board covering [-4, 4]².
- swissroll: the 2-D swiss roll (t cos t, t sin t) with unit noise, divided by 5.
- spirals: two interleaved spirals of opposite sign with jitter and Gaussian noise (std 0.1).

Only numpy is imported here; `data.load_dataset` draws the points with the fixed SPLIT_SEED stream.
"""

from __future__ import annotations

import numpy as np


def _moons(rng, n):
    """Two half-circles (cos t, sin t) and (1 - cos t, 0.5 - sin t), t ~ U[0, π], noise N(0, 0.05²),
    then mapped by p -> 2p + (-1, -0.2)."""
    t = rng.uniform(0.0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    p = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2))
    return 2.0 * p + np.array([-1.0, -0.2])


def _pinwheel(rng, n, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    """`arms` spiral arms: a point (1 + ε_r, ε_t) rotated by 2πk/arms + rate·exp(1 + ε_r), times 2."""
    arm = rng.integers(0, arms, n)
    r = 1.0 + radial_std * rng.standard_normal(n)
    s = tangential_std * rng.standard_normal(n)
    angle = 2.0 * np.pi * arm / arms + rate * np.exp(r)
    c, si = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack([c * r - si * s, si * r + c * s], axis=1)


def _circles(rng, n, factor=0.5, noise=0.08):
    """Two concentric circles of radius 3 and 3·factor, noise N(0, noise²) before scaling by 3."""
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    radius = np.where(rng.random(n) < 0.5, 1.0, factor)
    p = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return 3.0 * (p + noise * rng.standard_normal((n, 2)))


EIGHT_GAUSSIANS_RADIUS = 2.0 * np.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.25


def _eight_gaussians(rng, n):
    """Mixture of 8 isotropic Gaussians, std 0.25, centred at 2√2·(cos πk/4, sin πk/4)."""
    k = rng.integers(0, 8, n)
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack(
        [np.cos(np.pi * k / 4), np.sin(np.pi * k / 4)], axis=1
    )
    return centres + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))


def _checkerboard(rng, n):
    """Uniform on the 8 black squares (side 2) of a 4×4 board covering [-4, 4]²."""
    x = rng.uniform(-2.0, 2.0, n)
    y = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x) % 2
    return 2.0 * np.stack([x, y], axis=1)


def _swissroll(rng, n, noise=1.0):
    """(t cos t, t sin t) + N(0, noise²), t = 1.5π(1 + 2u), divided by 5."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    p = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2))
    return p / 5.0


def _spirals(rng, n):
    """Two interleaved spirals ±(-r cos r, r sin r), r = 3π·√u, jittered, divided by 3, + N(0, 0.1²)."""
    r = np.sqrt(rng.random(n)) * 3.0 * np.pi
    p = np.stack([-np.cos(r) * r, np.sin(r) * r], axis=1) + 0.5 * rng.random((n, 2))
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    return sign * p / 3.0 + 0.1 * rng.standard_normal((n, 2))


# name -> generator(rng, n); the keys, in this order, are data.TOY_DATASETS.
TOY_GENERATORS = {
    "moons": _moons,
    "pinwheel": _pinwheel,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "spirals": _spirals,
}
