"""Named configurations: the paper's runs (design.md §6) as `Config` values.

    get_preset("mnist-w1")           # MNIST (mnist5k), W1 proximal only, paper hyper-parameters
    get_preset("pinwheel12d-w1w2")   # Pinwheel zero-padded into R^12, both proximals

Every preset is `dataclasses.replace` of `Config` plus `with_case`; the four cases of the paper are four
values of the same base, never separate code.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from w12_jax.config import Config, ConfigError, with_case

CASE_NAMES = {"w1w2": "W1⊕W2", "w1": "W1 only", "w2": "W2 only", "none": "unregularized"}  # listing order
LOWDIM_DATASETS = ("moons", "pinwheel", "circles", "8gaussians", "checkerboard", "swissroll", "spirals")
LOWDIM_DIMS = (2, 7, 12)


class Preset(NamedTuple):
    config: Config
    description: str


# design.md §6, MNIST column: the defaults of Config are the paper's MNIST W1⊕W2 run.
MNIST = Config(dataset="mnist5k", iterations=5000, log_every=10, checkpoint_every=500, sample_every=500)
# The paper's unregularized and W2-only runs reach NaN before iteration 200.
MNIST_DIVERGING = dataclasses.replace(MNIST, iterations=200, checkpoint_every=50, sample_every=50)

# ------------------------------------------------------------------------------------------------
# THE MAIN JOB (`w12 train` with no preset): W1⊕W2 on mnist5k with the paper's networks (conv 8ch 7×7 ×2 +
# MLP 512³ for U, 256³ for phi), T, h, lam, L, KL divergence and Adam betas, resized for ~10 minutes on a
# 2-core CPU: B = 100, n_D = 2, learning rates 1e-3, gp_weight 5 (|∇phi| stays ≈ L), plus the
# velocity-consistency penalty (design.md §11) at the CPU time of 2400 iterations without it (MAIN_RELU, the
# main job until 2026-12-02), and silu in U's MLP: a smooth U, so that an Euler step is not a translation of
# x0 (design.md §13), at the same CPU time (1900 iterations); samples from an EMA of U's parameters (decay
# 0.99, ~100 iterations), since the last iterate swings from one checkpoint to the next; x0 drawn on 2×2 pixel
# blocks (reference_block 2: no per-pixel speckle for one step to carry, design.md §13). Why each value:
# experiments/results/main_job/README.md.
MAIN_PLAIN = dataclasses.replace(MNIST, batch_size=100, n_critic=2, lr_potential=1e-3, lr_discriminator=1e-3,
                                 gp_weight=5.0, iterations=2400, checkpoint_every=600, sample_every=600)
MAIN_RELU = dataclasses.replace(MAIN_PLAIN, velocity_weight=50.0, iterations=2180)
MAIN_UNIFORM = dataclasses.replace(MAIN_RELU, potential_activation="silu", ema_decay=0.99, iterations=1900)
MAIN = dataclasses.replace(MAIN_UNIFORM, reference_block=2)
MAIN_DESCRIPTION = ("main job: W1⊕W2 on mnist5k, the paper's conv networks with silu in U's MLP, B = 100, "
                    "n_D = 2, lr 1e-3, gp_weight 5, velocity_weight 50, samples from an EMA (0.99) of U, "
                    "x0 on 2×2 blocks, 1900 iterations (~10 CPU minutes)")
# ------------------------------------------------------------------------------------------------
# Flow matching of the same conv network (design.md §11), the yardstick of experiments.compare: one
# regression step per iteration on B = 100 pairs, Adam(0.9, 0.999) at lr 5e-4 as for any regression
# (the learning-rate screen: experiments/results/main_job/README.md).
CFM_OPTIMIZER = dict(n_critic=1, beta1=0.9, beta2=0.999)
MNIST_CFM = dataclasses.replace(MAIN_PLAIN, objective="icfm", lr_potential=5e-4, **CFM_OPTIMIZER)
FLOW_MATCHING = {"cfm": "icfm", "otcfm": "otcfm"}  # preset suffix -> objective


def lowdim_config(dataset: str, dim: int) -> Config:
    """design.md §6 low-dim column: `dataset` in R^2, or zero-padded into R^dim (dim 7 or 12)."""
    embedded = dim > 2
    return Config(
        dataset=dataset, data_shape=(dim,), embed_dim=dim if embedded else 0, num_samples=100_000,
        reference="gaussian", reference_scale=1.0, architecture="mlp",
        T=1.0, dt=0.2, lam=0.1 if embedded else 0.5, L=1.0, gp_weight=0.01 if embedded else 0.1,
        n_critic=5, batch_size=200, lr_discriminator=2e-5, lr_potential=1e-4, iterations=25_000,
        potential_hidden=(64,) * 5, potential_activation="tanh",
        discriminator_hidden=(64,) * 3, discriminator_activation="relu",
        log_every=100, checkpoint_every=1000, sample_every=5000, eval_samples=5000,
    )


def _build() -> dict[str, Preset]:
    presets = {"mnist5k": Preset(MAIN, MAIN_DESCRIPTION)}
    for case in CASE_NAMES:
        base = MNIST if case in ("w1w2", "w1") else MNIST_DIVERGING
        cfg = with_case(base, case)
        presets[f"mnist-{case}"] = Preset(
            cfg, f"{CASE_NAMES[case]} on mnist5k, paper settings, {cfg.iterations} iterations")
    for suffix, objective in FLOW_MATCHING.items():
        cfg = dataclasses.replace(MNIST_CFM, objective=objective)
        presets[f"mnist5k-{suffix}"] = Preset(
            cfg, f"{objective.upper()} (flow matching) of the main job's conv potential on mnist5k, B = 100, "
                 f"lr {cfg.lr_potential:g}, {cfg.iterations} iterations")
    for dataset in LOWDIM_DATASETS:
        for dim in LOWDIM_DIMS:
            stem = dataset if dim == 2 else f"{dataset}{dim}d"
            where = "2-D" if dim == 2 else f"2-D embedded in R^{dim}"
            for case in CASE_NAMES:
                cfg = with_case(lowdim_config(dataset, dim), case)
                presets[f"{stem}-{case}"] = Preset(
                    cfg, f"{CASE_NAMES[case]} on {dataset} ({where}), paper low-dim settings, "
                         f"{cfg.iterations} iterations")
            for suffix, objective in FLOW_MATCHING.items():
                cfg = dataclasses.replace(lowdim_config(dataset, dim), objective=objective, **CFM_OPTIMIZER)
                presets[f"{stem}-{suffix}"] = Preset(
                    cfg, f"{objective.upper()} (flow matching) on {dataset} ({where}), the W1⊕W2 preset's "
                         f"potential, {cfg.iterations} iterations")
    return presets


PRESETS: dict[str, Preset] = _build()
DEFAULT_PRESET = "mnist5k"


def get_preset(name: str) -> Config:
    """The config of preset `name`; ConfigError (a ValueError) listing the names when unknown."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name].config


def describe(name: str) -> str:
    """One-line description of preset `name`."""
    get_preset(name)
    return PRESETS[name].description
