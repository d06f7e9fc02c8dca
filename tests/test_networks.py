"""The space-to-depth conv layer computes the same function as nn.Conv + nn.max_pool (or nn.avg_pool), with
ReLU or a smooth activation, to every derivative the training uses: values, ∇x (the flow's velocity) and
∂/∂w of a function of ∇x (the U and GP updates)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w12_jax.networks import ACTIVATION_FNS, ConvFeatures, ConvPool, block_kernel_selector


class PlainConvFeatures(nn.Module):
    """The reference: Flax's own conv and max-pool layers, named as ConvFeatures names them."""

    channels: tuple
    kernel: int
    activation: str = "relu"
    pool: str = "max"

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.Conv(c, (self.kernel, self.kernel), padding="SAME", use_bias=False)(x)
            pool = nn.max_pool if self.pool == "max" else nn.avg_pool
            x = pool(ACTIVATION_FNS[self.activation](x), (2, 2), strides=(2, 2), padding="SAME")
        return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("kernel,channels,size,activation,pool",
                         [(7, 1, 28, "relu", "max"), (5, 3, 8, "relu", "max"), (3, 2, 6, "relu", "max"),
                          (9, 1, 10, "relu", "max"), (7, 1, 28, "silu", "max"), (7, 1, 28, "silu", "avg")])
def test_space_to_depth_matches_flax_conv_and_pool_to_second_order(kernel, channels, size, activation, pool):
    with jax.enable_x64(True):
        x = jax.random.uniform(jax.random.PRNGKey(0), (3, size, size, channels), jnp.float64)
        fast = ConvFeatures((4, 4), kernel, activation=activation, pool=pool)
        plain = PlainConvFeatures((4, 4), kernel, activation, pool)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), plain.init(jax.random.PRNGKey(1), x))
        fast_params = fast.init(jax.random.PRNGKey(1), x)
        assert jax.tree_util.tree_structure(fast_params) == jax.tree_util.tree_structure(params)
        v = jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)

        def derivatives(module):
            f = lambda p, x: jnp.sum(jnp.tanh(module.apply(p, x)))
            grad_x = lambda p: jax.grad(f, argnums=1)(p, x)
            return (module.apply(params, x), grad_x(params),
                    jax.grad(lambda p: jnp.sum(grad_x(p) * v))(params))

        for a, b in zip(jax.tree_util.tree_leaves(derivatives(fast)), jax.tree_util.tree_leaves(derivatives(plain))):
            assert float(jnp.max(jnp.abs(b))) > 1e-3  # not a vacuous comparison
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_block_kernel_selector_places_every_tap_once_per_output_phase():
    for k in (3, 5, 7, 9):
        sel = block_kernel_selector(k)
        assert sel.shape[0] == 2 * ((k // 2 + 1) // 2) + 1
        # for each output phase (r, s), each of the k×k taps appears exactly once
        np.testing.assert_array_equal(sel.sum(axis=(0, 1, 2, 3)), np.ones((2, 2, k, k)))


def test_odd_sizes_fall_back_to_the_plain_layer():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 7, 7, 1))
    layer = ConvPool(3, 5)
    params = layer.init(jax.random.PRNGKey(1), x)
    w = params["params"]["kernel"]
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2), padding="SAME")
    assert layer.apply(params, x).shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(layer.apply(params, x), expected)


