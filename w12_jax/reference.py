"""The reference distribution rho_0 (design.md §1): uniform on [low, high]^d (images) or N(0, s² I), optionally
constant on b×b pixel blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from w12_jax.config import Config


def sample_reference(config: Config, key, batch_shape: tuple[int, ...]) -> jax.Array:
    """x0 ~ rho_0: shape batch_shape + config.data_shape, float32. With reference_block b > 1 and images
    (H, W, C), one draw per b×b block of pixels, repeated over the block: rho_0 on a (H/b)(W/b)C-dim subspace
    (vectors ignore b)."""
    b = config.reference_block
    data_shape = tuple(config.data_shape)
    blocked = b > 1 and len(data_shape) == 3
    if blocked:
        h, w, c = data_shape
        data_shape = (h // b, w // b, c)
    shape = tuple(batch_shape) + data_shape
    if config.reference == "uniform":
        x0 = jax.random.uniform(key, shape, minval=config.reference_low, maxval=config.reference_high)
    else:
        x0 = config.reference_scale * jax.random.normal(key, shape)
    if blocked:
        x0 = jnp.repeat(jnp.repeat(x0, b, axis=-3), b, axis=-2)
    return x0
