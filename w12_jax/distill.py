"""One-step distillation of a trained flow: a generator G regressed on the flow's own solve (Luhman & Luhman 2021).

    loss = mean_i |G(x0^i) − x1^i|² / d,   x1^i = Φ_T(x0^i)   (`reflow.reflow_pairs`, any solver of the flow)

G(x0) = x0 + MLP(x0) is a direct map, not a gradient field, so it can fit the flow's coupling x0 ↦ Φ_T(x0)
where a potential cannot (`reflow`: a gradient field fits the chords of an optimal-transport coupling only).
Sampling is one evaluation of G: 1 NFE. The flow stays the W1⊕W2 solution; G only shortcuts its solve.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from w12_jax.networks import ACTIVATION_FNS


class OneStepGenerator(nn.Module):
    """G(x0) = x0 + W_out·MLP(flatten x0): (B, *shape) -> (B, *shape)."""

    hidden: Sequence[int] = (1024, 1024, 1024)
    activation: str = "silu"

    @nn.compact
    def __call__(self, x0):
        act = ACTIVATION_FNS[self.activation]
        h = x0.reshape(x0.shape[0], -1)
        for width in self.hidden:
            h = act(nn.Dense(width)(h))
        return x0 + nn.Dense(int(np.prod(x0.shape[1:])))(h).reshape(x0.shape)


def regression_loss(g, x1):
    """mean over samples and coordinates of (g − x1)², g = G(x0)."""
    return jnp.mean((g - x1) ** 2)


def distill(x0, x1, *, iterations: int, key: jax.Array, hidden: Sequence[int] = (1024, 1024, 1024),
            activation: str = "silu", lr: float = 1e-3, batch_size: int = 256, validation: int = 0, critic=None,
            critic_weight: float = 0.0, progress: bool = False):
    """(generator, params, history): `iterations` Adam steps (learning rate lr·½(1 + cos(πs/S))) of
    `regression_loss` on batches drawn uniformly from the pairs (x0, x1) (n, *shape).

    critic: optional per-sample score x (B, *shape) -> (B,) (a trained run's φ, frozen); the loss then adds
    −critic_weight · mean φ(G(x0)), which moves G's samples up the critic as the flow's terminal cost does.
    The last `validation` pairs are held out; history = {"train": (iterations,) losses, "validation": [(step,
    loss on the held-out pairs)] every tenth of the run} (empty when validation = 0)."""
    x0, x1 = np.asarray(x0), np.asarray(x1)
    if x0.shape != x1.shape or x0.ndim < 2:
        raise ValueError(f"pairs must both have shape (n, ...), got {x0.shape} and {x1.shape}")
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
    if not 0 <= validation < len(x0):
        raise ValueError(f"validation must leave training pairs: 0 <= validation < {len(x0)}, got {validation}")
    n_train = len(x0) - validation
    train0, train1 = jnp.asarray(x0[:n_train]), jnp.asarray(x1[:n_train])
    val0, val1 = jnp.asarray(x0[n_train:]), jnp.asarray(x1[n_train:])
    generator = OneStepGenerator(tuple(hidden), activation)
    k_init, k_steps = jax.random.split(key)
    params = generator.init(k_init, train0[:1])
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, iterations))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        idx = jax.random.randint(key, (batch_size,), 0, n_train)

        def loss_fn(p):
            g = generator.apply(p, train0[idx])
            loss = regression_loss(g, train1[idx])
            if critic is not None and critic_weight:
                loss = loss - critic_weight * jnp.mean(critic(g))
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    validation_loss = jax.jit(lambda p: regression_loss(generator.apply(p, val0), val1))
    from tqdm import tqdm

    losses, history_val = [], []
    every = max(iterations // 10, 1)
    for i in tqdm(range(iterations), desc="distill", disable=not progress):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(k_steps, i))
        losses.append(loss)
        if validation and ((i + 1) % every == 0 or i + 1 == iterations):
            history_val.append((i + 1, float(validation_loss(params))))
    return generator, params, {"train": np.asarray(jnp.stack(losses)), "validation": history_val}


def distilled_sample(generator: OneStepGenerator, params, x0, chunk: int = 1000) -> np.ndarray:
    """G(x0) for x0 (n, *shape), `chunk` samples per call: the one-step samples."""
    apply = jax.jit(generator.apply)
    return np.concatenate([np.asarray(apply(params, jnp.asarray(x0[i:i + chunk]))) for i in range(0, len(x0), chunk)])
