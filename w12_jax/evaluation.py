"""Evaluation of a trained flow (DESIGN.md §9): sample quality, flow straightness, kinetic energy, NFE.

    report = evaluate(config, state.potential_ema, dataset)

Samples are drawn with the training integrator (Euler, step config.dt) from a fixed x0, and the Euler path
is kept for the flow diagnostics of `w12_jax.metrics`.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from w12_jax import metrics
from w12_jax.config import Config
from w12_jax.data import Dataset

DIGIT_DATASETS = ("mnist5k", "mnist")  # data the cached digit classifier was trained for
SINKHORN_SAMPLES = 2000  # points per side of the Sinkhorn divergence (eps = 0.0025 costs ~n² per iteration)
ONE_STEP_KEYS = ("energy_distance", "off_manifold_mass", "frechet_distance", "class_entropy", "confidence",
                 "nearest_train_distance")  # reported again, prefixed one_step_, for one Euler step from x0


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
    Digits (mnist5k, mnist): frechet_distance, class_entropy, confidence, nearest_train_distance and
    classifier_accuracy through the cached digit classifier (trained on first use).
    One step: one_step_deviation (mean|x_1 − x_T| over the mean distance between independent samples, x_1
    = one Euler step of h = T from the same x0) and one_step_<key> for the keys of ONE_STEP_KEYS present.
    """
    from w12_jax.loop import generate  # the loop owns the sampling defaults

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
        "kinetic_energy": float(metrics.path_kinetic_energy(path, config.T)),
        "straight_line_bound": float(metrics.straight_line_bound(x0, x_T, config.T)),
        "straightness_ratio": float(metrics.straightness_ratio(path)),
        "straightness_deviation": float(metrics.straightness_deviation(path, config.T)),
        "nonfinite_samples": int(np.sum(~np.all(np.isfinite(x_T.reshape(n, -1)), axis=1))),
    }
    held = dataset.heldout[:n]
    out.update(_quality(config, x0, x_T, dataset, held, seed, classifier_cache))
    # one Euler step (h = T) from the same x0: what a straight flow samples in one evaluation of ∇U
    x_1 = np.asarray(generate(config, params, n, seed=seed, num_steps=1)[1].x_T)
    out["one_step_deviation"] = float(metrics.discretization_deviation(x_1.reshape(n, -1), x_T.reshape(n, -1)))
    one_step = _quality(config, x0, x_1, dataset, held, seed, classifier_cache)
    out.update({f"one_step_{k}": one_step[k] for k in ONE_STEP_KEYS if k in one_step})
    return out


def _quality(config: Config, x0, x_T, dataset: Dataset, held, seed: int, classifier_cache) -> dict:
    """The sample-quality part of `evaluate` for samples x_T (n, *shape) drawn from x0."""
    out = {}
    if x_T.ndim == 2:
        key = jax.random.PRNGKey(seed)
        out["energy_distance"] = float(metrics.energy_distance(x_T, held))
        out["energy_distance_reference"] = float(metrics.energy_distance(x0, held))
        out["mmd"] = float(metrics.mmd_rbf(x_T, held))
        out["sliced_w2"] = float(metrics.sliced_wasserstein2(x_T, held, key))
        # the authors' measure: on the first two coordinates of embedded data, at most SINKHORN_SAMPLES each
        k, m = (2 if config.embed_dim > 2 else x_T.shape[1]), SINKHORN_SAMPLES
        out["sinkhorn_divergence"] = float(metrics.sinkhorn_divergence(x_T[:m, :k], held[:m, :k]))
        if config.embed_dim > 2:
            out["off_manifold_mass"] = float(metrics.off_manifold_mass(x_T, 2))
    elif config.dataset in DIGIT_DATASETS and tuple(config.data_shape) == metrics.IMAGE_SHAPE:
        params_c, accuracy = metrics.load_or_train_classifier(classifier_cache)
        out.update(metrics.image_quality(np.clip(x_T, 0.0, 1.0), params_c, accuracy, held, dataset.train))
    else:
        out["nearest_train_distance"] = metrics.nearest_train_distance(x_T, dataset.train)
    return out
