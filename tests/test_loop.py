"""Checkpoints, resume and the training loop on a tiny low-dimensional run (4 simulated CPU devices)."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from w12_jax.checkpoint import Checkpointer, CheckpointError
from w12_jax.config import Config, ConfigError
from w12_jax.loop import train_and_evaluate
from w12_jax.train import METRICS, init_train_state, make_train_step

# design.md §6 low-dim structure, shrunk so that one iteration is milliseconds; batch divisible by 4 devices
TINY = Config(dataset="8gaussians", data_shape=(2,), architecture="mlp", reference="gaussian", T=1.0, dt=0.5,
              lam=0.5, potential_hidden=(8, 8), potential_activation="tanh", discriminator_hidden=(8,),
              batch_size=8, n_critic=2, iterations=6, num_samples=200, checkpoint_every=2, sample_every=100,
              log_every=1, eval_samples=64)
PNG = b"\x89PNG\r\n\x1a\n"


def leaves_equal(a, b):
    """Bit-for-bit equality of two pytrees: same structure, dtypes and values."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(la, lb))


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_checkpoint_round_trip_is_bit_for_bit(tmp_path):
    step = make_train_step(TINY, devices=jax.devices()[:1], donate=False)
    state = init_train_state(TINY)
    data = np.random.default_rng(0).normal(size=(TINY.n_critic, TINY.batch_size, 2)).astype(np.float32)
    for _ in range(2):  # non-trivial Adam moments and step
        state, _ = step(state, data)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.save(state, TINY) == 2
    with Checkpointer(tmp_path / "ckpt", read_only=True) as ckpt:
        restored, config = ckpt.restore(TINY)
        assert config == TINY
        assert int(restored.step) == 2
        assert leaves_equal(restored, state)
        other = dataclasses.replace(TINY, potential_hidden=(16, 8))
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(other)
        assert "\n" not in str(err.value)
        assert "checkpoint 2" in str(err.value) and "another architecture" in str(err.value)
        assert "Dense_0/bias is (8,) float32 there, (16,) float32 here" in str(err.value)


def test_nonfinite_state_is_never_saved(tmp_path):
    state = init_train_state(TINY)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(state, TINY)
        bad = state.replace(step=state.step + 1, potential_params=jax.tree_util.tree_map(
            lambda x: x.at[(0,) * x.ndim].set(np.nan), state.potential_params))
        with pytest.raises(CheckpointError, match="NaN or Inf"):
            ckpt.save(bad, TINY)
        ckpt.wait()
        assert ckpt.all_steps() == [0]


def test_resume_is_bit_identical_and_files_are_written(tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    a = train_and_evaluate(TINY, full, progress=False)
    # first session stops at 3 (checkpoints 2 and 3); drop 3 so the resume starts from 2 and must also
    # discard the metrics record of iteration 3 written after that checkpoint
    train_and_evaluate(dataclasses.replace(TINY, iterations=3), part, progress=False)
    shutil.rmtree(os.path.join(part, "checkpoints", "3"))
    b = train_and_evaluate(TINY, part, resume=True, progress=False)
    assert int(a.step) == int(b.step) == TINY.iterations
    assert leaves_equal(a, b)
    ra, rb = records(full), records(part)
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb] == list(range(1, 7))
    for x, y in zip(ra, rb):
        assert all(x[k] == y[k] for k in METRICS), (x, y)
    with Checkpointer(os.path.join(part, "checkpoints"), read_only=True) as ckpt:
        assert ckpt.latest_step() == 6
        assert leaves_equal(ckpt.restore()[0], a)
    # workdir contents
    with open(os.path.join(full, "config.json")) as f:
        assert Config.from_dict(json.load(f)) == TINY
    with open(os.path.join(part, "run_info.json")) as f:
        info = json.load(f)
    assert info["seed"] == TINY.seed
    assert all(info["versions"][p] for p in ("jax", "flax", "optax", "diffrax", "orbax-checkpoint"))
    assert [(s["start_iteration"], s["end_iteration"]) for s in info["sessions"]] == [(0, 3), (2, 6)]
    for png in ("curves.png", "samples.png", "samples/step_000006.png"):
        with open(os.path.join(full, png), "rb") as f:
            assert f.read(8) == PNG, png


