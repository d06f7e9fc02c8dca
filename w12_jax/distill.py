"""One-step distillation of a trained flow: a generator G regressed on the flow's own solve (Luhman & Luhman 2021).

    loss = mean_i |G(x0^i) − x1^i|² / d,   x1^i = Φ_T(x0^i)   (`reflow.reflow_pairs`, any solver of the flow)

G(x0) = x0 + MLP(x0) is a direct map, not a gradient field, so it can fit the flow's coupling x0 ↦ Φ_T(x0)
where a potential cannot (`reflow`: a gradient field fits the chords of an optimal-transport coupling only).
Sampling is one evaluation of G: 1 NFE. The flow stays the W1⊕W2 solution; G only shortcuts its solve.

A critic term adds the flow's own terminal cost, loss + w·mean φ(G(x0)) (`mfg.potential_objective`: the flow
moves its samples down φ, which the critic raises on generated samples and lowers on data), with φ frozen or
trained beside G as the flow trains its critic (`TrainedCritic`): regression for the coupling, the W1-proximal
divergence to keep G's samples off the blends between digits that a regression returns where it cannot tell
which digit an x0 goes to. Per sample the regression's gradient is r·2|G(x0) − x1|/d against the critic's
w·|∇φ| ≈ w·L: on MNIST at a held-out MSE of 0.07 per pixel, r = 1 gives the pairs 2 % of the critic's pull,
and a `ConvGenerator` then drops digits on some seeds; r = 10 holds it to the coupling
(experiments/results/distill, fifth section).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from w12_jax.config import Config
from w12_jax.networks import ACTIVATION_FNS
from w12_jax.train import Model, build_model, critic_loss, critic_values


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


class ConvGenerator(nn.Module):
    """G(x0) = decoder(MLP(flatten x0)): (B, H, W, C) -> (B, H, W, C), H and W divisible by 2^k, k =
    len(channels) − 1. The MLP's last layer maps to an (H/2^k, W/2^k, channels[0]) grid; each later width c
    doubles the grid with a 3×3 conv to 4c channels and a depth-to-space (sub-pixel) shuffle; a last 3×3 conv
    gives C channels. The DCGAN shape, x0 its latent: the MLP decides what to draw, the convs draw local strokes."""

    hidden: Sequence[int] = (1024,)
    channels: Sequence[int] = (64, 32, 16)
    activation: str = "silu"

    @nn.compact
    def __call__(self, x0):
        act = ACTIVATION_FNS[self.activation]
        if x0.ndim != 4:
            raise ValueError(f"ConvGenerator draws images (B, H, W, C), got x0 of shape {x0.shape}")
        b, h, w, c = x0.shape
        scale = 2 ** (len(self.channels) - 1)
        if h % scale or w % scale:
            raise ValueError(f"ConvGenerator with {len(self.channels)} widths needs H and W divisible by {scale}, "
                             f"got {x0.shape[1:]}")
        z = x0.reshape(b, -1)
        for width in self.hidden:
            z = act(nn.Dense(width)(z))
        z = act(nn.Dense(h // scale * w // scale * self.channels[0])(z)).reshape(b, h // scale, w // scale, -1)
        for width in self.channels[1:]:
            z = nn.Conv(4 * width, (3, 3))(z)
            gh, gw = z.shape[1:3]
            z = act(z.reshape(b, gh, gw, 2, 2, width).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * gh, 2 * gw, width))
        return nn.Conv(c, (3, 3))(z)


GENERATORS = ("mlp", "conv")


def make_generator(architecture: str, hidden: Sequence[int], activation: str = "silu",
                   channels: Sequence[int] = (64, 32, 16)) -> nn.Module:
    """`OneStepGenerator(hidden)` for "mlp", `ConvGenerator(hidden, channels)` for "conv" (images only)."""
    if architecture == "mlp":
        return OneStepGenerator(tuple(hidden), activation)
    if architecture == "conv":
        return ConvGenerator(tuple(hidden), tuple(channels), activation)
    raise ValueError(f"generator architecture must be one of {GENERATORS}, got {architecture!r}")


def regression_loss(g, x1):
    """mean over samples and coordinates of (g − x1)², g = G(x0)."""
    return jnp.mean((g - x1) ** 2)


class TrainedCritic(NamedTuple):
    """φ trained beside G as a run trains its critic: before each G step, model.config.n_critic Adam steps
    (model.discriminator_tx) of `train.critic_loss`, −dual(φ(G(x0)), φ(y)) + μ·GP, on a batch of G's samples
    and one of `data` (m, *shape), starting from `params` (a trained run's φ, or fresh)."""

    model: Model
    params: Any
    data: np.ndarray


def distill(x0, x1, *, iterations: int, key: jax.Array, hidden: Sequence[int] = (1024, 1024, 1024),
            activation: str = "silu", lr: float = 1e-3, batch_size: int = 256, validation: int = 0,
            critic: Optional[Callable | TrainedCritic] = None, critic_weight: float = 0.0,
            regression_weight: float = 1.0, init_params=None, progress: bool = False, architecture: str = "mlp",
            channels: Sequence[int] = (64, 32, 16), ema_decay: float = 0.0):
    """(generator, params, history): `iterations` Adam steps (learning rate lr·½(1 + cos(πs/S))) of
    `regression_loss` on batches drawn uniformly from the pairs (x0, x1) (n, *shape), from `init_params`
    (default: fresh); G is `make_generator(architecture, hidden, activation, channels)`.

    critic: a per-sample score x (B, *shape) -> (B,) held fixed, or a `TrainedCritic`; the loss is then
    regression_weight · regression_loss + critic_weight · mean φ(G(x0)), the flow's terminal cost
    (regression_weight = 0: a generator trained against the critic alone, the pairs only its x0). The last
    `validation` pairs are held out; history = {"train": (iterations,) losses, "validation": [(step,
    regression_loss on the held-out pairs)] every tenth of the run} (empty when validation = 0), and with a
    `TrainedCritic` "dual": (iterations,) dual values of its last step and "critic_params", φ at the end.
    ema_decay = d > 0: history["ema_params"] = e_S, e_0 = the initial parameters, e_s = d·e_{s−1} + (1 − d)·p_s
    after step s (the returned params stay p_S); no warm-up, unlike `train.ema_update`: e_0 is a warm start
    worth averaging, not a random initialisation."""
    x0, x1 = np.asarray(x0), np.asarray(x1)
    if x0.shape != x1.shape or x0.ndim < 2:
        raise ValueError(f"pairs must both have shape (n, ...), got {x0.shape} and {x1.shape}")
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
    if regression_weight < 0 or (regression_weight == 0 and not (critic is not None and critic_weight)):
        raise ValueError(f"regression_weight must be >= 0, and > 0 without a critic term, got {regression_weight}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if not 0 <= validation < len(x0):
        raise ValueError(f"validation must leave training pairs: 0 <= validation < {len(x0)}, got {validation}")
    n_train = len(x0) - validation
    train0, train1 = jnp.asarray(x0[:n_train]), jnp.asarray(x1[:n_train])
    val0, val1 = jnp.asarray(x0[n_train:]), jnp.asarray(x1[n_train:])
    generator = make_generator(architecture, hidden, activation, channels)
    k_init, k_steps = jax.random.split(key)
    params = generator.init(k_init, train0[:1]) if init_params is None else init_params
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, iterations))
    opt_state = optimizer.init(params)
    ema = params if ema_decay else None
    trained, phi_state = isinstance(critic, TrainedCritic), None
    if trained:
        data = jnp.asarray(critic.data)
        phi_state = (critic.params, critic.model.discriminator_tx.init(critic.params))

    def critic_steps(params, phi_state, x0_batch, key):
        """n_critic updates of φ against the data on the current G's samples; returns (phi_state, dual)."""
        g = jax.lax.stop_gradient(generator.apply(params, x0_batch))
        phi, opt = phi_state
        for k in jax.random.split(key, critic.model.config.n_critic):  # unrolled: a scan ran 7x slower on CPU
            k_data, k_gp = jax.random.split(k)
            # the barrier keeps XLA:CPU from fusing the gather into the critic's convolutions (4x slower)
            y = jax.lax.optimization_barrier(data[jax.random.randint(k_data, (batch_size,), 0, len(data))])
            (_, (dual, _)), grads = jax.value_and_grad(critic_loss, argnums=1, has_aux=True)(
                critic.model, phi, g, y, k_gp)
            updates, opt = critic.model.discriminator_tx.update(grads, opt, phi)
            phi = optax.apply_updates(phi, updates)
        return (phi, opt), dual

    @jax.jit
    def step(params, opt_state, phi_state, key):
        k_idx, k_critic = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, n_train)
        dual = jnp.nan
        if trained:
            phi_state, dual = critic_steps(params, phi_state, train0[idx], k_critic)
            score = lambda g: critic_values(critic.model, phi_state[0], g)
        else:
            score = critic

        def loss_fn(p):
            g = generator.apply(p, train0[idx])
            loss = regression_weight * regression_loss(g, train1[idx])
            if score is not None and critic_weight:
                loss = loss + critic_weight * jnp.mean(score(g))
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, phi_state, loss, dual

    # outside `step`, so that ema_decay = 0 compiles the very step it always did
    ema_update = jax.jit(lambda new, old: optax.incremental_update(new, old, 1.0 - ema_decay))
    validation_loss = jax.jit(lambda p: regression_loss(generator.apply(p, val0), val1))
    from tqdm import tqdm

    losses, duals, history_val = [], [], []
    every = max(iterations // 10, 1)
    for i in tqdm(range(iterations), desc="distill", disable=not progress):
        params, opt_state, phi_state, loss, dual = step(params, opt_state, phi_state, jax.random.fold_in(k_steps, i))
        if ema_decay:
            ema = ema_update(params, ema)
        losses.append(loss)
        duals.append(dual)
        if validation and ((i + 1) % every == 0 or i + 1 == iterations):
            history_val.append((i + 1, float(validation_loss(params))))
    history = {"train": np.asarray(jnp.stack(losses)), "validation": history_val}
    if ema_decay:
        history["ema_params"] = ema
    if trained:
        history.update(dual=np.asarray(jnp.stack(duals)), critic_params=phi_state[0])
    return generator, params, history


def distilled_sample(generator: OneStepGenerator, params, x0, chunk: int = 1000) -> np.ndarray:
    """G(x0) for x0 (n, *shape), `chunk` samples per call: the one-step samples."""
    apply = jax.jit(generator.apply)
    return np.concatenate([np.asarray(apply(params, jnp.asarray(x0[i:i + chunk]))) for i in range(0, len(x0), chunk)])


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """The one-step recipe of `distill_flow` (experiments/results/distill, seventh section: G at 1 NFE level
    with the main job's adaptive solve over three 600-iteration teachers): `pairs` x0 solved by the flow's
    Euler at `pair_steps` (the last `validation` held out); `warm_iterations` steps of regression alone, then
    `iterations` steps of regression_weight · regression + critic_weight · mean φ(G(x0)) with φ, the run's
    critic, trained beside G under `critic_divergence`; Adam at `lr` with a cosine decay per phase, batches of
    `batch`; G: `generator` ("auto": conv for images, mlp otherwise) with `hidden` and `channels`."""

    pairs: int = 5000
    validation: int = 500
    pair_steps: int = 10
    warm_iterations: int = 1000
    iterations: int = 1450
    batch: int = 128
    lr: float = 2e-3
    generator: str = "auto"
    hidden: tuple[int, ...] = (1024,)
    channels: tuple[int, ...] = (64, 32, 16)
    critic_weight: float = 1.0
    regression_weight: float = 15.0
    critic_divergence: str = "reverse_kl"
    seed: int = 1

    def __post_init__(self):
        if not 1 <= self.validation < self.pairs:
            raise ValueError(f"validation must be >= 1 and below pairs, got {self.validation} of {self.pairs}")
        for name in ("pair_steps", "iterations", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warm_iterations < 0:
            raise ValueError(f"warm_iterations must be >= 0, got {self.warm_iterations}")

    def architecture(self, data_shape: Sequence[int]) -> str:
        """"conv" or "mlp": `generator`, with "auto" resolved by the data's shape."""
        if self.generator == "auto":
            return "conv" if len(data_shape) == 3 else "mlp"
        return self.generator


def distill_flow(config: Config, state, data: np.ndarray, recipe: DistillRecipe = DistillRecipe(),
                 progress: bool = False):
    """(generator, params, info): `recipe` applied to a trained run (`state`, its `config`; `data` (m, *shape)
    its training data, which the critic sees). info: the held-out regression loss of G and of the identity
    map G(x0) = x0 (scale: how far the flow carries x0), seconds of the pairs and of G's training."""
    from w12_jax.reflow import reflow_pairs

    start = time.perf_counter()
    x0, x1 = reflow_pairs(config, state.potential_ema, recipe.pairs, seed=recipe.seed, solver="euler",
                          num_steps=recipe.pair_steps)
    pair_seconds = time.perf_counter() - start
    architecture = recipe.architecture(config.data_shape)

    def run(**kwargs):
        return distill(x0, x1, hidden=recipe.hidden, lr=recipe.lr, batch_size=recipe.batch,
                       validation=recipe.validation, progress=progress, architecture=architecture,
                       channels=recipe.channels, **kwargs)

    warm = None
    if recipe.warm_iterations:
        _, warm, _ = run(iterations=recipe.warm_iterations, key=jax.random.PRNGKey(recipe.seed))
    critic = None
    if recipe.critic_weight:
        critic_config = dataclasses.replace(config, divergence=recipe.critic_divergence)
        critic = TrainedCritic(build_model(critic_config), state.discriminator_params, np.asarray(data))
    # after a warm start, batches of another stream (experiments.distill's keys)
    key = jax.random.PRNGKey(recipe.seed + 1000 * (warm is not None))
    generator, params, history = run(iterations=recipe.iterations, key=key, critic=critic,
                                     critic_weight=recipe.critic_weight,
                                     regression_weight=recipe.regression_weight, init_params=warm)
    held0, held1 = x0[-recipe.validation:], x1[-recipe.validation:]
    info = {"flow_iteration": int(state.step), "architecture": architecture,
            "heldout_regression_loss": history["validation"][-1][1],
            "heldout_identity_loss": float(np.mean((held0 - held1) ** 2)),
            "pair_seconds": pair_seconds, "distill_seconds": time.perf_counter() - start - pair_seconds}
    return generator, params, info


GENERATOR_DIR = "generator"  # a workdir's distilled G: <workdir>/generator/{params/, generator.json}


def save_generator(workdir: str, params, recipe: DistillRecipe, info: dict) -> str:
    """Write G's parameters (an orbax checkpoint) and its recipe and info (generator.json) to
    workdir/generator, replacing an earlier G; returns the folder."""
    import shutil

    import orbax.checkpoint as ocp

    folder = os.path.abspath(os.path.join(workdir, GENERATOR_DIR))
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(os.path.join(folder, "params"), jax.device_get(params))
    with open(os.path.join(folder, "generator.json"), "w") as f:
        json.dump({"recipe": dataclasses.asdict(recipe), **info}, f, indent=1)
        f.write("\n")
    return folder


def generator_spec_path(workdir: str) -> str:
    """workdir/generator/generator.json: the file whose presence says that `w12 distill` wrote a G there."""
    return os.path.abspath(os.path.join(workdir, GENERATOR_DIR, "generator.json"))


def restore_generator(workdir: str, data_shape: Sequence[int]):
    """(generator, params, record) of workdir/generator (`save_generator`); FileNotFoundError when the
    workdir holds none."""
    import orbax.checkpoint as ocp

    spec = generator_spec_path(workdir)
    folder = os.path.dirname(spec)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"no distilled generator in {folder}: run `w12 distill --workdir {workdir}` first")
    with open(spec) as f:
        record = json.load(f)
    recipe = record["recipe"]
    generator = make_generator(record["architecture"], recipe["hidden"], channels=recipe["channels"])
    target = jax.eval_shape(generator.init, jax.random.PRNGKey(0), jnp.zeros((1, *data_shape), jnp.float32))
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(os.path.join(folder, "params"), target)
    return generator, params, record
