"""The `w12` command line in subprocesses (`python -m w12_jax`): train, resume, sample, evaluate, errors."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from w12_jax.checkpoint import Checkpointer
from w12_jax.cli import main
from w12_jax.config import ConfigError
from w12_jax.loop import STATE_PARTS
from w12_jax.train import METRICS

from test_loop import PNG, leaves_equal

TINY = ("dataset=8gaussians data_shape=2 architecture=mlp reference=gaussian T=1 dt=0.5 lam=0.5 "
        "potential_hidden=8,8 discriminator_hidden=8 batch_size=8 n_critic=2 num_samples=200 "
        "checkpoint_every=2 sample_every=100 log_every=1 eval_samples=64").split()


def w12(*args, cwd, timeout=300):
    """Run `python -m w12_jax *args`; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "w12_jax", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def stderr_line(proc):
    """The single stderr line of a failed command (asserting there is exactly one and no traceback)."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def restore(workdir):
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        return ckpt.restore()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir written by an uninterrupted `w12 train` (6 iterations), shared by the tests below."""
    cwd = tmp_path_factory.mktemp("trained")
    proc = w12("train", "--set", *TINY, "iterations=6", "--workdir", "run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, cwd / "run"


def test_train_resume_sample_evaluate(trained, tmp_path):
    first = w12("train", "--set", *TINY, "iterations=3", "--workdir", "part", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # --resume without --preset continues the workdir's own config; only the schedule is changed
    second = w12("train", "--workdir", "part", "--resume", "--set", "iterations=6", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and "from iteration 3" in second.stdout
    (a, cfg_a), (b, cfg_b) = restore(trained[1]), restore(tmp_path / "part")
    assert int(a.step) == int(b.step) == 6 and cfg_a == cfg_b
    assert leaves_equal(a, b)

    out = tmp_path / "draw" / "x.npz"
    proc = w12("sample", "--workdir", "part", "--solver", "heun", "--nfe", 6, "--n", 12, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "NFE 6" in proc.stdout
    with np.load(out) as z:
        assert z["samples"].shape == (12, 2) and np.all(np.isfinite(z["samples"]))
        assert int(z["nfe"]) == 6 and int(z["num_steps"]) == 3 and int(z["iteration"]) == 6
        assert z["path"].shape == (3, 12, 2)  # min(K, 64) + 1 = 3 saved times of the trajectories
        np.testing.assert_allclose(z["path"][0], z["x0"])
    with open(out.with_suffix(".png"), "rb") as f:
        assert f.read(8) == PNG

    proc = w12("evaluate", "--workdir", "part", "--n", 50, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "part" / "evaluation.json") as f:
        report = json.load(f)
    assert report["iteration"] == 6 and report["num_samples"] == 50 and report["nfe"] == 2
    assert 0 < report["straightness_ratio"] <= 1 + 1e-6
    assert report["kinetic_energy"] >= report["straight_line_bound"] - 1e-6
    assert np.isfinite(report["energy_distance"]) and np.isfinite(report["sliced_w2"])


def test_distill_writes_a_one_step_generator_that_sample_and_evaluate_use(trained, tmp_path):
    """`w12 distill` fits G to the flow's own solve better than the identity map does; `w12 sample --generator`
    draws G(x0) from the x0 of the flow's sampler at that seed, with the restored G; `w12 evaluate` scores it."""
    from w12_jax.distill import distilled_sample, restore_generator
    from w12_jax.sample import generate

    shutil.copytree(trained[1], tmp_path / "run")
    proc = w12("distill", "--workdir", "run", "--pairs", 300, "--validation", 50, "--warm-iterations", 30,
               "--iterations", 10, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "run" / "generator" / "generator.json") as f:
        record = json.load(f)
    assert record["flow_iteration"] == 6 and record["architecture"] == "mlp"
    assert record["heldout_regression_loss"] < 0.7 * record["heldout_identity_loss"]

    proc = w12("sample", "--workdir", "run", "--generator", "--n", 40, "--seed", 3, "--out", "g.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state, config = restore(tmp_path / "run")
    x0, flow = generate(config, state.potential_ema, 40, seed=3, num_steps=10)  # the pairs' solve
    generator, params, _ = restore_generator(str(tmp_path / "run"), config.data_shape)
    with np.load(tmp_path / "g.npz") as z:
        np.testing.assert_array_equal(z["x0"], x0)
        assert int(z["nfe"]) == 1 and int(z["iteration"]) == 6
        np.testing.assert_allclose(z["samples"], distilled_sample(generator, params, x0), rtol=1e-6, atol=1e-6)
        fit = np.mean((z["samples"] - np.asarray(flow.x_T)) ** 2)
    assert fit < np.mean((x0 - np.asarray(flow.x_T)) ** 2)

    proc = w12("evaluate", "--workdir", "run", "--n", 50, "--out", "e.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "e.json") as f:
        report = json.load(f)
    assert report["generator_flow_iteration"] == 6 and report["generator_nfe"] == 1
    assert report["generator_energy_distance"] >= 0 and np.isfinite(report["generator_sliced_w2"])


def test_out_of_memory_is_one_line_that_says_what_to_lower(trained):
    """10^8 2-D samples (0.8 GB per array, ~13 GB with the activations) under a 12 GiB address-space limit."""
    import shlex

    cwd, run = trained
    command = shlex.join([sys.executable, "-m", "w12_jax", "sample", "--workdir", str(run), "--n", str(10**8),
                          "--out", str(cwd / "huge.npz")])
    proc = subprocess.run(["bash", "-c", f"ulimit -v {12 * 2**20} && exec {command}"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    line = stderr_line(proc)
    # the allocation fails inside XLA ("out of memory (...); lower --n"), or the pre-check refuses first when
    # this machine has less free memory than the request's lower bound
    assert line.startswith("w12: error: ") and "lower --n" in line, line
    assert line.startswith("w12: error: out of memory (") or "GiB available" in line, line


def test_sample_output_names_are_the_file_asked_for():
    from w12_jax.cli import output_paths

    assert output_paths("d/s.png") == ("d/s.npz", "d/s.png")
    assert output_paths("d/s.npz") == ("d/s.npz", "d/s.png")
    assert output_paths("S.PNG") == ("S.npz", "S.PNG")
    for bad in ("s", "s.jpg", "d/.png"):
        with pytest.raises(ConfigError, match="must name a .npz file"):
            output_paths(bad)


def test_closed_stdout_ends_quietly(tmp_path):
    """`w12 presets | head -1`: a reader that leaves early gets no error line and exit status 0."""
    proc = subprocess.Popen([sys.executable, "-m", "w12_jax", "presets"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # every write of the listing (> one 8 KiB buffer) now meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


BAD = [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "foo=1"], "unknown config key 'foo'"),
    (["train", "--set", "lam=abc"], "lam='abc' is not a valid float"),
    (["train", "--set", "lam=-1"], "lam must be a finite number > 0"),
    (["train", "--set", "dt=0.3"], "dt=0.3 must divide T=5.0"),
    (["train", "--set", "case=w3"], "case='w3' is not valid"),
    (["train", "--set", "lam"], "expected key=value"),
    (["train", "--set", "dataset=nope", "--workdir", "x"], "unknown data set 'nope'"),
    (["train", "--set", "dataset=fashion_mnist", "data_dir=empty", "--workdir", "x"], "is missing train-images"),
    (["train", "--preset", "moons-w1w2", "--set", "embed_dim=7", "--workdir", "x"], "data_shape=(2,)"),
    (["sample"], "required: --workdir"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["sample", "--workdir", "nowhere"], "no checkpoint directory"),
    (["sample", "--workdir", "{run}", "--solver", "rk99"], "unknown solver 'rk99'"),
    (["sample", "--workdir", "{run}", "--solver", "heun", "--nfe", "3"], "--nfe 3 is not reachable"),
    (["sample", "--workdir", "{run}", "--dt", "0.3"], "dt=0.3 must divide T=1.0"),
    (["sample", "--workdir", "{run}", "--dt", "0.5", "--nfe", "2"], "not allowed with argument"),
    (["sample", "--workdir", "{run}", "--generator"], "no distilled generator in"),
    (["distill", "--workdir", "{run}", "--pairs", "100", "--validation", "100"], "--validation must be >= 1 and "
                                                                                 "below --pairs, got 100 of 100"),
    (["train", "--workdir", "{run}", "--set", *TINY, "lam=0.25"], "different config (lam=0.5 there, 0.25 here)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_input_is_one_line(trained, argv, message, monkeypatch, capsys):
    """In process (`cli.main`, fast): an uncaught exception would fail the test as a traceback would."""
    cwd, run = trained
    (cwd / "empty").mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    try:
        rc = main([a.replace("{run}", str(run)) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    assert rc not in (0, None)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not (cwd / "x").exists()


def test_bad_input_through_the_entry_point(tmp_path):
    line = stderr_line(w12("train", "--set", "lam=0", cwd=tmp_path))
    assert line == "w12: error: lam must be a finite number > 0, got 0.0"
    assert stderr_line(w12("sample", cwd=tmp_path)).startswith("w12 sample: error:")


def test_corrupt_checkpoint_is_one_line(trained, tmp_path):
    _, run = trained
    work = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(work)], check=True)
    step_dir = work / "checkpoints" / "6" / "state"
    for root, _, files in os.walk(step_dir / "d"):
        for name in files:  # flip every 7th byte of the array data
            p = os.path.join(root, name)
            b = bytearray(open(p, "rb").read())
            b[::7] = bytes(x ^ 0xFF for x in b[::7])
            open(p, "wb").write(b)
    line = stderr_line(w12("sample", "--workdir", work, cwd=tmp_path))
    assert "checkpoint 6" in line and "corrupt" in line


def test_divergence_stops_with_one_line_and_keeps_last_checkpoint(tmp_path):
    # unregularized, lam tiny and a huge learning rate: the flow explodes within a few iterations
    proc = w12("train", "--set", *TINY, "iterations=50", "checkpoint_every=1", "case=none", "lam=1e-4",
               "lr_potential=1e6", "lr_discriminator=1e6", "--workdir", "run", "--no-progress", cwd=tmp_path)
    line = stderr_line(proc)
    m = re.search(r"training diverged by iteration (\d+): (\w+) (is|holds)", line)
    assert m, line
    it, what = int(m.group(1)), m.group(2)
    assert 1 < it < 50 and what in METRICS + STATE_PARTS
    assert "last finite metrics" in line and f"last good checkpoint: iteration {it - 1}" in line
    state, _ = restore(tmp_path / "run")
    assert int(state.step) == it - 1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        last = json.loads(f.read().splitlines()[-1])
    assert last["iteration"] == it


def test_sigint_saves_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "w12_jax", "train", "--set", *TINY, "iterations=100000", "checkpoint_every=1000",
           "--workdir", "run"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"interrupted at iteration (\d+); checkpoint saved in .*; resume with: "
                  r"w12 train --workdir \S+ --resume", err)
    assert m, err
    it = int(m.group(1))
    assert it >= 3
    state, _ = restore(tmp_path / "run")
    assert int(state.step) == it
    proc = w12("train", "--workdir", "run", "--resume", "--set", f"iterations={it + 2}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(restore(tmp_path / "run")[0].step) == it + 2
