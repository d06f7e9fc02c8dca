"""Reflow of a trained flow (rectification, Liu et al. 2022): regress its field on the straight lines between
each x0 and the point x1 = Φ_T(x0) that the trained flow carries it to.

    x_t = x0 + (t/T)(x1 − x0),   t ~ U[0, T],   loss = mean_i |v(x_t^i, t_i) − (x1^i − x0^i)/T|²

This is conditional flow matching (`flow_matching.cfm_loss`) with the flow's own deterministic coupling
instead of independent or minibatch-OT pairs. The coupling keeps the trained flow's terminal law ρ_T, and
where the field fits the pairs, one Euler step x0 + T v(x0, 0) lands on x1.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from w12_jax import flow_matching
from w12_jax.config import Config
from w12_jax.flow import velocity
from w12_jax.networks import make_flow_network
from w12_jax.reference import sample_reference
from w12_jax.sample import sample

REFLOW_KEY = 0x7EF1  # folded into PRNGKey(seed) for the pairs' x0: never the x0 of `sample.generate`


def reflow_pairs(config: Config, params, n: int, *, seed: int = 1, chunk: int = 1000, **solver_kwargs):
    """(x0, x1) numpy arrays (n, *shape): x0 ~ rho_0 from fold_in(PRNGKey(seed), REFLOW_KEY) and x1 the
    trained flow's solve of it (`sample` with solver_kwargs, default Euler with the training step dt),
    `chunk` samples per call."""
    if n < 1 or chunk < 1:
        raise ValueError(f"n and chunk must be >= 1, got n={n}, chunk={chunk}")
    solver_kwargs = solver_kwargs or {"solver": "euler", "dt": config.dt}
    x0 = np.asarray(sample_reference(config, jax.random.fold_in(jax.random.PRNGKey(seed), REFLOW_KEY), (n,)))
    network = make_flow_network(config)
    x1 = np.concatenate([np.asarray(sample(network, params, x0[i:i + chunk], T=config.T, lam=config.lam,
                                           **solver_kwargs).x_T) for i in range(0, n, chunk)])
    return x0, x1


def make_reflow_step(config: Config, optimizer: optax.GradientTransformation, batch_size: int):
    """jit-ed (params, opt_state, key, x0, x1) -> (params, opt_state, loss): one Adam step of the reflow loss
    on batch_size pairs drawn uniformly (with replacement) from (x0, x1), t ~ U[0, T], both from key."""
    network, T = make_flow_network(config), config.T

    @jax.jit
    def step(params, opt_state, key, x0, x1):
        k_idx, k_t = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, x0.shape[0])
        t = jax.random.uniform(k_t, (batch_size,), x0.dtype, 0.0, T)

        def loss_fn(p):
            return flow_matching.cfm_loss(velocity(network, p, config.lam), x0[idx], x1[idx], t, T)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def reflow(config: Config, params, x0, x1, *, iterations: int, key: jax.Array, lr: float = 5e-4,
           batch_size: Optional[int] = None, progress: bool = False):
    """(params, losses): `iterations` Adam(0.9, 0.999) steps of the reflow loss from `params` on the pairs
    (x0, x1); losses (iterations,) is the loss of every step. batch_size defaults to config.batch_size."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if x0.shape != x1.shape or x0.shape[1:] != tuple(config.data_shape):
        raise ValueError(f"pairs must both have shape (n, {', '.join(map(str, config.data_shape))}), "
                         f"got {x0.shape} and {x1.shape}")
    optimizer = optax.adam(lr, b1=0.9, b2=0.999)
    step = make_reflow_step(config, optimizer, batch_size or config.batch_size)
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    opt_state = optimizer.init(params)
    losses = []
    from tqdm import tqdm

    for i in tqdm(range(iterations), desc="reflow", disable=not progress):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), x0, x1)
        losses.append(loss)
    return params, np.asarray(jnp.stack(losses))
