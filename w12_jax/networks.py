"""The potential U(x, t) and the discriminator phi(x) as Flax modules (design.md §6).

Images: conv(C ch, k×k, no bias) → ReLU → 2×2 max-pool, repeated, then an MLP (the paper's pair).
Vectors: an MLP on the flattened input (with t appended for the potential).
Both return one scalar per sample: shape (B,). `VelocityField` (flow matching's direct parameterisation)
returns a vector per sample.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w12_jax.config import Config

ACTIVATION_FNS = {"relu": nn.relu, "tanh": nn.tanh, "softplus": nn.softplus, "silu": nn.silu, "elu": nn.elu}


ATOM_MARGIN = 0.01  # s(t) = (1 + margin)T − t > 0 at t = T, where adaptive solvers evaluate the field


def block_kernel_selector(kernel: int) -> np.ndarray:
    """0/1 tensor S (kb, kb, 2, 2, 2, 2, k, k) mapping a k×k kernel to its 2×2 space-to-depth form.

    With X[P, Q, (r', s')] = x[2P + r', 2Q + s'], the SAME k×k conv y[2P + r, 2Q + s] becomes a SAME
    kb×kb conv of X whose kernel entry [a, b, (r', s'), (r, s)] is w[di, dj] with di = 2(a − m') + r' − r,
    m' = ⌈m/2⌉, m = ⌊k/2⌋, kb = 2m' + 1 (zero where |di| or |dj| > m).
    """
    m = kernel // 2
    half = (m + 1) // 2
    kb = 2 * half + 1
    sel = np.zeros((kb, kb, 2, 2, 2, 2, kernel, kernel), np.float32)
    for a, b, rp, sp, r, s in np.ndindex(kb, kb, 2, 2, 2, 2):
        di, dj = 2 * (a - half) + rp - r, 2 * (b - half) + sp - s
        if abs(di) <= m and abs(dj) <= m:
            sel[a, b, rp, sp, r, s, di + m, dj + m] = 1.0
    return sel


def conv_pool_s2d(x, w, activation: str = "relu", pool: str = "max"):
    """pool 2×2(activation(conv_SAME(x, w))) via space-to-depth, pool "max" or "avg": x (B, H, W, C) with H, W
    even, w (k, k, C, F). The paper's layer is relu and max.

    The 2×2 pool windows become channel groups, so the conv runs on (H/2, W/2) with 4C inputs and 4F
    outputs (a kb×kb kernel, kb = 2⌈⌊k/2⌋/2⌉ + 1) and the pool is a max (mean) over the 4 groups. The same
    function as `nn.Conv` + `nn.max_pool` (`nn.avg_pool`), and on XLA:CPU 4x faster for C = 1.
    """
    k, _, c, f = w.shape
    sel = block_kernel_selector(k)
    kb = sel.shape[0]
    wb = jnp.einsum("abpqrsij,ijco->abpqcrso", sel, w).reshape(kb, kb, 4 * c, 4 * f)
    b, h, wd, _ = x.shape
    xb = x.reshape(b, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, wd // 2, 4 * c)
    pad = (kb - 1) // 2
    y = jax.lax.conv_general_dilated(xb, wb, (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, h // 2, wd // 2, 4, f)
    if activation == "relu" and pool == "max":  # relu and max commute: one relu on the pooled values
        return nn.relu(jnp.max(y, axis=3))
    y = ACTIVATION_FNS[activation](y)
    return jnp.max(y, axis=3) if pool == "max" else jnp.mean(y, axis=3)


class ConvPool(nn.Module):
    """conv k×k (F channels, no bias, SAME) → activation → 2×2 pool: (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, F);
    the paper's layer is ReLU and max-pool, a smooth activation makes it smooth between the max's switches.

    Parameter `kernel` (k, k, C, F) as in `nn.Conv`. With `space_to_depth`, few input channels (C ≤ 3), odd
    k and even H, W it computes the identical function through `conv_pool_s2d`.
    """

    features: int
    kernel: int
    space_to_depth: bool = True
    activation: str = "relu"
    pool: str = "max"  # or "avg"

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.lecun_normal(),
                       (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
        w = w.astype(x.dtype)
        _, h, wd, c = x.shape
        if self.space_to_depth and c <= 3 and self.kernel % 2 == 1 and h % 2 == 0 and wd % 2 == 0:
            return conv_pool_s2d(x, w, self.activation, self.pool)
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool
        return pool(ACTIVATION_FNS[self.activation](y), (2, 2), strides=(2, 2), padding="SAME")


class ConvFeatures(nn.Module):
    """(B, H, W, C) -> (B, F): [`ConvPool`: conv k×k (no bias) → activation (ReLU) → 2×2 pool (max)] per
    channel count, flattened."""

    channels: Sequence[int]
    kernel: int
    space_to_depth: bool = True
    activation: str = "relu"
    pool: str = "max"

    @nn.compact
    def __call__(self, x):
        for i, c in enumerate(self.channels):
            x = ConvPool(c, self.kernel, self.space_to_depth, self.activation, self.pool, name=f"Conv_{i}")(x)
        return x.reshape(x.shape[0], -1)


TIME_FREQUENCIES = 8  # of the FiLM time embedding


def time_embedding(t, T: float, frequencies: int = TIME_FREQUENCIES):
    """[sin(πks), cos(πks)]_{k=1..n}, s = t/T: t (B,) -> (B, 2n)."""
    s = jnp.reshape(t, (-1, 1)) / T
    k = jnp.arange(1, frequencies + 1, dtype=s.dtype)[None, :]
    return jnp.concatenate([jnp.sin(jnp.pi * k * s), jnp.cos(jnp.pi * k * s)], axis=-1)


class ScalarMLP(nn.Module):
    """(B, F) -> (B,): hidden Dense layers with `activation`, then a linear scalar head. Given `film` (B, E), a
    time embedding, each hidden pre-activation z becomes z ⊙ (1 + γ_i) + β_i with (γ_i, β_i) = Dense_i(film),
    zero-initialised (FiLM): at initialisation the same function as without it. With heads M > 1 the head is
    M linear outputs u_k joined by a soft maximum, τ log Σ_k exp(u_k/τ) (τ = temperature): its gradient
    Σ_k softmax(u/τ)_k ∇u_k switches between the heads' gradients where one head overtakes another."""

    hidden: Sequence[int]
    activation: str
    heads: int = 1
    temperature: float = 1.0

    @nn.compact
    def __call__(self, h, film=None):
        act = ACTIVATION_FNS[self.activation]
        for i, width in enumerate(self.hidden):
            z = nn.Dense(width)(h)
            if film is not None:
                gamma, beta = jnp.split(nn.Dense(2 * width, kernel_init=nn.initializers.zeros,
                                                 name=f"FiLM_{i}")(film.astype(z.dtype)), 2, axis=-1)
                z = z * (1.0 + gamma) + beta
            h = act(z)
        if self.heads == 1:
            return nn.Dense(1)(h)[:, 0]
        u = nn.Dense(self.heads)(h)
        return self.temperature * jax.nn.logsumexp(u / self.temperature, axis=-1)


def features_and_time(module, x, t):
    """Conv features of x (if module.conv_channels) or x flattened, with t appended: (B, F + 1); with
    `module.raw_pixels` the flattened x joins the conv features: (B, F + d + 1). Called in the compact
    `__call__` of `module`, so the conv layers are its submodule ConvFeatures_0."""
    flat = x.reshape(x.shape[0], -1)
    if module.conv_channels:
        h = ConvFeatures(module.conv_channels, module.conv_kernel, module.space_to_depth, module.conv_activation,
                         module.conv_pool)(x)
        if module.raw_pixels:
            h = jnp.concatenate([h, flat.astype(h.dtype)], axis=-1)
    else:
        h = flat
    return jnp.concatenate([h, jnp.reshape(t, (-1, 1)).astype(h.dtype)], axis=-1)


class IdentityCoefficient(nn.Module):
    """a(t) of an identity path (design.md §13): t (B,) -> (B, 1) ("scalar") or (B, d) ("pixel");
    a small time network whose output layer starts at zero, so the path starts closed."""

    form: str
    size: int
    hidden: int = 16

    @nn.compact
    def __call__(self, t):
        h = nn.silu(nn.Dense(self.hidden)(jnp.reshape(t, (-1, 1))))
        width = 1 if self.form == "scalar" else self.size
        return nn.Dense(width, kernel_init=nn.initializers.zeros)(h)


def atom_costs(flat, t, atoms, delta, T: float, reference_mean: float, margin: float = ATOM_MARGIN):
    """c_k(x, t) = |x − y_k|²/(2s(t)) + g_k, g_k = (x̄ Σ_p y_kp − ½|y_k|²)/s(0) + δ_k, s(t) = (1 + margin)T − t:
    flat (B, d), t (B,), atoms y (K, d), delta (K,) -> (B, K). The ink terms of g_k cancel the atom's size at
    t = 0 (x̄: the reference's mean pixel), so that which atom x0 goes to depends on x0 − x̄ and δ alone."""
    s0 = (1.0 + margin) * T
    s = s0 - jnp.reshape(t, (-1, 1)).astype(flat.dtype)
    y_sq = jnp.sum(atoms**2, axis=-1)
    sq = jnp.sum(flat**2, axis=-1, keepdims=True) - 2.0 * flat @ atoms.T + y_sq[None, :]
    return 0.5 * sq / s + (reference_mean * jnp.sum(atoms, axis=-1) - 0.5 * y_sq)[None, :] / s0 + delta[None, :]


def atom_balance(flat0, atoms, delta, temperature: float, T: float, reference_mean: float):
    """The semi-dual of equal-mass atoms, E_x0[τ log Σ_k exp(−c_k(x0, 0)/τ)] + mean_k δ_k, as a loss of δ alone
    (the atoms enter without gradient): ∂/∂δ_k = 1/K − E_x0 w_k(x0), w = softmax(−c/τ), so descent raises the
    cost of an atom that more than 1/K of the reference goes to. flat0 (B, d)."""
    costs = atom_costs(flat0, jnp.zeros(flat0.shape[:1], flat0.dtype), jax.lax.stop_gradient(atoms), delta, T,
                       reference_mean)
    return (jnp.mean(temperature * jax.nn.logsumexp(-costs / temperature, axis=-1)) + jnp.mean(delta))


class AtomPotential(nn.Module):
    """A(x, t) = −lam τ log Σ_k exp(−c_k(x, t)/τ) over K learned atoms y_k (`atom_costs`): the value function of
    a terminal cost on the atoms (Hopf–Lax), which solves ∂tA − |∇A|²/(2 lam) = 0 as τ → 0. Its field
    −∇A/lam = Σ_k w_k (y_k − x)/s(t), w = softmax(−c/τ), runs straight to the atoms: one Euler step of h = T from
    t = 0 lands on Σ_k w_k(x0) y_k up to the margin, as K steps do (design.md §13). The costs δ enter A without
    gradient; `atom_balance` sets them. flat (B, d), t (B,) -> (B,)."""

    atoms: int
    temperature: float
    T: float
    lam: float
    reference_mean: float

    @nn.compact
    def __call__(self, flat, t):
        y = self.param("atoms", nn.initializers.normal(0.1), (self.atoms, flat.shape[1]))
        delta = self.param("costs", nn.initializers.zeros, (self.atoms,))
        costs = atom_costs(flat, t, y.astype(flat.dtype), jax.lax.stop_gradient(delta), self.T, self.reference_mean)
        return -self.lam * self.temperature * jax.nn.logsumexp(-costs / self.temperature, axis=-1)


class FlowNetwork(nn.Module):
    """The fields the flow's two forms share: hidden widths and activation of the MLP, conv channels and
    kernel (none: an MLP on the flattened input), the space-to-depth switch and the identity path."""

    hidden: Sequence[int]
    activation: str
    conv_channels: Sequence[int] = ()
    conv_kernel: int = 7
    space_to_depth: bool = True
    identity_path: str = "none"
    T: float = 1.0  # horizon and kinetic weight: used by identity_path="endpoint" only
    lam: float = 1.0
    raw_pixels: bool = False  # the MLP reads the flattened x beside the conv features (design.md §13)
    conv_activation: str = "relu"  # of the conv layers (the paper's relu: U piecewise linear, design.md §13)
    conv_pool: str = "max"  # of the conv layers: "max" (the paper's) or "avg"
    time_conditioning: str = "concat"  # t appended to the MLP's input, or also "film" of its hidden layers
    heads: int = 1  # of U's MLP: M > 1 joins M scalar heads by a soft maximum at `head_temperature`
    head_temperature: float = 1.0
    atoms: int = 0  # of U: K > 0 adds `AtomPotential` of K atoms at `atom_temperature` (design.md §13)
    atom_temperature: float = 0.05
    reference_mean: float = 0.0  # x̄ of the atoms' costs: the reference's mean pixel


def time_to_go(t, T: float):
    """τ(t) = max(T − t, T/16): the time left to T, bounded away from 0 for solvers that evaluate at t = T."""
    return jnp.maximum(T - jnp.reshape(t, (-1, 1)), T / 16)


class Potential(FlowNetwork):
    """U(x, t): x (B, *data_shape), t (B,) -> (B,). Conv features (if any) ⊕ t → MLP N (+ `AtomPotential` with
    atoms > 0), plus with an identity
    path ½ Σ_p a_p(t) x_p² ("scalar": one learned a(t); "pixel": a(t) per coordinate) or lam|x|²/(2τ(t))
    ("endpoint": v = −∇N/lam − x/τ, the straight line's −x/(T − t) built in, so that one Euler step from
    t = 0 lands on −T∇N(x0, 0)/lam with no trace of x0 outside N)."""

    @nn.compact
    def __call__(self, x, t):
        film = time_embedding(t, self.T) if self.time_conditioning == "film" else None
        u = ScalarMLP(self.hidden, self.activation, self.heads, self.head_temperature)(features_and_time(self, x, t),
                                                                                      film)
        if self.atoms:
            u = u + AtomPotential(self.atoms, self.atom_temperature, self.T, self.lam, self.reference_mean)(
                x.reshape(x.shape[0], -1), t)
        if self.identity_path == "none":
            return u
        flat = x.reshape(x.shape[0], -1)
        if self.identity_path == "endpoint":
            return u + 0.5 * self.lam * jnp.sum(flat ** 2, axis=-1) / time_to_go(t, self.T)[:, 0]
        a = IdentityCoefficient(self.identity_path, flat.shape[1])(t)
        return u + 0.5 * jnp.sum(a * flat ** 2, axis=-1)


class VelocityField(FlowNetwork):
    """v(x, t): x (B, *data_shape), t (B,) -> (B, *data_shape). The potential's trunk (conv features ⊕ t →
    hidden layers) with a linear head of d = prod(data_shape) outputs: the direct parameterisation of
    flow matching (torchcfm), against which v = −∇U/lam separates the objective from the gradient form."""

    @nn.compact
    def __call__(self, x, t):
        h = features_and_time(self, x, t)
        act = ACTIVATION_FNS[self.activation]
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        flat = x.reshape(x.shape[0], -1)
        v = nn.Dense(flat.shape[1])(h)
        if self.identity_path == "endpoint":  # v = (D(x, t) − x)/τ(t): D, the path's predicted end (design.md §13)
            v = (v - flat) / time_to_go(t, self.T)
        elif self.identity_path != "none":  # the skip v = N(x, t) + a(t) x (design.md §13)
            v = v + IdentityCoefficient(self.identity_path, flat.shape[1])(t) * flat
        return v.reshape(x.shape)


class Discriminator(nn.Module):
    """phi(x) before the divergence's output map: x (B, *data_shape) -> (B,)."""

    hidden: Sequence[int]
    activation: str
    conv_channels: Sequence[int] = ()
    conv_kernel: int = 7
    space_to_depth: bool = True

    @nn.compact
    def __call__(self, x):
        if self.conv_channels:
            h = ConvFeatures(self.conv_channels, self.conv_kernel, self.space_to_depth)(x)
        else:
            h = x.reshape(x.shape[0], -1)
        return ScalarMLP(self.hidden, self.activation)(h)


def flow_network_of(cls: type[FlowNetwork], config: Config) -> FlowNetwork:
    """`cls` (Potential or VelocityField) with the fields `config` gives the flow network."""
    conv = (config.potential_conv_channels or config.conv_channels) if config.architecture == "conv" else ()
    return cls(config.potential_hidden, config.potential_activation, conv, config.conv_kernel,
               config.conv_space_to_depth, config.identity_path, config.T, config.lam,
               raw_pixels=config.raw_pixels, conv_activation=config.potential_conv_activation,
               conv_pool=config.potential_conv_pool, time_conditioning=config.potential_time_conditioning,
               heads=config.potential_heads, head_temperature=config.potential_head_temperature,
               atoms=config.potential_atoms, atom_temperature=config.potential_atom_temperature,
               reference_mean=reference_mean(config))


def reference_mean(config: Config) -> float:
    """E x0 per pixel: (low + high)/2 of the uniform reference, 0 of the gaussian."""
    return 0.5 * (config.reference_low + config.reference_high) if config.reference == "uniform" else 0.0


def make_potential(config: Config) -> Potential:
    """The potential network described by `config`."""
    return flow_network_of(Potential, config)


def make_flow_network(config: Config) -> Potential | VelocityField:
    """The network that defines the flow: U(x, t) (v = −∇U/lam), or v(x, t) when velocity_field='direct'."""
    return flow_network_of(VelocityField if config.velocity_field == "direct" else Potential, config)


def make_discriminator(config: Config) -> Discriminator:
    """The discriminator network described by `config`."""
    architecture = (config.architecture if config.discriminator_architecture == "same"
                    else config.discriminator_architecture)
    conv = config.conv_channels if architecture == "conv" else ()
    return Discriminator(config.discriminator_hidden, config.discriminator_activation, conv,
                         config.conv_kernel, config.conv_space_to_depth)
