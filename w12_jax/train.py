"""The train state and the compiled, data-parallel outer iteration (design.md §6; flow matching: §11).

One outer iteration = n_D discriminator updates (a `lax.scan`) + one potential update, compiled as one
program. The batch axis is sharded over a 1-D device mesh ("data"); parameters are replicated, so the
gradients of the batch means are all-reduced (averaged) across devices by the compiler.
Randomness is a pure function of (seed, step): key_step = fold_in(key, step), and every random array is
drawn at its global shape before sharding, so 1 and N devices see the same numbers.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from w12_jax import flow_matching, mfg
from w12_jax.config import Config, ConfigError
from w12_jax.distributed import data_sharding, global_array, make_mesh
from w12_jax.divergences import Divergence, get_divergence, gradient_norm, gradient_penalty
from w12_jax.flow import EulerFlow, euler_flow, euler_velocity_flow, kinetic_energy, scalar_potential, unroll_for, \
    velocity
from w12_jax.networks import atom_balance, make_discriminator, make_flow_network, reference_mean
from w12_jax.penalties import PenaltyInputs, active_penalties, penalty_values, terminal_gradient
from w12_jax.reference import sample_reference

INDICATOR_METRICS = ("terminal_residual", "velocity_residual", "grad_phi_gen_mean", "grad_phi_gen_max",
                     "grad_phi_data_mean", "grad_phi_data_max")  # extra gradient passes; `outer_iteration(indicators=)`
METRICS = ("divergence", "kinetic_energy", "hj_residual", "terminal_residual", "velocity_residual",
           "gradient_penalty", "potential_loss", "critic_loss", "straight_line_bound", "grad_phi_gen_mean",
           "grad_phi_gen_max", "grad_phi_data_mean", "grad_phi_data_max")
CFM_METRICS = ("cfm_loss", "kinetic_energy", "straight_line_bound")  # flow-matching objectives (icfm, otcfm)


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; the PRNG state is `key` (fixed) and `step`."""

    step: jax.Array
    potential_params: Any
    potential_ema: Any  # the parameters to sample with: `ema_update` of potential_params (= it when ema_decay=0)
    discriminator_params: Any
    potential_opt_state: Any
    discriminator_opt_state: Any
    key: jax.Array


def learning_rate(config: Config, lr: float, updates: int) -> optax.ScalarOrSchedule:
    """`lr` (lr_schedule="constant"), or lr·½(1 + cos(π s/updates)) at update s (lr_schedule="cosine")."""
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, updates)
    return lr


def make_optimizers(config: Config):
    """Adam(beta1, beta2) for U and for phi (design.md §6); phi takes n_critic updates per iteration."""
    lr_u = learning_rate(config, config.lr_potential, config.iterations)
    lr_phi = learning_rate(config, config.lr_discriminator, config.iterations * config.n_critic)
    return (optax.adam(lr_u, b1=config.beta1, b2=config.beta2),
            optax.adam(lr_phi, b1=config.beta1, b2=config.beta2))


class Model(NamedTuple):
    """What `config` determines, built once per run by `build_model` and handed to the step: the flow
    network (U(x, t), or v(x, t) with velocity_field="direct"), the discriminator, the divergence, the two
    optimizers and the active straightness penalties (weight, `penalties.Penalty`)."""

    config: Config
    flow_network: nn.Module
    discriminator: nn.Module
    divergence: Divergence
    potential_tx: optax.GradientTransformation
    discriminator_tx: optax.GradientTransformation
    penalties: tuple


def build_model(config: Config) -> Model:
    """The `Model` of `config`."""
    opt_u, opt_phi = make_optimizers(config)
    return Model(config, make_flow_network(config), make_discriminator(config),
                 get_divergence(config.divergence, config.alpha), opt_u, opt_phi, active_penalties(config))


def init_train_state(config: Config, key: Optional[jax.Array] = None, model: Optional[Model] = None) -> TrainState:
    """Fresh parameters and optimizer states; key defaults to PRNGKey(config.seed)."""
    model = build_model(config) if model is None else model
    key = jax.random.PRNGKey(config.seed) if key is None else key
    init_key, run_key = jax.random.split(key)
    ku, kphi = jax.random.split(init_key)
    x = jnp.zeros((1,) + tuple(config.data_shape), jnp.float32)
    pu = model.flow_network.init(ku, x, jnp.zeros((1,)))
    pphi = model.discriminator.init(kphi, x)
    return TrainState(step=jnp.zeros((), jnp.int32), potential_params=pu, potential_ema=pu,
                      discriminator_params=pphi, potential_opt_state=model.potential_tx.init(pu),
                      discriminator_opt_state=model.discriminator_tx.init(pphi), key=run_key)


