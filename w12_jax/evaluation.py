"""Evaluation of a trained flow (design.md §9): sample quality, flow straightness, kinetic energy, NFE.

    report = evaluate(config, state.potential_ema, dataset)

Samples are drawn with the training integrator (Euler, step config.dt) from a fixed x0, and the Euler path
is kept for the flow diagnostics of `w12_jax.path_metrics`.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from w12_jax import classifier, image_metrics, intervals, metrics, path_metrics
from w12_jax.config import Config
from w12_jax.data import Dataset
from w12_jax.networks import make_flow_network
from w12_jax.sample import generate, sample
from w12_jax.intervals import BOOTSTRAP_RESAMPLES

DIGIT_DATASETS = ("mnist5k", "mnist")  # data the cached digit classifier was trained for
SINKHORN_SAMPLES = 2000  # points per side of the Sinkhorn divergence (eps = 0.0025 costs ~n² per iteration)
_ONE_STEP_FIGURES = ("energy_distance", "off_manifold_mass", "frechet_distance", "precision", "recall",
                     "class_entropy", "nearest_train_distance")
ONE_STEP_KEYS = tuple(k for f in _ONE_STEP_FIGURES for k in (f, f + "_interval")) + (
    "confidence", "min_class_fraction")  # reported again, prefixed one_step_, for one Euler step from x0


ADAPTIVE_PATH_POINTS = 65  # equally spaced times at which an adaptive solve's path is kept for the diagnostics


def path_points(config: Config, num_steps: Optional[int] = None, rtol: Optional[float] = None) -> int:
    """Points of the path that `evaluate` keeps: every step of a fixed-step solve (num_steps, default
    T/dt, + 1), or ADAPTIVE_PATH_POINTS when adaptive (rtol given)."""
    return ADAPTIVE_PATH_POINTS if rtol is not None else (num_steps or config.num_steps) + 1


def evaluate(config: Config, params, dataset: Dataset, *, num_samples: Optional[int] = None, seed: int = 0,
             classifier_cache: Optional[str] = None, solver: str = "euler", num_steps: Optional[int] = None,
             rtol: Optional[float] = None) -> dict:
    """A flat dict of floats describing `num_samples` (default config.eval_samples) generated samples.

    Sampler: `solver` (a `sample.get_solver` name) with `num_steps` fixed steps, or adaptive with
    rtol = atol = `rtol`; default Euler with the training step config.dt. The path diagnostics use the
    solver's steps (fixed) or ADAPTIVE_PATH_POINTS equally spaced times (adaptive).

    Always: nfe, kinetic_energy (Σ_k h·mean ½|v_k|² of the Euler path), straight_line_bound,
    straightness_ratio (1 iff straight), straightness_deviation (0 iff straight, constant speed).
    Vectors: energy_distance, mmd, sliced_w2 to held-out data (and energy_distance_reference, the value
    for x0 itself, for scale); sinkhorn_divergence (cost ½|x − y|², eps = 0.0025, the authors' measure: on
    the first two coordinates of embedded data); off_manifold_mass when the data are embedded (embed_dim > 2).
    Digits (mnist5k, mnist): frechet_distance, precision, recall, class_entropy, class_fractions,
    min_class_fraction, confidence, nearest_train_distance and classifier_accuracy through the cached digit
    classifier (trained on first use; `image_metrics.image_quality`).
    Each quality figure `key` comes with `key_interval`, its 95 % sampling interval, and `floor_key`: the same
    figure for as many training samples as generated ones against the same held-out samples, what a flow
    that drew the data themselves would score (`quality_floor`; its nearest_train_distance is the held-out
    samples' own).
    One step: one_step_deviation (mean|x_1 − x_T| over the mean distance between independent samples, x_1
    = one Euler step of h = T from the same x0) and one_step_<key> for the keys of ONE_STEP_KEYS present.
    """

    n = int(num_samples or config.eval_samples)
    steps = None if rtol is not None else num_steps or config.num_steps
    x0, res = generate(config, params, n, seed=seed, solver=solver, num_steps=steps, rtol=rtol,
                       save_points=path_points(config, num_steps, rtol))
    x_T, path = np.asarray(res.x_T), np.asarray(res.path)
    out = {
        "num_samples": n,
        "solver": solver.lower(),
        "dt": config.T / steps if steps else None,
        "rtol": rtol,
        "nfe": int(res.nfe),
        "kinetic_energy": float(path_metrics.path_kinetic_energy(path, config.T)),
        "straight_line_bound": float(path_metrics.straight_line_bound(x0, x_T, config.T)),
        "straightness_ratio": float(path_metrics.straightness_ratio(path)),
        "straightness_deviation": float(path_metrics.straightness_deviation(path, config.T)),
        "nonfinite_samples": int(np.sum(~np.all(np.isfinite(x_T.reshape(n, -1)), axis=1))),
    }
    held = dataset.heldout[:n]
    out.update(_quality(config, x0, x_T, dataset, held, seed, classifier_cache))
    out.update({f"floor_{k}": v for k, v in quality_floor(config, dataset, n, seed, classifier_cache).items()})
    # one Euler step (h = T) from the same x0: what a straight flow samples in one evaluation of ∇U
    x_1 = np.asarray(generate(config, params, n, seed=seed, num_steps=1)[1].x_T)
    out["one_step_deviation"] = float(path_metrics.discretization_deviation(x_1.reshape(n, -1), x_T.reshape(n, -1)))
    one_step = _quality(config, None, x_1, dataset, held, seed, classifier_cache, sinkhorn=False)
    out.update({f"one_step_{k}": one_step[k] for k in ONE_STEP_KEYS if k in one_step})
    return out


def generator_quality(config: Config, samples: np.ndarray, dataset: Dataset, *, seed: int = 0,
                      classifier_cache: Optional[str] = None) -> dict:
    """`evaluate`'s quality figures (no path diagnostics, no Sinkhorn divergence) of samples (n, *shape) drawn
    without the flow, e.g. a distilled G(x0), against the first n held-out samples."""
    return _quality(config, None, samples, dataset, dataset.heldout[:len(samples)], seed, classifier_cache,
                    sinkhorn=False)


def _quality(config: Config, x0, x_T, dataset: Dataset, held, seed: int, classifier_cache,
             sinkhorn: bool = True) -> dict:
    """The sample-quality part of `evaluate` for samples x_T (n, *shape) drawn from x0 (None: no reference
    distance)."""
    if x_T.ndim == 2:
        out = vector_quality(x_T, held, embedded=config.embed_dim > 2, seed=seed, sinkhorn=sinkhorn)
        if x0 is not None:
            out["energy_distance_reference"] = float(metrics.energy_distance(x0, held))
        return out
    if config.dataset in DIGIT_DATASETS and tuple(config.data_shape) == classifier.IMAGE_SHAPE:
        params_c, accuracy = classifier.load_or_train_classifier(classifier_cache)
        return image_metrics.image_quality(np.clip(x_T, 0.0, 1.0), params_c, accuracy, held, dataset.train, seed=seed)
    nearest, interval = intervals.mean_interval(image_metrics.nearest_train_distances(x_T, dataset.train))
    return {"nearest_train_distance": nearest, "nearest_train_distance_interval": list(interval)}


FLOOR_KEYS = ("energy_distance", "mmd", "sliced_w2", "sinkhorn_divergence", "off_manifold_mass",
              "frechet_distance", "precision", "recall", "class_entropy", "min_class_fraction")


def floor_samples(dataset: Dataset, n: int) -> np.ndarray:
    """n training samples (all when there are fewer), the same rows for every call: the stand-in for a flow
    that draws the data distribution itself."""
    rows = np.random.default_rng(0).permutation(len(dataset.train))[:n]
    return dataset.train[np.sort(rows)]


def quality_floor(config: Config, dataset: Dataset, n: int, seed: int = 0, classifier_cache=None) -> dict:
    """The figures of `_quality` (with intervals) for `floor_samples(dataset, n)` against the same held-out
    samples as the flow's: what exact samples of the data score at this sample size. nearest_train_distance
    is the held-out samples' own distance to the training set (a copy of the training data scores 0)."""
    held = dataset.heldout[:n]
    quality = _quality(config, None, floor_samples(dataset, n), dataset, held, seed, classifier_cache)
    out = {k: v for k, v in quality.items() if k.removesuffix("_interval") in FLOOR_KEYS}
    nearest, interval = intervals.mean_interval(image_metrics.nearest_train_distances(held, dataset.train))
    out.update({"nearest_train_distance": nearest, "nearest_train_distance_interval": list(interval)})
    return out


def vector_quality(x, held, *, embedded: bool, seed: int = 0, num_resamples: int = BOOTSTRAP_RESAMPLES,
                   sinkhorn: bool = True) -> dict:
    """Distances of samples x (n, d) to held-out points (m, d), each with its 95 % bootstrap interval:
    energy_distance, mmd, sliced_w2 (all coordinates), sinkhorn_divergence (the authors' measure: the first
    two coordinates when `embedded`, at most SINKHORN_SAMPLES points a side; its interval from the first-order
    sd of `metrics.sinkhorn_divergence_and_sd`, one solve instead of a bootstrap's hundreds) and, when
    `embedded`, off_manifold_mass (mean norm of the padded coordinates, interval of a mean).
    sinkhorn=False leaves the Sinkhorn divergence out (one solve takes ~40 s at 2000 points on 2 cores)."""
    key = jax.random.PRNGKey(seed)
    figures = {
        "energy_distance": metrics.energy_distance,
        "mmd": metrics.mmd_rbf,
        "sliced_w2": lambda a, b: metrics.sliced_wasserstein2(a, b, key),
    }
    out = {}
    for name, statistic in figures.items():
        value, interval = intervals.bootstrap_interval(lambda a, b: float(statistic(a, b)), (x, held), seed=seed,
                                                       num_resamples=num_resamples)
        out.update({name: value, f"{name}_interval": list(interval)})
    k, m = (2 if embedded else x.shape[1]), SINKHORN_SAMPLES
    if sinkhorn:
        value, sd = metrics.sinkhorn_divergence_and_sd(x[:m, :k], held[:m, :k])
        half = intervals.normal_quantile() * float(sd)
        out.update({"sinkhorn_divergence": float(value),
                    "sinkhorn_divergence_interval": [float(value) - half, float(value) + half]})
    if embedded:
        value, interval = intervals.mean_interval(np.linalg.norm(np.asarray(x)[:, 2:], axis=1))
        out.update({"off_manifold_mass": value, "off_manifold_mass_interval": list(interval)})
    return out


# ------------------------------------------------------------------------ a flow across samplers
Sampler = tuple  # (label, keyword arguments of `sample.sample`: solver, num_steps, rtol, atol, ...)


DOPRI5 = ("dopri5 1e-4", {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4})  # the adaptive solve of the tables


def few_step_samplers() -> list[Sampler]:
    """Euler at 1, 2, 3, 5 steps, Heun at 2 and 4 NFE, Dopri5 rtol = atol = 1e-4."""
    out = [(f"euler {k}", {"solver": "euler", "num_steps": k}) for k in (1, 2, 3, 5)]
    out += [(f"heun {2 * k}", {"solver": "heun", "num_steps": k}) for k in (1, 2)]
    return out + [DOPRI5]


def measure_samplers(config: Config, params, x0, samplers: list[Sampler], reference: Sampler, quality,
                     path_points: int = ADAPTIVE_PATH_POINTS) -> dict:
    """A trained flow across samplers, from the same x0, against a reference solve.

    Returns {"flow": kinetic_energy, straight_line_bound, ke_over_bound and straightness_ratio on the
    reference path (kept at `path_points` times), "samplers": {label: {"nfe", "deviation", **quality(x_T)}}}
    for every sampler and the reference (in `samplers`' order; the reference last when it is not among them).
    deviation = mean|x_T − x_T^ref| / mean distance between independent samples (`discretization_deviation`).
    """
    net = make_flow_network(config)
    ref = sample(net, params, x0, T=config.T, lam=config.lam, save_points=path_points, **reference[1])
    path = np.asarray(ref.path)
    x_ref = path[-1]
    ke = float(path_metrics.path_kinetic_energy(path, config.T))
    bound = float(path_metrics.straight_line_bound(path[0], path[-1], config.T))
    flow = {"kinetic_energy": ke, "straight_line_bound": bound, "ke_over_bound": ke / bound,
            "straightness_ratio": float(path_metrics.straightness_ratio(path))}
    labels = [label for label, _ in samplers]
    out = {}
    for label, kwargs in samplers + ([] if reference[0] in labels else [reference]):
        if label == reference[0]:
            x_T, nfe = x_ref, int(ref.nfe)
        else:
            res = sample(net, params, x0, T=config.T, lam=config.lam, **kwargs)
            x_T, nfe = np.asarray(res.x_T), int(res.nfe)
        dev = float(path_metrics.discretization_deviation(x_T.reshape(len(x_T), -1), x_ref.reshape(len(x_ref), -1)))
        out[label] = {"nfe": nfe, "deviation": dev, **quality(x_T)}
    return {"flow": flow, "samplers": out}


def sampler_samples(config: Config, params, x0, samplers: list[Sampler]) -> list[np.ndarray]:
    """x_T of x0 by every sampler, in order (the rows of a figure of samples per sampler)."""
    net = make_flow_network(config)
    return [np.asarray(sample(net, params, x0, T=config.T, lam=config.lam, **kw).x_T) for _, kw in samplers]
