"""The reference distribution rho_0 (design.md §1): uniform on [low, high]^d (images) or N(0, s² I)."""

from __future__ import annotations

import jax

from w12_jax.config import Config


def sample_reference(config: Config, key, batch_shape: tuple[int, ...]) -> jax.Array:
    """x0 ~ rho_0: shape batch_shape + config.data_shape, float32."""
    shape = tuple(batch_shape) + tuple(config.data_shape)
    if config.reference == "uniform":
        return jax.random.uniform(key, shape, minval=config.reference_low, maxval=config.reference_high)
    return config.reference_scale * jax.random.normal(key, shape)