def ema_update(decay: float, step: jax.Array, ema, params):
    """ema <- d·ema + (1 − d)·params with d = min(decay, (1 + step)/(10 + step)); params when decay = 0.

    The warm-up (1 + s)/(10 + s) keeps the initial parameters from weighing on the average of a short run.
    """
    if decay == 0:
        return params
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), ema, params)


def critic_values(model: Model, params, x):
    """phi(x) = output(network(x)) for a batch x (B, *shape) -> (B,)."""
    return model.divergence.output(model.discriminator.apply(params, x))


def critic_scalar(model: Model, params):
    """phi for ONE sample: x (*shape) -> ()."""
    return lambda x: critic_values(model, params, x[None])[0]


def critic_loss(model: Model, params, x_T, y, key):
    """−dual(phi(x_T), phi(y)) + use_w1·mu·GP for one batch; returns (loss, (dual, GP))."""
    config = model.config
    dual = model.divergence.dual(critic_values(model, params, x_T), critic_values(model, params, y))
    gp, _ = gradient_penalty(critic_scalar(model, params), x_T, y, key, config.L)
    return mfg.critic_objective(dual, gp, config.gp_weight * float(config.use_w1)), (dual, gp)


def is_direct(model: Model) -> bool:
    """The flow network is a direct velocity field v(x, t), not a potential U."""
    return model.config.velocity_field == "direct"


def flow_fields(model: Model, params) -> tuple[Any, Any]:
    """(u for one sample, None) of a potential, or (None, v for a batch) of a direct velocity field."""
    if is_direct(model):
        return None, velocity(model.flow_network, params, model.config.lam)
    return scalar_potential(model.flow_network, params), None


def model_flow(model: Model, params, x0, num_steps: int) -> tuple[EulerFlow, Any, Any]:
    """(the Euler flow from x0 on num_steps steps, u, v) with (u, v) of `flow_fields`: the potential's
    −∇U/lam (`euler_flow`) or a direct field's v (`euler_velocity_flow`)."""
    config = model.config
    u, v = flow_fields(model, params)
    if v is not None:
        return euler_velocity_flow(v, x0, config.T, num_steps, config.lam), None, v
    return euler_flow(u, x0, config.T, num_steps, config.lam), u, None


def straightness_penalties(model: Model, u, critic_params, x0, flow, key, v=None) -> dict:
    """{weight key: unweighted value} of the model's active penalties (`penalties`) on `flow` from x0 (u: the
    potential for one sample, or None and v: a direct field). Gradients reach the flow network's parameters
    directly and (except the chord penalty) through the particles x_k."""
    config = model.config
    inputs = PenaltyInputs(u, flow, x0, critic_scalar(model, critic_params), key, config.T, config.dt, config.lam,
                           v=v)
    return penalty_values(model.penalties, inputs)


def atom_balance_of(model: Model, potential_params, x0):
    """`networks.atom_balance` of the potential's atoms on the reference batch x0."""
    config = model.config
    atoms = potential_params["params"]["AtomPotential_0"]
    return atom_balance(x0.reshape(x0.shape[0], -1), atoms["atoms"], atoms["costs"],
                        config.potential_atom_temperature, config.T, reference_mean(config))


def with_data_atoms(state: TrainState, train: np.ndarray, key: jax.Array) -> TrainState:
    """state with the potential's K atoms (and their EMA) set to K training samples drawn without replacement
    by key: atoms at digits start with clear cells (each x0 goes to one), where atoms at the normal init start
    as one blend and stay one (few_step README, "Atoms")."""
    atoms = state.potential_params["params"]["AtomPotential_0"]["atoms"]
    pick = np.asarray(jax.random.choice(key, train.shape[0], (atoms.shape[0],), replace=False))
    y = jax.device_put(jnp.asarray(train[pick].reshape(atoms.shape[0], -1), atoms.dtype), atoms.sharding)

    def put(params):
        inner = {**params["params"]["AtomPotential_0"], "atoms": y}
        return {**params, "params": {**params["params"], "AtomPotential_0": inner}}

    return state.replace(potential_params=put(state.potential_params), potential_ema=put(state.potential_ema))


