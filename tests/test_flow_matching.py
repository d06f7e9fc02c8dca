"""Flow matching (design.md §11): exact OT pairs, the I-CFM minimiser for Gaussians, the data-parallel step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import linear_sum_assignment

from w12_jax.config import Config, ConfigError, override
from w12_jax.flow import velocity
from w12_jax.flow_matching import cfm_loss, interpolate, ot_permutation
from w12_jax.mfg import straight_line_bound
from w12_jax.networks import VelocityField, make_flow_network
from w12_jax.presets import get_preset
from w12_jax.reference import sample_reference
from w12_jax.sample import sample
from w12_jax.train import CFM_METRICS, init_train_state, make_train_step


@pytest.mark.parametrize("n, shape", [(6, (3,)), (25, (2,)), (40, (4, 4, 1))])
def test_ot_pairing_is_the_hungarian_assignment(n, shape):
    rng = np.random.default_rng(n)
    x0, y = rng.normal(size=(n,) + shape), rng.uniform(size=(n,) + shape)
    perm = np.asarray(jax.jit(ot_permutation)(x0, y))
    cost = ((x0.reshape(n, 1, -1) - y.reshape(1, n, -1)) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_array_equal(perm[rows], cols)  # continuous data: the optimal permutation is unique
    assert cost[np.arange(n), perm].sum() < cost[np.arange(n), np.arange(n)].sum()  # not the identity


def test_icfm_minimiser_for_two_gaussians_is_recovered_by_a_quadratic_potential():
    """x0 ~ N(0, s0² I), y ~ N(m, s1² I) independent: (u, x_t) jointly Gaussian, so at τ = t/T
    E[(y − x0)/T | x_t = x] = m/T + a(τ)(x − τ m),
    a(τ) = (τ s1² − (1 − τ) s0²) / (T((1 − τ)² s0² + τ² s1²)).
    U(x, t_j) = −lam(a_j |x|²/2 + b_j·x) trained by `cfm_loss` at three times recovers a_j and b_j."""
    s0, s1, T, lam, d, n = 1.0, 0.5, 2.0, 0.1, 2, 60_000
    m = jnp.array([1.5, -1.0])
    taus = jnp.array([0.2, 0.5, 0.8])
    k0, k1, kt = jax.random.split(jax.random.PRNGKey(0), 3)
    x0 = s0 * jax.random.normal(k0, (n, d))
    y = m[None] + s1 * jax.random.normal(k1, (n, d))
    j = jax.random.randint(kt, (n,), 0, 3)
    t = taus[j] * T

    def loss(params):
        def u(x, tj):  # U at one sample; the time enters through its index j
            a, b = params["a"][tj], params["b"][tj]
            return -lam * (0.5 * a * jnp.sum(x**2) + jnp.dot(b, x))

        v = lambda x, _: -jax.vmap(jax.grad(u))(x, j) / lam  # noqa: E731
        return cfm_loss(v, x0, y, t, T)[0]

    params = {"a": jnp.zeros(3), "b": jnp.zeros((3, d))}
    opt = optax.adam(optax.exponential_decay(0.05, 300, 0.3))
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state

    for _ in range(1500):
        params, state = step(params, state)
    a = (taus * s1**2 - (1 - taus) * s0**2) / (T * ((1 - taus) ** 2 * s0**2 + taus**2 * s1**2))
    b = m[None] / T - (a * taus)[:, None] * m[None]
    np.testing.assert_allclose(params["a"], a, atol=1e-2)
    np.testing.assert_allclose(params["b"], b, atol=1e-2)
    assert float(jnp.max(jnp.abs(a))) > 0.1  # the field is not constant: a real test of the affine part


def test_interpolant_ends_at_the_pair_and_moves_at_the_target_speed():
    x0, y = np.random.default_rng(0).normal(size=(2, 5, 3))
    t = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    x_t, target = interpolate(x0, y, t, 2.0)
    np.testing.assert_allclose(x_t[0], x0[0], atol=1e-12)
    np.testing.assert_allclose(x_t[-1], y[-1], atol=1e-12)
    np.testing.assert_allclose(x_t, x0 + t[:, None] * target, atol=1e-12)


CFM = Config(dataset="moons", data_shape=(3,), embed_dim=3, architecture="mlp", reference="gaussian",
             potential_hidden=(16, 16), potential_activation="tanh", discriminator_hidden=(8,), batch_size=16,
             n_critic=1, T=1.0, dt=0.25, lam=0.5, objective="otcfm")


def test_flow_matching_step_on_four_devices_matches_one_and_pairs_by_ot():
    cfg = CFM
    data = np.random.default_rng(0).normal(size=(1, cfg.batch_size, 3))
    with jax.enable_x64(True):
        state = jax.tree_util.tree_map(
            lambda a: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a, init_train_state(cfg))
        s1, m1 = make_train_step(cfg, devices=jax.devices()[:1], donate=False)(state, data)
        s4, m4 = make_train_step(cfg, devices=jax.devices(), donate=False)(state, data)
    assert set(m1) == set(CFM_METRICS)
    for k in CFM_METRICS:
        np.testing.assert_allclose(m4[k], m1[k], rtol=1e-9)
    for a, b in zip(jax.tree_util.tree_leaves(s4.potential_params), jax.tree_util.tree_leaves(s1.potential_params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    unchanged = [path for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s1.potential_params),
                                                jax.tree_util.tree_leaves(state.potential_params))
                 if np.array_equal(a, b)]
    # one Adam step moves every parameter but U's output bias, a constant that ∇U does not see
    assert [jax.tree_util.keystr(p) for p in unchanged] == ["['params']['ScalarMLP_0']['Dense_2']['bias']"]
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(s1.discriminator_params)[0],
                                  jax.tree_util.tree_leaves(state.discriminator_params)[0])  # no critic
    # the step paired x0 (drawn from key_step) with the OT permutation of the batch, not with the batch order
    with jax.enable_x64(True):
        x0 = sample_reference(cfg, jax.random.split(jax.random.fold_in(state.key, 0))[0], (cfg.batch_size,))
        y = jnp.asarray(data[-1])
        ot_bound = straight_line_bound(x0, y[ot_permutation(x0, y)], cfg.T)
        np.testing.assert_allclose(m1["straight_line_bound"], ot_bound, rtol=1e-9)
        assert float(ot_bound) < float(straight_line_bound(x0, y, cfg.T))


def test_direct_velocity_field_is_sampled_by_its_output():
    cfg = dataclasses.replace(CFM, velocity_field="direct")
    net = make_flow_network(cfg)
    assert isinstance(net, VelocityField)
    params = init_train_state(cfg).potential_params
    x0 = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    x = jnp.asarray(x0)
    for k in range(4):  # Euler by hand with the network's output as the velocity
        x = x + 0.25 * net.apply(params, x, jnp.full((7,), 0.25 * k))
    res = sample(net, params, x0, T=1.0, lam=cfg.lam, num_steps=4)
    np.testing.assert_allclose(res.x_T, x, rtol=1e-5, atol=1e-6)
    v = velocity(net, params, cfg.lam)
    np.testing.assert_allclose(v(x, 0.5), v(x, jnp.full((7,), 0.5)), rtol=1e-6)


def test_flow_matching_presets_and_config_errors():
    for name, objective in [("mnist5k-cfm", "icfm"), ("mnist5k-otcfm", "otcfm"), ("pinwheel12d-otcfm", "otcfm")]:
        cfg = get_preset(name)
        assert cfg.objective == objective and cfg.n_critic == 1 and cfg.method == objective
    main = get_preset("mnist5k")
    cfm = get_preset("mnist5k-cfm")
    assert (cfm.architecture, cfm.conv_channels, cfm.potential_hidden, cfm.batch_size) == (
        main.architecture, main.conv_channels, main.potential_hidden, main.batch_size)  # the same network
    with pytest.raises(ConfigError, match="hj_weight needs the potential U"):
        override(main, {"velocity_field": "direct", "hj_weight": 1})
    with pytest.raises(ConfigError, match="choose one of mfg, icfm, otcfm"):
        override(main, {"objective": "rectified"})
