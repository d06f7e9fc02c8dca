"""The data-parallel outer iteration on 4 simulated CPU devices equals the single-device one."""

import dataclasses

import jax
import numpy as np
import pytest

from w12_jax.config import Config, ConfigError
from w12_jax.train import INDICATOR_METRICS, METRICS, init_train_state, make_train_step

CFG = Config(batch_size=16, n_critic=2, conv_channels=(4, 4), potential_hidden=(32, 32),
             discriminator_hidden=(32, 32), gp_weight=10.0, L=0.01)


def relative_error(a, b):
    """|a - b| / |b| over all leaves of two pytrees taken as one vector."""
    a, b = (np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree_util.tree_leaves(t)]) for t in (a, b))
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("case", [(True, True), (False, False)], ids=["w1w2", "none"])
def test_four_devices_match_one(case):
    assert jax.device_count() == 4, "conftest must simulate 4 CPU devices"
    cfg = dataclasses.replace(CFG, use_w1=case[0], use_w2=case[1])
    data = np.random.default_rng(0).uniform(0, 1, (cfg.n_critic, cfg.batch_size) + cfg.data_shape)
    # float64 so that only a real difference (e.g. a per-device logsumexp) could exceed 1e-5, not rounding
    with jax.enable_x64(True):
        state = jax.tree_util.tree_map(
            lambda a: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a, init_train_state(cfg))
        s1, m1 = make_train_step(cfg, devices=jax.devices()[:1], donate=False)(state, data)
        s4, m4 = make_train_step(cfg, devices=jax.devices(), donate=False)(state, data)
    assert s1.potential_params["params"]["ScalarMLP_0"]["Dense_0"]["kernel"].dtype == np.float64
    assert set(m1) == set(METRICS)
    for k in METRICS:
        assert relative_error(m4[k], m1[k]) <= 1e-5, (k, m4[k], m1[k])
    if cfg.use_w1:
        assert float(m1["gradient_penalty"]) > 0  # L small: the penalty is active and part of the gradient
    # Adam's first moment is (1 - b1) Σ b1^j g_j: the averaged gradients of every update
    for tree in ("potential_opt_state", "discriminator_opt_state"):
        assert relative_error(getattr(s4, tree)[0].mu, getattr(s1, tree)[0].mu) <= 1e-5, tree
    assert relative_error((s4.potential_params, s4.discriminator_params),
                          (s1.potential_params, s1.discriminator_params)) <= 1e-5
    # replicated result: every device holds bit-identical parameters
    for leaf in jax.tree_util.tree_leaves((s4.potential_params, s4.discriminator_params)):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 4 and all(np.array_equal(shards[0], s) for s in shards[1:])


def test_batch_must_divide_device_count():
    with pytest.raises(ConfigError, match="divisible by the number of devices"):
        make_train_step(dataclasses.replace(CFG, batch_size=18), devices=jax.devices())


def test_step_variants_give_the_same_parameters():
    """n_D flows of B particles vs one of n_D·B, and indicators off: the same update (float64)."""
    data = np.random.default_rng(1).uniform(0, 1, (CFG.n_critic, CFG.batch_size) + CFG.data_shape)
    with jax.enable_x64(True):
        state = jax.tree_util.tree_map(
            lambda a: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a, init_train_state(CFG))
        runs = {name: make_train_step(CFG, devices=jax.devices()[:1], donate=False, **options)(state, data)
                for name, options in [("chunked", dict(batched_critic_flow=False)),
                                      ("batched", dict(batched_critic_flow=True)),
                                      ("lean", dict(indicators=False))]}
    (s_ref, m_ref) = runs["chunked"]
    assert set(runs["lean"][1]) == set(METRICS) - set(INDICATOR_METRICS)
    for name, (s, m) in runs.items():
        assert relative_error((s.potential_params, s.discriminator_params),
                              (s_ref.potential_params, s_ref.discriminator_params)) <= 1e-12, name
        for k in m:
            assert relative_error(m[k], m_ref[k]) <= 1e-12, (name, k)
    # and the step did move the parameters, so the comparison is not vacuous
    assert relative_error(s_ref.potential_params, state.potential_params) > 1e-4