def potential_loss(model: Model, potential_params, critic_params, x0, key=None, cfm_pairs=None):
    """G = mean phi(x_K) + use_w2·lam·KE + Σ_w w·penalty_w (+ β·L_CFM) (+ the atoms' balance, a loss of their
    costs alone: `atom_balance_of`) through the unrolled Euler flow.

    Returns (G, (flow, KE, phi(x_K), L_CFM or None)); key: the chord times, needed only when chord_weight > 0;
    cfm_pairs (y, t): x0's OT partners in the data and times in [0, T], needed only when cfm_weight > 0.
    """
    config = model.config
    flow, u, v = model_flow(model, potential_params, x0, config.num_steps)
    ke = kinetic_energy(flow.grad_u, config.dt, config.lam)
    phi_T = critic_values(model, critic_params, flow.x_T)
    loss = mfg.potential_objective(phi_T, ke, config.lam, float(config.use_w2))
    if key is None and any(p.needs_key for _, p in model.penalties):
        raise ValueError("chord_weight > 0 needs a PRNG key for the chord times")
    values = straightness_penalties(model, u, critic_params, x0, flow, key, v)
    for weight, penalty in model.penalties:
        loss = loss + weight * values[penalty.weight_key]
    if config.potential_atoms:  # equal-mass atoms: the semi-dual sets their costs (and nothing else)
        loss = loss + atom_balance_of(model, potential_params, x0)
    cfm = None
    if config.cfm_weight > 0:
        y, t = cfm_pairs
        cfm, _ = flow_matching.cfm_loss(velocity(model.flow_network, potential_params, config.lam), x0, y, t,
                                        config.T)
        loss = loss + config.cfm_weight * cfm
    return loss, (flow, ke, phi_T, cfm)


def flow_matching_iteration(model: Model, state: TrainState, data: jax.Array, shard=lambda x, axis: x):
    """One regression step of I-CFM / OT-CFM (`flow_matching`) on y = data[-1]; the critic is left as it is.

    x0 ~ rho_0 and t ~ U[0, T] from key_step; with objective="otcfm" the pairs (x0_i, y_perm[i]) follow the
    exact OT plan of the whole global batch (the same pairs on 1 or N devices). Returns (state, metrics):
    CFM_METRICS, with kinetic_energy = T·mean ½|v(x_t, t)|² and straight_line_bound = mean ½|y − x0|²/T.
    """
    config = model.config
    B, T = config.batch_size, config.T
    k_ref, k_t = jax.random.split(jax.random.fold_in(state.key, state.step))
    x0 = shard(sample_reference(config, k_ref, (B,)), 0)
    y = data[-1]
    if config.objective == "otcfm":
        y = shard(y[flow_matching.ot_permutation(x0, y)], 0)
    t = jax.random.uniform(k_t, (B,), x0.dtype, 0.0, T)

    def loss_fn(params):
        return flow_matching.cfm_loss(velocity(model.flow_network, params, config.lam), x0, y, t, T)

    (loss, v_t), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.potential_params)
    updates, opt_u_state = model.potential_tx.update(grads, state.potential_opt_state, state.potential_params)
    pu = optax.apply_updates(state.potential_params, updates)
    metrics = {"cfm_loss": loss,
               "kinetic_energy": T * jnp.mean(0.5 * jnp.sum(v_t.reshape(B, -1) ** 2, axis=-1)),
               "straight_line_bound": mfg.straight_line_bound(x0, y, T)}
    new_state = state.replace(step=state.step + 1, potential_params=pu, potential_opt_state=opt_u_state,
                              potential_ema=ema_update(config.ema_decay, state.step, state.potential_ema, pu))
    return new_state, metrics


def critic_phase(model: Model, state: TrainState, data, k_ref_critic, k_gp, shard, batched_critic_flow: bool):
    """n_D phi updates (a `lax.scan`) against the frozen U's particles; data (n_D, B, *shape); x0 from
    k_ref_critic, the penalty's interpolation from k_gp. Returns ((phi params, phi optimizer state),
    (critic losses, gradient penalties)) of the n_D updates."""
    config = model.config
    n, B, K = config.n_critic, config.batch_size, config.num_steps
    # U is frozen, so the n_D flows can be one flow of n_D·B particles (layout (B, n_D))
    frozen = jax.lax.stop_gradient(state.potential_params)
    x0_c = shard(sample_reference(config, k_ref_critic, (B, n)), 0)
    if batched_critic_flow:
        xT_c = model_flow(model, frozen, x0_c.reshape((B * n,) + x0_c.shape[2:]), K)[0].x_T
        xT_c = jnp.moveaxis(xT_c.reshape(x0_c.shape), 1, 0)
    else:
        xT_c = jnp.stack([model_flow(model, frozen, x0_c[:, i], K)[0].x_T for i in range(n)])
    xT_c = shard(xT_c, 1)  # (n_D, B, *shape)

    def critic_update(carry, inputs):
        params, opt_state = carry
        (loss, (_, gp)), grads = jax.value_and_grad(partial(critic_loss, model), has_aux=True)(params, *inputs)
        updates, opt_state = model.discriminator_tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, gp)

    return jax.lax.scan(critic_update, (state.discriminator_params, state.discriminator_opt_state),
                        (jax.lax.stop_gradient(xT_c), data, jax.random.split(k_gp, n)), unroll=unroll_for(n))