def test_discriminator_architecture_overrides_the_shared_one():
    from w12_jax.config import Config, ConfigError
    from w12_jax.networks import make_discriminator, make_potential

    cfg = Config(architecture="mlp", discriminator_architecture="conv", conv_channels=(4,))
    x = jnp.zeros((2, 28, 28, 1))
    phi_params = make_discriminator(cfg).init(jax.random.PRNGKey(0), x)["params"]
    u_params = make_potential(cfg).init(jax.random.PRNGKey(0), x, jnp.zeros(2))["params"]
    assert phi_params["ConvFeatures_0"]["Conv_0"]["kernel"].shape == (7, 7, 1, 4)
    assert "ConvFeatures_0" not in u_params
    assert u_params["ScalarMLP_0"]["Dense_0"]["kernel"].shape[0] == 28 * 28 + 1  # pixels ⊕ t
    with pytest.raises(ConfigError, match="discriminator_architecture='conv' needs image data"):
        Config(data_shape=(2,), architecture="mlp", discriminator_architecture="conv")
    own = Config(conv_channels=(4,), potential_conv_channels=(6, 3))  # U's own conv widths, phi keeps (4,)
    phi_params = make_discriminator(own).init(jax.random.PRNGKey(0), x)["params"]
    u_params = make_potential(own).init(jax.random.PRNGKey(0), x, jnp.zeros(2))["params"]
    assert phi_params["ConvFeatures_0"]["Conv_0"]["kernel"].shape == (7, 7, 1, 4)
    assert [u_params["ConvFeatures_0"][f"Conv_{i}"]["kernel"].shape for i in (0, 1)] == [(7, 7, 1, 6), (7, 7, 6, 3)]
    assert u_params["ScalarMLP_0"]["Dense_0"]["kernel"].shape[0] == 7 * 7 * 3 + 1  # 28 → 14 → 7, 3 ch ⊕ t