def test_workdir_of_another_run_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = dataclasses.replace(TINY, iterations=2)
    train_and_evaluate(cfg, workdir, progress=False)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(ConfigError, match=r"different config \(lam=0\.5 there, 0\.25 here\)"):
        train_and_evaluate(dataclasses.replace(cfg, lam=0.25), workdir, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_and_evaluate(cfg, workdir, progress=False)
    with pytest.raises(ConfigError, match="cannot resume"):
        train_and_evaluate(dataclasses.replace(cfg, lam=0.25), workdir, resume=True, progress=False)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_unlogged_iterations_skip_only_the_indicators(tmp_path):
    every = train_and_evaluate(TINY, str(tmp_path / "every"), progress=False)
    lean = train_and_evaluate(dataclasses.replace(TINY, log_every=4), str(tmp_path / "lean"), progress=False)
    ra, rb = {r["iteration"]: r for r in records(tmp_path / "every")}, records(tmp_path / "lean")
    assert [r["iteration"] for r in rb] == [4, 6]  # every 4th and the last, each with every metric
    for r in rb:
        np.testing.assert_allclose([r[k] for k in METRICS], [ra[r["iteration"]][k] for k in METRICS], rtol=1e-4)
    for x, y in zip(jax.tree_util.tree_leaves(every), jax.tree_util.tree_leaves(lean)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_cosine_run_cannot_resume_with_another_length(tmp_path):
    cfg = dataclasses.replace(TINY, iterations=2, lr_schedule="cosine")
    train_and_evaluate(cfg, str(tmp_path / "run"), progress=False)
    with pytest.raises(ConfigError, match="lr_schedule='cosine' decays over iterations=2"):
        train_and_evaluate(dataclasses.replace(cfg, iterations=4), str(tmp_path / "run"), resume=True,
                           progress=False)


def test_data_shape_mismatch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"shape \(7,\) but data_shape=\(2,\)"):
        train_and_evaluate(dataclasses.replace(TINY, embed_dim=7), str(tmp_path / "run"), progress=False)
    assert not os.path.exists(tmp_path / "run")  # nothing written for a bad request


def test_image_run_writes_grids_and_evaluates(tmp_path):
    from w12_jax.evaluation import evaluate
    from w12_jax.data import load_config_dataset

    cfg = Config(dataset="digits8x8", data_shape=(8, 8, 1), conv_channels=(2,), conv_kernel=3, T=2.0, dt=1.0,
                 potential_hidden=(8,), discriminator_hidden=(8,), batch_size=8, n_critic=1, iterations=2,
                 checkpoint_every=1, sample_every=1, eval_samples=16)
    state = train_and_evaluate(cfg, str(tmp_path), progress=False)
    for png in ("samples/step_000001.png", "samples/step_000002.png", "samples.png", "curves.png"):
        with open(tmp_path / png, "rb") as f:
            assert f.read(8) == PNG, png
    report = evaluate(cfg, state.potential_params, load_config_dataset(cfg))
    assert report["num_samples"] == 16 and report["nfe"] == 2 and report["nonfinite_samples"] == 0
    assert report["nearest_train_distance"] > 0 and "energy_distance" not in report


def test_train_steps_trains_each_iteration_on_its_drawn_grid(tmp_path):
    """train_steps=(1, 2): iteration i runs the step of on_grid(config, grid_of(config, i)); the draw is a
    pure function of (seed, i), both grids occur, and the loop equals that sequence of steps exactly."""
    from w12_jax.data import sample_batches
    from w12_jax.data import load_config_dataset
    from w12_jax.phases import grid_of, on_grid

    cfg = dataclasses.replace(TINY, train_steps=(1, 2), iterations=10, checkpoint_every=10)
    grids = [grid_of(cfg, i) for i in range(400)]
    assert grids == [grid_of(cfg, i) for i in range(400)] and 0.4 < grids.count(1) / 400 < 0.6
    assert grids != [grid_of(dataclasses.replace(cfg, seed=1), i) for i in range(400)]
    assert len(set(grids[:10])) == 2  # both grids within the run below
    looped = train_and_evaluate(cfg, str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)
    ds = load_config_dataset(cfg)
    steps = {k: make_train_step(on_grid(cfg, k), devices=jax.devices()[:1]) for k in (1, 2)}
    state = init_train_state(cfg)
    for i in range(cfg.iterations):
        state, _ = steps[grids[i]](state, sample_batches(ds.train, seed=cfg.seed, step=i, num_batches=cfg.n_critic,
                                                         batch_size=cfg.batch_size))
    assert leaves_equal(looped, state)
    with pytest.raises(ConfigError, match="train_steps"):
        dataclasses.replace(cfg, train_steps=(0, 2))
    with pytest.raises(ConfigError, match="train_steps"):
        dataclasses.replace(cfg, objective="icfm")


def test_cfm_warmup_trains_u_by_otcfm_then_the_mfg_objective(tmp_path):
    """cfm_warmup=3: iterations 0-2 run the OT-CFM step of phase_config(config, WARMUP), which leaves the
    critic at its initial parameters, and the rest the MFG step; the loop equals that sequence exactly."""
    from w12_jax.data import sample_batches
    from w12_jax.data import load_config_dataset
    from w12_jax.phases import WARMUP, phase_config, phase_of

    cfg = dataclasses.replace(TINY, cfm_warmup=3, iterations=5, checkpoint_every=5)
    assert [phase_of(cfg, i) for i in range(5)] == [WARMUP] * 3 + [cfg.num_steps] * 2
    looped = train_and_evaluate(cfg, str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)
    ds = load_config_dataset(cfg)
    steps = {p: make_train_step(phase_config(cfg, p), devices=jax.devices()[:1]) for p in (WARMUP, cfg.num_steps)}
    state = init = init_train_state(cfg)
    for i in range(cfg.iterations):
        state, _ = steps[phase_of(cfg, i)](state, sample_batches(ds.train, seed=cfg.seed, step=i,
                                                                 num_batches=cfg.n_critic, batch_size=cfg.batch_size))
        if i == cfg.cfm_warmup - 1:
            assert leaves_equal(state.discriminator_params, init.discriminator_params)
            assert not leaves_equal(state.potential_params, init.potential_params)
    assert leaves_equal(looped, state)
    assert not leaves_equal(state.discriminator_params, init.discriminator_params)
    for bad, match in ((dict(cfm_warmup=5), "leaves none"), (dict(cfm_warmup=-1), ">= 0"),
                       (dict(objective="icfm"), "warm-starts")):
        with pytest.raises(ConfigError, match=match):
            dataclasses.replace(cfg, **bad)


def test_steps_per_call_runs_unchecked_iterations_in_scanned_blocks(tmp_path):
    """steps_per_call=4, log_every=5, 10 iterations: iterations 1-4 and 6-9 run as two scanned calls, 5 and
    10 alone (logged); the parameters match 10 single steps, and the metrics file has the same records."""
    cfg = dataclasses.replace(TINY, iterations=10, log_every=5, checkpoint_every=10, sample_every=10)
    single = train_and_evaluate(cfg, str(tmp_path / "single"), devices=jax.devices()[:1], progress=False)
    scanned = train_and_evaluate(dataclasses.replace(cfg, steps_per_call=4), str(tmp_path / "scanned"),
                                 devices=jax.devices()[:1], progress=False)
    assert int(scanned.step) == 10
    for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(scanned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert [r["iteration"] for r in records(tmp_path / "scanned")] == [5, 10]
    calls = [json.loads((tmp_path / run / "run_info.json").read_text())["sessions"][-1]["compiled_calls"]
             for run in ("single", "scanned")]
    assert calls == [10, 4]
