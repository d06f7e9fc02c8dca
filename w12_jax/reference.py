"""The reference distribution rho_0 (design.md §1): uniform on [low, high]^d (images) or N(0, s² I), optionally
constant on b×b pixel blocks, optionally an equal mixture of shifted copies."""

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
    if config.reference_components > 1:
        key, key_component = jax.random.split(key)
    if config.reference == "uniform":
        x0 = jax.random.uniform(key, shape, minval=config.reference_low, maxval=config.reference_high)
    else:
        x0 = config.reference_scale * jax.random.normal(key, shape)
    if config.reference_components > 1:
        m = jax.random.randint(key_component, tuple(batch_shape), 0, config.reference_components)
        x0 = x0 + config.reference_separation * component_signs(config.reference_components, data_shape)[m]
    if blocked:
        x0 = jnp.repeat(jnp.repeat(x0, b, axis=-3), b, axis=-2)
    return x0


COMPONENT_KEY = 0xC0C0  # the fixed PRNG key of the mixture's sign patterns: one rho_0 for every run and seed


def component_signs(components: int, shape: tuple[int, ...]) -> jax.Array:
    """s (M, *shape) of ±1 entries, drawn once from PRNGKey(COMPONENT_KEY): the shifts of the mixture's copies.
    Along u = (s_m − s_n)/|s_m − s_n| two copies lie separation·|s_m − s_n| ≈ 2·separation·√(size/2) apart,
    while a box of side a projects to a spread of sd a/√12: at size 196, a = 0.5, separation 0.1, 14 sd."""
    return jnp.where(jax.random.bernoulli(jax.random.PRNGKey(COMPONENT_KEY), 0.5, (components,) + tuple(shape)),
                     1.0, -1.0).astype(jnp.float32)