@pytest.mark.parametrize("form", ["scalar", "pixel"])
@pytest.mark.parametrize("field", ["potential", "direct"])
def test_identity_path_adds_a_t_x_to_the_velocity(form, field):
    """design.md §13: with the identity path, −lam·v (potential) or v (direct) gains exactly a(t)·x, where
    a(t) is the output of IdentityCoefficient; at initialisation a(t) = 0, so the network is unchanged."""
    import dataclasses

    from w12_jax.config import Config
    from w12_jax.flow import velocity
    from w12_jax.networks import IdentityCoefficient, make_flow_network

    cfg = dataclasses.replace(Config(), data_shape=(4,), architecture="mlp", potential_hidden=(8,),
                              velocity_field=field, objective="mfg" if field == "potential" else "otcfm")
    with_path = dataclasses.replace(cfg, identity_path=form)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    t = jnp.linspace(0.0, cfg.T, 5)
    params = make_flow_network(with_path).init(jax.random.PRNGKey(1), x, t)
    bare = {"params": {k: v for k, v in params["params"].items() if k != "IdentityCoefficient_0"}}
    scale = -cfg.lam if field == "potential" else 1.0  # v = −∇U/lam, so −lam·v = ∇U

    def gap(p):
        return scale * (velocity(make_flow_network(with_path), p, cfg.lam)(x, t)
                        - velocity(make_flow_network(cfg), bare, cfg.lam)(x, t))

    np.testing.assert_allclose(gap(params), 0.0, atol=1e-6)
    coefficient = params["params"]["IdentityCoefficient_0"]
    shifted = jax.tree_util.tree_map(lambda a: a, params)
    bias = jax.random.uniform(jax.random.PRNGKey(2), coefficient["Dense_1"]["bias"].shape, minval=0.5, maxval=1.5)
    shifted["params"]["IdentityCoefficient_0"]["Dense_1"]["bias"] = bias
    a = IdentityCoefficient(form, 4).apply({"params": shifted["params"]["IdentityCoefficient_0"]}, t)
    assert a.shape == ((5, 1) if form == "scalar" else (5, 4))
    np.testing.assert_allclose(gap(shifted), a * x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field", ["potential", "direct"])
def test_endpoint_path_makes_one_euler_step_land_on_the_networks_prediction(field):
    """design.md §13, identity_path="endpoint": v(x, t) = (D(x, t) − x)/(T − t), so x0 + T·v(x0, 0) = D(x0, 0)
    whatever x0 is: for the direct field D is the head's output, for the potential D = −T∇N(x0, 0)/lam."""
    import dataclasses

    from w12_jax.config import Config
    from w12_jax.flow import velocity
    from w12_jax.networks import make_flow_network

    cfg = dataclasses.replace(Config(), data_shape=(4,), architecture="mlp", potential_hidden=(8,),
                              velocity_field=field, objective="mfg" if field == "potential" else "otcfm")
    with_path = dataclasses.replace(cfg, identity_path="endpoint")
    x0 = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = make_flow_network(with_path).init(jax.random.PRNGKey(1), x0, jnp.zeros((5,)))
    one_step = x0 + cfg.T * velocity(make_flow_network(with_path), params, cfg.lam)(x0, 0.0)
    bare = velocity(make_flow_network(cfg), params, cfg.lam)(x0, 0.0)  # the same N without the path
    prediction = bare if field == "direct" else cfg.T * bare  # head output, or −T∇N/lam
    np.testing.assert_allclose(one_step, prediction, rtol=1e-5, atol=1e-5)
    # the path's pull towards D at time t is 1/(T − t), bounded at T/16 from the end
    t = jnp.array([0.0, 2.5, 4.9, 5.0, 1.0])
    n = velocity(make_flow_network(cfg), params, cfg.lam)(x0, t)  # N's velocity alone
    gap = velocity(make_flow_network(with_path), params, cfg.lam)(x0, t) - n
    tau = jnp.maximum(cfg.T - t, cfg.T / 16)[:, None]
    expected = n * (1 / tau - 1) - x0 / tau if field == "direct" else -x0 / tau  # (N − x)/τ − N, or −x/τ
    np.testing.assert_allclose(gap, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,raw_pixels,conv_activation",
                         [("relu", False, "relu"), ("silu", False, "relu"), ("silu", True, "relu"),
                          ("silu", False, "silu")])
def test_one_euler_step_reaches_the_pixels_only_through_the_hessian_of_u(activation, raw_pixels, conv_activation):
    """One Euler step x1 = x0 − T∇U(x0, 0)/lam has Jacobian I − (T/lam)∇²U. With ReLU everywhere U is
    piecewise linear, ∇²U = 0 a.e., and the step is locally a translation: x0's noise passes through it
    unchanged. With a smooth MLP on ReLU conv features ∇²U = J_fᵀ M J_f has rank ≤ F (the conv feature
    count); raw_pixels, or smooth conv layers with the paper's max-pool (∇²U gains Σ_f ∂U/∂f ∇²f between the
max's switches), let it exceed F (design.md §13)."""
    import dataclasses

    from w12_jax.config import Config
    from w12_jax.networks import make_potential

    cfg = dataclasses.replace(Config(), data_shape=(8, 8, 1), conv_channels=(2, 2), conv_kernel=3,
                              potential_hidden=(24, 24), potential_activation=activation, raw_pixels=raw_pixels,
                              potential_conv_activation=conv_activation)
    features = 2 * 2 * 2  # 8×8 → 4×4 → 2×2 positions, 2 channels
    net = make_potential(cfg)
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 8, 1), maxval=0.5)
    params = net.init(jax.random.PRNGKey(1), x0, jnp.zeros((1,)))

    def step(x):
        grad_u = jax.grad(lambda y: net.apply(params, y.reshape(x0.shape), jnp.zeros((1,)))[0])(x)
        return x - cfg.T * grad_u / cfg.lam

    jacobian = np.asarray(jax.jacfwd(step)(x0.reshape(-1)), np.float64)
    hessian_part = np.eye(64) - jacobian  # (T/lam)∇²U
    singular = np.linalg.svd(hessian_part, compute_uv=False)
    rank = int(np.sum(singular > 1e-4 * max(singular[0], 1e-12)))
    if activation == "relu":
        np.testing.assert_allclose(jacobian, np.eye(64), atol=1e-6)
    elif raw_pixels:
        assert features < rank <= 24, (rank, singular[:30])
    elif conv_activation != "relu":
        assert rank > features, (rank, singular[:30])
    else:
        assert 0 < rank <= features, (rank, singular[:10])


