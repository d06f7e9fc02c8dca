"""What trains iteration i (design.md §11): the OT-CFM warm-up of the first cfm_warmup iterations, else the
MFG objective on an Euler grid of K = T/dt steps, or with train_steps on K drawn per iteration.

    phase_of(config, i)          # WARMUP or K
    phase_config(config, phase)  # the config whose compiled step trains that phase
"""

from __future__ import annotations

import dataclasses

import numpy as np

from w12_jax.config import Config

def grid_of(config: Config, iteration: int) -> int:
    """K, the Euler steps of the training flow at `iteration`: T/dt, or with train_steps one of them drawn
    uniformly by np.random.default_rng([seed, iteration, 1]) (a pure function of (seed, iteration))."""
    if not config.train_steps:
        return config.num_steps
    return int(config.train_steps[np.random.default_rng([config.seed, iteration, 1]).integers(
        len(config.train_steps))])


def on_grid(config: Config, num_steps: int) -> Config:
    """config with the training flow on K = num_steps Euler steps (dt = T/K, train_steps cleared); dt stays
    the config's own when it already gives K steps, so a run without train_steps trains on exactly its config."""
    dt = config.dt if num_steps == config.num_steps else config.T / num_steps
    return dataclasses.replace(config, dt=dt, train_steps=())


WARMUP = "otcfm-warmup"  # the phase of the first cfm_warmup iterations


def phase_of(config: Config, iteration: int) -> int | str:
    """What trains `iteration`: WARMUP (OT-CFM, the first cfm_warmup iterations), else K = grid_of(...)."""
    return WARMUP if iteration < config.cfm_warmup else grid_of(config, iteration)


def phase_config(config: Config, phase: int | str) -> Config:
    """The config whose `outer_iteration` trains `phase`: OT-CFM of U with Adam(0.9, 0.999) at cfm_warmup_lr
    for WARMUP (same parameter and optimizer-state trees, so the MFG phase continues from it), else
    on_grid(config, phase)."""
    if phase == WARMUP:
        return dataclasses.replace(config, objective="otcfm", lr_potential=config.cfm_warmup_lr, beta1=0.9,
                                   beta2=0.999, train_steps=(), cfm_warmup=0)
    return on_grid(config, phase)