def indicator_metrics(model: Model, potential_params, critic_params, flow: EulerFlow, y, key) -> dict:
    """INDICATOR_METRICS of the flow's particles and the data y (three more gradient passes); a direct field
    adds jacobian_asymmetry at (x_K, T) (`mfg.jacobian_asymmetry`, probes from key)."""
    config = model.config
    phi = critic_scalar(model, critic_params)
    u, v = flow_fields(model, potential_params)
    grad_u_T = terminal_gradient(u, v, flow.x_T, config.T, config.lam)
    extra = {} if v is None else {"jacobian_asymmetry": mfg.jacobian_asymmetry(v, flow.x_T, config.T, key)}
    grad_phi_T = jax.vmap(jax.grad(phi))(flow.x_T)
    grad_phi_gen = jnp.sqrt(jnp.sum(grad_phi_T.reshape(config.batch_size, -1) ** 2, axis=-1))
    grad_phi_data = gradient_norm(phi, y)
    return {"terminal_residual": mfg.terminal_residual(grad_u_T, grad_phi_T),
            "velocity_residual": mfg.velocity_consistency(flow.grad_u, grad_u_T, config.dt),
            "grad_phi_gen_mean": jnp.mean(grad_phi_gen), "grad_phi_gen_max": jnp.max(grad_phi_gen),
            "grad_phi_data_mean": jnp.mean(grad_phi_data), "grad_phi_data_max": jnp.max(grad_phi_data), **extra}


def outer_iteration(model: Model, state: TrainState, data: jax.Array, mesh: Optional[Mesh] = None,
                    indicators: bool = True, batched_critic_flow: Optional[bool] = None):
    """n_D phi updates then one U update; data: (n_critic, B, *shape). Returns (state, metrics dict).

    Pure; `make_train_step` compiles it. With `mesh`, per-particle arrays are sharded on their batch axis.
    metrics holds every name in METRICS; with indicators=False it leaves out INDICATOR_METRICS (∇U(x_T),
    ∇phi(x_T), ∇phi(y): three more gradient passes) and the parameters come out the same.
    batched_critic_flow: integrate the n_D frozen-U flows as one flow of n_D·B particles (fills a GPU) or as
    n_D flows of B (25 % faster on XLA:CPU, whose caches favour the smaller batch); the same numbers either
    way. None: batched unless the devices (of `mesh`, else the default backend) are CPUs.
    With objective icfm / otcfm it is `flow_matching_iteration` instead (metrics: CFM_METRICS).
    """
    config = model.config

    def shard(x, axis):
        if mesh is None:
            return x
        spec = [None] * x.ndim
        spec[axis] = "data"
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))

    if config.objective != "mfg":
        return flow_matching_iteration(model, state, data, shard)
    if config.train_steps:
        raise ConfigError(f"train_steps={config.train_steps}: the grid of each iteration is drawn on the host; "
                          "train on on_grid(config, grid_of(config, iteration)) (the training loop does)")
    key = jax.random.fold_in(state.key, state.step)
    k_ref_critic, k_gp, k_ref_u = jax.random.split(key, 3)
    if batched_critic_flow is None:
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        batched_critic_flow = platform != "cpu"
    (pphi, opt_phi_state), (critic_losses, gps) = critic_phase(
        model, state, data, k_ref_critic, k_gp, shard, batched_critic_flow)

    # potential phase: G = mean phi(x_K) + w2·lam·KE through the unrolled flow, phi frozen.
    x0 = shard(sample_reference(config, k_ref_u, (config.batch_size,)), 0)
    pphi_frozen = jax.lax.stop_gradient(pphi)
    k_chord = jax.random.fold_in(k_ref_u, 1)  # a new stream: the paper's runs draw the same numbers as before
    cfm_pairs = None
    if config.cfm_weight > 0:  # x0 paired with the last data batch by exact OT, t ~ U[0, T] (a third stream)
        y = shard(data[-1][flow_matching.ot_permutation(x0, data[-1])], 0)
        t = jax.random.uniform(jax.random.fold_in(k_ref_u, 2), (config.batch_size,), x0.dtype, 0.0, config.T)
        cfm_pairs = (y, t)
    (g_loss, (flow, ke, phi_T, cfm)), grads_u = jax.value_and_grad(partial(potential_loss, model), has_aux=True)(
        state.potential_params, pphi_frozen, x0, k_chord, cfm_pairs)
    updates, opt_u_state = model.potential_tx.update(grads_u, state.potential_opt_state, state.potential_params)
    pu = optax.apply_updates(state.potential_params, updates)

    # metrics on the particles of the potential phase (before the U update), no gradients.
    flow, phi_T = jax.lax.stop_gradient((flow, phi_T))
    y = data[-1]
    metrics = {
        "divergence": model.divergence.dual(phi_T, critic_values(model, pphi_frozen, y)),
        "kinetic_energy": ke,
        "gradient_penalty": gps[-1],
        "potential_loss": g_loss,
        "critic_loss": critic_losses[-1],
        "straight_line_bound": mfg.straight_line_bound(x0, flow.x_T, config.T),
    }
    if not is_direct(model):  # a direct field has no ∂tU
        metrics["hj_residual"] = mfg.hj_residual(flow.dt_u, flow.grad_u, config.dt, config.lam)
    if cfm is not None:
        metrics["cfm_loss"] = jax.lax.stop_gradient(cfm)
    if indicators:
        metrics.update(indicator_metrics(model, state.potential_params, pphi_frozen, flow, y,
                                         jax.random.fold_in(k_ref_u, 3)))
    new_state = state.replace(step=state.step + 1, potential_params=pu, discriminator_params=pphi,
                              potential_ema=ema_update(config.ema_decay, state.step, state.potential_ema, pu),
                              potential_opt_state=opt_u_state, discriminator_opt_state=opt_phi_state)
    return new_state, metrics