def test_film_starts_as_the_concat_network_and_scales_and_shifts_each_hidden_layer():
    """potential_time_conditioning="film": hidden pre-activations z_i become z_i ⊙ (1 + γ_i(t)) + β_i(t) with
    (γ_i, β_i) linear in the sin/cos features of t/T; zero-initialised, so U starts as the concat network."""
    import dataclasses

    from w12_jax.config import Config
    from w12_jax.networks import make_potential, time_embedding

    cfg = dataclasses.replace(Config(), data_shape=(3,), architecture="mlp", potential_hidden=(6,),
                              potential_activation="silu")
    film = dataclasses.replace(cfg, potential_time_conditioning="film")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    t = jnp.array([0.0, 1.0, 2.5, 5.0])
    params = make_potential(film).init(jax.random.PRNGKey(1), x, t)
    mlp = params["params"]["ScalarMLP_0"]
    bare = {"params": {"ScalarMLP_0": {k: v for k, v in mlp.items() if not k.startswith("FiLM")}}}
    np.testing.assert_allclose(make_potential(film).apply(params, x, t), make_potential(cfg).apply(bare, x, t),
                               rtol=1e-6)
    e = time_embedding(t, cfg.T)
    np.testing.assert_allclose(e[:, 0], jnp.sin(jnp.pi * t / cfg.T), atol=1e-6)  # k = 1, s = t/T
    w = jax.random.normal(jax.random.PRNGKey(2), mlp["FiLM_0"]["kernel"].shape)
    params["params"]["ScalarMLP_0"]["FiLM_0"]["kernel"] = w
    gamma, beta = jnp.split(e @ w, 2, axis=-1)
    dense0, head = mlp["Dense_0"], mlp["Dense_1"]
    z = jnp.concatenate([x, t[:, None]], axis=-1) @ dense0["kernel"] + dense0["bias"][None, :]
    expected = nn.silu(z * (1 + gamma) + beta) @ head["kernel"][:, 0] + head["bias"][0]  # (4,)
    np.testing.assert_allclose(make_potential(film).apply(params, x, t), expected, rtol=1e-5, atol=1e-6)
    from w12_jax.config import ConfigError
    with pytest.raises(ConfigError, match="the direct velocity field .* reads t by concatenation only"):
        dataclasses.replace(film, velocity_field="direct", objective="otcfm")


def test_heads_join_by_a_soft_maximum_whose_gradient_is_the_leading_heads():
    """potential_heads=M: U = τ log Σ_k exp(u_k/τ) over M linear heads u_k of the MLP, so max_k u_k ≤ U ≤
    max_k u_k + τ log M, and at small τ, ∇U is the gradient of the head that leads (a switch, not a blend)."""
    import dataclasses

    from w12_jax.config import Config, ConfigError
    from w12_jax.networks import make_potential

    heads, tau = 3, 1e-4
    cfg = dataclasses.replace(Config(), data_shape=(3,), architecture="mlp", potential_hidden=(6,),
                              potential_activation="silu", potential_heads=heads, potential_head_temperature=tau)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    t = jnp.linspace(0.0, 5.0, 8)
    params = make_potential(cfg).init(jax.random.PRNGKey(1), x, t)
    mlp = params["params"]["ScalarMLP_0"]

    def head_values(x):  # (B, M): u_k(x, t) from the parameters by hand
        z = nn.silu(jnp.concatenate([x, t[:, None]], axis=-1) @ mlp["Dense_0"]["kernel"]
                    + mlp["Dense_0"]["bias"][None, :])
        return z @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"][None, :]

    potential = make_potential(cfg)
    u, top = head_values(x), head_values(x).max(-1)
    assert mlp["Dense_1"]["kernel"].shape == (6, heads)
    U = potential.apply(params, x, t)
    assert jnp.all(U >= top - 1e-6) and jnp.all(U <= top + tau * np.log(heads) + 1e-6)
    gap = jnp.sort(u, axis=-1)[:, -1] - jnp.sort(u, axis=-1)[:, -2]
    assert jnp.all(gap > 20 * tau), gap  # each x has one clear leader at this τ
    grad_U = jax.grad(lambda x: potential.apply(params, x, t).sum())(x)
    leader = jnp.argmax(u, axis=-1)
    grad_leader = jax.grad(lambda x: jnp.take_along_axis(head_values(x), leader[:, None], -1).sum())(x)
    np.testing.assert_allclose(grad_U, grad_leader, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="one d-dimensional head"):
        dataclasses.replace(cfg, velocity_field="direct", objective="otcfm")


