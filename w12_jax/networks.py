"""The potential U(x, t) and the discriminator phi(x) as Flax modules (DESIGN.md §6).

Images: conv(C ch, k×k, no bias) → ReLU → 2×2 max-pool, repeated, then an MLP (the paper's pair).
Vectors: an MLP on the flattened input (with t appended for the potential).
Both return one scalar per sample: shape (B,).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from w12_jax.config import Config

ACTIVATION_FNS = {"relu": nn.relu, "tanh": nn.tanh, "softplus": nn.softplus, "silu": nn.silu, "elu": nn.elu}


class ConvFeatures(nn.Module):
    """(B, H, W, C) -> (B, F): [conv k×k (no bias) → ReLU → max-pool 2×2] per channel count, flattened."""

    channels: Sequence[int]
    kernel: int

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.Conv(c, (self.kernel, self.kernel), padding="SAME", use_bias=False)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
        return x.reshape(x.shape[0], -1)


class ScalarMLP(nn.Module):
    """(B, F) -> (B,): hidden Dense layers with `activation`, then a linear scalar head."""

    hidden: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, h):
        act = ACTIVATION_FNS[self.activation]
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        return nn.Dense(1)(h)[:, 0]


class Potential(nn.Module):
    """U(x, t): x (B, *data_shape), t (B,) -> (B,). Conv features (if any) ⊕ t → MLP."""

    hidden: Sequence[int]
    activation: str
    conv_channels: Sequence[int] = ()
    conv_kernel: int = 7

    @nn.compact
    def __call__(self, x, t):
        if self.conv_channels:
            h = ConvFeatures(self.conv_channels, self.conv_kernel)(x)
        else:
            h = x.reshape(x.shape[0], -1)
        h = jnp.concatenate([h, jnp.reshape(t, (-1, 1)).astype(h.dtype)], axis=-1)
        return ScalarMLP(self.hidden, self.activation)(h)


class Discriminator(nn.Module):
    """phi(x) before the divergence's output map: x (B, *data_shape) -> (B,)."""

    hidden: Sequence[int]
    activation: str
    conv_channels: Sequence[int] = ()
    conv_kernel: int = 7

    @nn.compact
    def __call__(self, x):
        if self.conv_channels:
            h = ConvFeatures(self.conv_channels, self.conv_kernel)(x)
        else:
            h = x.reshape(x.shape[0], -1)
        return ScalarMLP(self.hidden, self.activation)(h)


def make_potential(config: Config) -> Potential:
    """The potential network described by `config`."""
    conv = config.conv_channels if config.architecture == "conv" else ()
    return Potential(config.potential_hidden, config.potential_activation, conv, config.conv_kernel)


def make_discriminator(config: Config) -> Discriminator:
    """The discriminator network described by `config`."""
    conv = config.conv_channels if config.architecture == "conv" else ()
    return Discriminator(config.discriminator_hidden, config.discriminator_activation, conv,
                         config.conv_kernel)
