"""Straightness penalties (design.md §11): zero on the closed-form MFG solutions (design.md §5), positive on
the flipped-sign HJ solution, and differentiable as the potential's loss needs (gradients match finite
differences)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w12_jax import mfg
from w12_jax.config import PENALTY_WEIGHTS, Config, ConfigError, override
from w12_jax.flow import euler_flow, potential_derivatives, scalar_potential
from w12_jax.networks import make_discriminator, make_potential
from w12_jax.train import build_model, potential_loss, straightness_penalties

T, K, LAM = 2.0, 8, 0.5
H = T / K
A = jnp.array([0.7, -1.3, 0.4])
S_T = 1.5
S_FLIP = T / LAM + 1.5  # s(t) = S_FLIP − (T − t)/lam stays > 0 on [0, T]


def affine(x, t):
    """U = a·x + |a|² t / (2 lam) + c: constant velocity −a/lam."""
    return jnp.dot(A, x) + jnp.dot(A, A) * t / (2 * LAM) + 3.0


def quadratic(x, t):
    """U = |x|² / (2 s(t)), s(t) = s_T + (T − t)/lam: straight, contracting, constant speed."""
    return jnp.sum(x**2) / (2 * (S_T + (T - t) / LAM))


def quadratic_flipped(x, t):
    """U = |x|² / (2 s(t)), s(t) = s_T − (T − t)/lam solves ∂tU + |∇U|²/(2 lam) = 0 (the authors' sign):
    radial, so straight, but its speed falls like 1/s(t)²."""
    return jnp.sum(x**2) / (2 * (S_FLIP - (T - t) / LAM))


def penalties(u, x0, phi_grad=None, key=jax.random.PRNGKey(3)):
    """(R_HJ, R_V, R_C, R_T) of the Euler flow of u from x0; R_T against ∇phi = phi_grad (default ∇U(·, T))."""
    flow = euler_flow(u, x0, T, K, LAM)
    grad_T, _ = potential_derivatives(u, flow.x_T, T)
    t = jax.random.uniform(key, (x0.shape[0],), minval=0.0, maxval=T)
    grad_chord = jax.vmap(jax.grad(u))(mfg.chord_points(x0, flow.x_T, t, T), t)
    grad_phi = grad_T if phi_grad is None else jax.vmap(phi_grad)(flow.x_T)
    return (float(mfg.hj_residual(flow.dt_u, flow.grad_u, H, LAM)),
            float(mfg.velocity_consistency(flow.grad_u, grad_T, H)),
            float(mfg.chord_consistency(grad_chord, x0, flow.x_T, T, LAM)),
            float(mfg.terminal_residual(grad_T, grad_phi)))


@pytest.fixture
def x0():
    return jax.random.normal(jax.random.PRNGKey(0), (128, 3))


@pytest.mark.parametrize("u", [affine, quadratic], ids=["affine", "quadratic"])
def test_penalties_vanish_on_closed_form_solutions(u, x0):
    assert max(penalties(u, x0)) < 1e-6


def test_penalties_detect_the_flipped_sign_solution(x0):
    hj, vel, chord, _ = penalties(quadratic_flipped, x0)
    # the paths are radial (straight) but slow down: hj > 0, and both speed penalties are well above 1e-6
    assert hj > 0.1 and vel > 1e-3 and chord > 1e-3, (hj, vel, chord)


def test_velocity_consistency_and_terminal_residual_closed_forms(x0):
    # two Euler steps, h = 1: g0 = a, g1 = b, g(x_K) = b  ->  R_V = |b − a|² / h
    a, b = jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 3.0, 2.0])
    grad_u = jnp.broadcast_to(jnp.stack([a, b])[:, None], (2, 5, 3))
    assert float(mfg.velocity_consistency(grad_u, grad_u[-1], 1.0)) == pytest.approx(10.0)
    assert float(mfg.velocity_consistency(grad_u, grad_u[-1], 0.5)) == pytest.approx(20.0)
    # terminal condition U(·, T) = phi holds up to the gradient a − a' of an affine phi: R_T = |a − a'|
    a2 = A + jnp.array([0.3, 0.0, -0.4])
    assert penalties(affine, x0, jax.grad(lambda x: jnp.dot(a2, x)))[3] == pytest.approx(0.5, rel=1e-5)


def test_chord_consistency_is_the_kinetic_energy_of_the_velocity_gap():
    # v = −∇U/lam = c constant; the chord 0 → x_T = T·w has velocity w: R_C = lam T ½|c − w|²
    x0, w, c = jnp.zeros((4, 2)), jnp.array([1.0, 2.0]), jnp.array([0.0, -1.0])
    x_T = jnp.broadcast_to(T * w, (4, 2))
    grad_chord = jnp.broadcast_to(-LAM * c, (4, 2))
    assert float(mfg.chord_consistency(grad_chord, x0, x_T, T, LAM)) == pytest.approx(LAM * T * 0.5 * 10.0)
    np.testing.assert_allclose(mfg.chord_points(x0, x_T, jnp.array([0.0, 0.5, 1.0, 2.0]), T)[:, 1],
                               [0.0, 1.0, 2.0, 4.0])


SMALL = Config(dataset="moons", data_shape=(3,), architecture="mlp", reference="gaussian", T=1.0, dt=0.25,
               lam=0.5, potential_hidden=(8, 8), potential_activation="tanh", discriminator_hidden=(8,),
               discriminator_activation="tanh", batch_size=16)


@pytest.mark.parametrize("name", PENALTY_WEIGHTS)
def test_penalty_gradient_matches_finite_difference(name):
    with jax.enable_x64(True):
        config = dataclasses.replace(SMALL, **{name: 1.0})
        x = jnp.zeros((1, 3), jnp.float64)
        pu = make_potential(config).init(jax.random.PRNGKey(1), x, jnp.zeros((1,)))
        pphi = make_discriminator(config).init(jax.random.PRNGKey(2), x)
        pu, pphi = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), (pu, pphi))
        x0 = jax.random.normal(jax.random.PRNGKey(4), (16, 3), jnp.float64)
        key = jax.random.PRNGKey(5)

        @jax.jit
        def penalty(params):
            u = scalar_potential(make_potential(config), params)
            # the chord penalty holds its chords fixed (stop_gradient): differentiate it with them fixed
            flow = euler_flow(scalar_potential(make_potential(config), pu) if name == "chord_weight" else u,
                              x0, config.T, config.num_steps, config.lam)
            return straightness_penalties(build_model(config), u, pphi, x0, flow, key)[name]

        direction = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.PRNGKey(6), a.shape, a.dtype), pu)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(jax.jit(jax.grad(penalty))(pu)),
                                                       jax.tree_util.tree_leaves(direction)))
        eps = 1e-6
        shifted = [jax.tree_util.tree_map(lambda p, d: p + s * eps * d, pu, direction) for s in (1, -1)]
        numeric = (penalty(shifted[0]) - penalty(shifted[1])) / (2 * eps)
        assert float(penalty(pu)) > 1e-4
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)
        # and the potential loss carries it with its weight: G(w = 3) − G(w = 0) = 3 · penalty
        heavier = dataclasses.replace(config, **{name: 3.0})
        bare = dataclasses.replace(config, **{name: 0.0})
        diff = (potential_loss(build_model(heavier), pu, pphi, x0, key)[0]
                - potential_loss(build_model(bare), pu, pphi, x0, key)[0])
        assert float(diff) == pytest.approx(3 * float(penalty(pu)), rel=1e-9)


@pytest.mark.parametrize("name", PENALTY_WEIGHTS)
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_penalty_weights_are_validated(name, value):
    with pytest.raises(ConfigError) as e:
        override(Config(), {name: value})
    assert f"{name} must be a finite number >= 0" in str(e.value) and "\n" not in str(e.value)


def test_cfm_weight_adds_beta_times_the_flow_matching_loss_of_the_same_network():
    """design.md §12: G(β) − G(0) = β · mean |v(x_t, t) − (y − x0)/T|² on the given pairs, v = −∇U/lam;
    and the OT-CFM pairs of the step are a permutation of the data batch."""
    from w12_jax.flow import velocity
    from w12_jax.flow_matching import cfm_loss, ot_permutation

    with jax.enable_x64(True):
        x = jnp.zeros((1, 3), jnp.float64)
        pu = make_potential(SMALL).init(jax.random.PRNGKey(1), x, jnp.zeros((1,)))
        pphi = make_discriminator(SMALL).init(jax.random.PRNGKey(2), x)
        x0 = jax.random.normal(jax.random.PRNGKey(4), (16, 3), jnp.float64)
        data = jax.random.normal(jax.random.PRNGKey(5), (16, 3), jnp.float64) + 2.0
        y = data[ot_permutation(x0, data)]
        t = jax.random.uniform(jax.random.PRNGKey(6), (16,), jnp.float64, 0.0, SMALL.T)
        beta = 2.5
        with_cfm = potential_loss(build_model(dataclasses.replace(SMALL, cfm_weight=beta)), pu, pphi, x0,
                                  cfm_pairs=(y, t))
        without = potential_loss(build_model(SMALL), pu, pphi, x0)
        direct, _ = cfm_loss(velocity(make_potential(SMALL), pu, SMALL.lam), x0, y, t, SMALL.T)
        assert float(direct) > 1e-3 and without[1][3] is None
        assert float(with_cfm[0] - without[0]) == pytest.approx(beta * float(direct), rel=1e-10)
        np.testing.assert_array_equal(np.sort(np.asarray(y), axis=0), np.sort(np.asarray(data), axis=0))


def test_direct_field_flow_and_penalties_match_the_potential_they_stand_for():
    """design.md §12: with v = −∇U/lam given as a direct field, the Euler flow, ∇U(x_K, T) and every penalty
    but HJ (which needs ∂tU) are those of the potential U; its Jacobian is symmetric (asymmetry 0), while a
    linear field v = Ax has asymmetry mean|uᵀ(A − Aᵀ)w| on the same probes."""
    from w12_jax.flow import euler_velocity_flow, velocity
    from w12_jax.penalties import PENALTIES, PenaltyInputs

    with jax.enable_x64(True):
        cfg = dataclasses.replace(SMALL, terminal_weight=1.0, velocity_weight=1.0, chord_weight=1.0)
        x = jnp.zeros((1, 3), jnp.float64)
        pu = make_potential(cfg).init(jax.random.PRNGKey(1), x, jnp.zeros((1,)))
        pphi = make_discriminator(cfg).init(jax.random.PRNGKey(2), x)
        x0 = jax.random.normal(jax.random.PRNGKey(4), (16, 3), jnp.float64)
        u = scalar_potential(make_potential(cfg), pu)
        v = velocity(make_potential(cfg), pu, cfg.lam)
        by_u = euler_flow(u, x0, cfg.T, cfg.num_steps, cfg.lam)
        by_v = euler_velocity_flow(v, x0, cfg.T, cfg.num_steps, cfg.lam)
        np.testing.assert_allclose(by_v.x_T, by_u.x_T, rtol=1e-12)
        np.testing.assert_allclose(by_v.grad_u, by_u.grad_u, rtol=1e-12)
        model = build_model(cfg)
        critic = lambda z: model.divergence.output(model.discriminator.apply(pphi, z[None]))[0]  # noqa: E731
        key = jax.random.PRNGKey(7)
        args = (x0, critic, key, cfg.T, cfg.dt, cfg.lam)
        for name in ("terminal", "velocity", "chord"):
            a = PENALTIES[name].value(PenaltyInputs(u, by_u, *args))
            b = PENALTIES[name].value(PenaltyInputs(None, by_v, *args, v=v))
            assert float(a) > 1e-6 and float(b) == pytest.approx(float(a), rel=1e-10), name
        probe = jax.random.PRNGKey(8)
        assert float(mfg.jacobian_asymmetry(v, x0, 0.3, probe)) < 1e-10
        A = jax.random.normal(jax.random.PRNGKey(9), (3, 3), jnp.float64)
        ku, kw = jax.random.split(probe)
        pu_, pw_ = jax.random.normal(ku, x0.shape, x0.dtype), jax.random.normal(kw, x0.shape, x0.dtype)
        expected = jnp.mean(jnp.abs(jnp.einsum("bi,ij,bj->b", pu_, A - A.T, pw_)))
        linear = mfg.jacobian_asymmetry(lambda z, t: z @ A.T, x0, 0.3, probe)
        assert float(expected) > 0.1 and float(linear) == pytest.approx(float(expected), rel=1e-10)