def test_atoms_run_straight_and_solve_hj_and_their_balance_is_the_mass_gap():
    """potential_atoms=K: −∇A/lam = Σ_k w_k (y_k − x)/s(t) runs straight to the atoms, so with the MLP's head at
    zero one Euler step of h = T lands where 5 and 20 steps do; A solves ∂tA − |∇A|²/(2 lam) = 0 at small τ;
    the balance loss's gradient in the costs δ is 1/K − E w_k, and the flow's loss gives δ none; `with_data_atoms`
    puts K distinct training rows in the parameters and their EMA."""
    import dataclasses

    from w12_jax.config import Config, ConfigError
    from w12_jax.flow import euler_flow, scalar_potential
    from w12_jax.mfg import hj_pointwise
    from w12_jax.networks import atom_balance, atom_costs, make_potential
    from w12_jax.train import init_train_state, with_data_atoms

    K, tau, d = 4, 1e-4, 6
    cfg = dataclasses.replace(Config(), data_shape=(d,), architecture="mlp", potential_hidden=(5,),
                              potential_activation="silu", potential_atoms=K, potential_atom_temperature=tau)
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (64, d), maxval=0.5)
    params = make_potential(cfg).init(jax.random.PRNGKey(1), x0, jnp.zeros(64))
    head = params["params"]["ScalarMLP_0"]["Dense_1"]
    params["params"]["ScalarMLP_0"]["Dense_1"] = jax.tree_util.tree_map(jnp.zeros_like, head)  # N ≡ 0
    atoms = params["params"]["AtomPotential_0"]
    params["params"]["AtomPotential_0"]["atoms"] = 3.0 * atoms["atoms"]  # atoms apart: each x0 has one nearest
    y, delta = params["params"]["AtomPotential_0"]["atoms"], atoms["costs"]
    u = scalar_potential(make_potential(cfg), params)
    ends = [euler_flow(u, x0, cfg.T, k, cfg.lam).x_T for k in (1, 5, 20)]
    w = jax.nn.softmax(-atom_costs(x0, jnp.zeros(64), y, delta, cfg.T, 0.25) / tau, axis=-1)
    clear = jnp.max(w, axis=-1) > 0.999  # away from the cells' boundaries
    assert float(jnp.mean(clear)) > 0.7
    np.testing.assert_allclose(ends[0], x0 + (w @ y - x0) / 1.01, atol=1e-5)  # s(0) = 1.01 T
    np.testing.assert_allclose(ends[1][clear], ends[0][clear], atol=1e-4)
    np.testing.assert_allclose(ends[2][clear], ends[0][clear], atol=1e-4)
    xs, ts = jnp.concatenate([x0, 0.5 * (x0 + ends[0])]), jnp.concatenate([jnp.full(64, 1.3), jnp.full(64, 2.5)])
    clear_xt = jnp.max(jax.nn.softmax(-atom_costs(xs, ts, y, delta, cfg.T, 0.25) / tau, axis=-1), axis=-1) > 0.999
    dt_u = jax.vmap(jax.grad(u, argnums=1))(xs, ts)
    grad_u = jax.vmap(jax.grad(u))(xs, ts)
    hj = jnp.abs(hj_pointwise(dt_u, grad_u, cfg.lam))[clear_xt]
    assert float(jnp.max(hj)) < 1e-3 * float(jnp.mean(jnp.abs(dt_u))), (hj.max(), jnp.abs(dt_u).mean())
    g_delta = jax.grad(atom_balance, argnums=2)(x0, y, delta, tau, cfg.T, 0.25)
    np.testing.assert_allclose(g_delta, 1.0 / K - jnp.mean(w, axis=0), atol=1e-6)
    g_flow = jax.grad(lambda p: make_potential(cfg).apply(p, x0, jnp.ones(64)).sum())(params)
    assert float(jnp.max(jnp.abs(g_flow["params"]["AtomPotential_0"]["costs"]))) == 0.0
    with pytest.raises(ConfigError, match="the direct velocity field .* has no U"):
        dataclasses.replace(cfg, velocity_field="direct", objective="otcfm")
    train = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (20, d)))
    state = with_data_atoms(init_train_state(cfg), train, jax.random.PRNGKey(3))
    for p in (state.potential_params, state.potential_ema):  # K distinct training rows, in both
        rows = [int(np.argmin(np.abs(train - a).sum(-1))) for a in np.asarray(p["params"]["AtomPotential_0"]["atoms"])]
        np.testing.assert_array_equal(np.asarray(p["params"]["AtomPotential_0"]["atoms"]), train[rows])
        assert len(set(rows)) == K