def make_scanned_steps(config: Config, num_steps: int, devices: Optional[Sequence[jax.Device]] = None,
                       donate: bool = True):
    """num_steps unlogged outer iterations in one compiled call (`lax.scan`): jitted (state, data) -> state,
    data (num_steps, n_critic, batch_size, *data_shape), the iterations' GLOBAL batches stacked; the same
    updates as num_steps calls of make_train_step(config, indicators=False), which return no metrics here."""
    mesh, model = make_mesh(devices), build_model(config)
    replicated, stacked = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, None, "data"))

    def body(state, data):
        return outer_iteration(model, state, data, mesh=mesh, indicators=False)[0], None

    return jax.jit(lambda state, data: jax.lax.scan(body, state, data)[0], in_shardings=(replicated, stacked),
                   out_shardings=replicated, donate_argnums=(0,) if donate else ())


def make_train_step(config: Config, devices: Optional[Sequence[jax.Device]] = None, donate: bool = True,
                    indicators: bool = True, batched_critic_flow: Optional[bool] = None):
    """Compile `outer_iteration` data-parallel over `devices` (default: all devices of all processes).

    Returns step(state, data) -> (state, metrics); data: (n_critic, batch_size, *data_shape) float32, the
    GLOBAL batch, identical on every process (e.g. `data.sample_batches`, a pure function of (seed, step));
    each device receives its slice of the batch axis. `step.jitted` is the underlying jitted function.
    indicators, batched_critic_flow: as in `outer_iteration` (None: batched unless `devices` are CPUs).
    """
    mesh = make_mesh(devices)
    n_dev = mesh.devices.size
    if config.batch_size % n_dev:
        raise ConfigError(f"batch_size={config.batch_size} must be divisible by the number of devices ({n_dev})")
    replicated, batch = NamedSharding(mesh, P()), data_sharding(mesh)

    jitted = jax.jit(partial(outer_iteration, build_model(config), mesh=mesh, indicators=indicators,
                             batched_critic_flow=batched_critic_flow), in_shardings=(replicated, batch),
                     out_shardings=(replicated, replicated), donate_argnums=(0,) if donate else ())

    def step(state: TrainState, data) -> tuple[TrainState, dict]:
        # global, replicated inputs: one compilation whatever the caller passes, and valid across processes
        state = jax.tree_util.tree_map(lambda a: global_array(a, replicated), state)
        return jitted(state, global_array(data, batch))

    step.jitted = jitted
    return step
