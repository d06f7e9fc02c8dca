"""Reliability (issue 6) through the `w12` command line: SIGKILL at random moments (also in the middle of a
checkpoint write) resumes to bit-identical parameters and metrics; divergence; bad inputs in one line;
random `--set` assignments either train and round-trip through a checkpoint or fail in one line; two fresh
runs are bit-identical and the workdir records seed, config, package versions and git revision."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from w12_jax.checkpoint import Checkpointer
from w12_jax.cli import main
from w12_jax.config import CASES, FIELD_TYPES, Config, override, parse_assignment
from w12_jax.loop import STATE_PARTS
from w12_jax.provenance import PACKAGES
from w12_jax.presets import get_preset
from w12_jax.train import METRICS

from test_cli import restore, stderr_line, w12
from test_loop import leaves_equal

PRESET = "8gaussians-w1w2"
# the preset's problem with tiny networks and K = T/dt = 2 Euler steps; a checkpoint after every iteration
SETS = ("potential_hidden=8,8 discriminator_hidden=8 batch_size=8 n_critic=2 num_samples=200 dt=0.5 "
        "log_every=1 checkpoint_every=1 sample_every=1000 eval_samples=16").split()
ITERATIONS = 60
RUN = ("train", "--preset", PRESET, "--set", *SETS, f"iterations={ITERATIONS}", "--no-progress")
TMP = ".orbax-checkpoint-tmp"  # orbax writes a step into <step>.orbax-checkpoint-tmp, then renames it


def records(workdir):
    """metrics.jsonl without the wall-clock field (everything else must be bit-identical)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two uninterrupted runs of RUN in fresh workdirs, run/ and again/ (concurrent subprocesses)."""
    cwd = tmp_path_factory.mktemp("reference")
    procs = [subprocess.Popen([sys.executable, "-m", "w12_jax", *RUN, "--workdir", name], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in ("run", "again")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return cwd / "run"


# ------------------------------------------------------------------------------------ crash safety
def _steps(ckpt_dir):
    """(complete steps, temporary directories) in the checkpoint directory."""
    names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if TMP in n]


def _tmp_step(name):
    return int(name.split(".")[0])


def _killed_session(cmd, cwd, ckpt_dir, policy, timeout=180):
    """Start `cmd`, SIGKILL it according to `policy`; returns (finished normally, temporary directories
    of checkpoints that this session began and did not finish).

    policy ("delay", s): kill s seconds after the start (start-up, compilation or training).
    policy ("write", s): kill s seconds after this session starts writing its second checkpoint (0: as soon
    as its temporary directory appears; the first one must be complete, so the session made progress).
    """
    done, tmp = _steps(ckpt_dir)
    baseline = max(done + [_tmp_step(n) for n in tmp], default=0)  # stale directories of killed sessions
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    kind, seconds = policy
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if kind == "delay" and time.monotonic() - t0 >= seconds:
                break
            if kind == "write" and any(_tmp_step(n) > baseline + 1 for n in _steps(ckpt_dir)[1]):
                time.sleep(seconds)
                break
            time.sleep(0.001)
        proc.kill()  # SIGKILL; a no-op when it has already exited
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        return True, []
    assert proc.returncode == -9, err  # killed by us, never a failure of its own
    return False, [n for n in _steps(ckpt_dir)[1] if _tmp_step(n) > baseline]


def test_sigkill_at_random_moments_resumes_bit_identically(reference, tmp_path):
    rng = np.random.default_rng(6)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    cmd = [sys.executable, "-m", "w12_jax", *RUN, "--workdir", "run"]
    policies = [("write", 0.0), ("delay", rng.uniform(2.0, 14.0)), ("write", rng.uniform(0.0, 0.02)),
                ("delay", rng.uniform(2.0, 14.0))]
    finished, left_tmp, log = False, [], []
    for n in range(len(policies) + 3):  # up to 3 more kills when none has yet landed inside a write
        if finished or (n >= len(policies) and left_tmp):
            break
        policy = policies[n] if n < len(policies) else ("write", 0.0)
        finished, tmp = _killed_session(cmd + (["--resume"] if n else []), tmp_path, ckpt_dir, policy)
        log.append((policy, finished, tmp, _steps(ckpt_dir)[0]))  # (policy, finished, tmp dirs left, steps)
        left_tmp += tmp
    # at least one kill landed inside a checkpoint write (the session's temporary directory stayed behind)
    assert left_tmp, log
    if not finished:  # resume to the end
        proc = w12(*RUN, "--workdir", "run", "--resume", cwd=tmp_path)
        assert proc.returncode == 0, (proc.stderr, log)
    (a, cfg_a), (b, cfg_b) = restore(reference), restore(tmp_path / "run")
    assert int(a.step) == int(b.step) == ITERATIONS and cfg_a == cfg_b
    assert leaves_equal(a, b), log
    ra, rb = records(reference), records(tmp_path / "run")
    assert [r["iteration"] for r in rb] == list(range(1, ITERATIONS + 1))
    assert ra == rb  # every metric of every iteration, bit for bit (JSON floats round-trip exactly)
    assert not _steps(ckpt_dir)[1], os.listdir(ckpt_dir)  # no temporary directory left at the end


# ---------------------------------------------------------------------------------- reproducibility
def test_two_fresh_runs_are_bit_identical_and_workdir_records_the_run(reference):
    again = reference.parent / "again"
    assert records(reference) == records(again)  # every metric of every iteration, bit for bit
    assert leaves_equal(restore(reference)[0], restore(again)[0])

    config = override(get_preset(PRESET), dict(map(parse_assignment, SETS + [f"iterations={ITERATIONS}"])))
    with open(reference / "config.json") as f:
        assert Config.from_dict(json.load(f)) == config
    with open(reference / "run_info.json") as f:
        info = json.load(f)
    assert info["seed"] == config.seed
    assert set(info["versions"]) == {"python", *PACKAGES} and all(info["versions"].values()), info["versions"]
    here = os.path.dirname(os.path.abspath(__file__))
    git = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True)
    if git.returncode == 0:  # a git checkout: the revision (with -dirty when modified) is recorded
        assert re.fullmatch(re.escape(git.stdout.strip()) + r"(-dirty)?", info["git_revision"]), info
    assert info["python"] == sys.version.split()[0] and info["backend"] == "cpu"
    assert [(s["start_iteration"], s["end_iteration"]) for s in info["sessions"]] == [(0, ITERATIONS)]


# ------------------------------------------------------------------------------------- divergence
def _main(argv):
    """(exit status, stdout, stderr) of `cli.main(argv)` in process; argparse's SystemExit is a status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(map(str, argv)))
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_divergence_message_holds_the_last_finite_metrics(tmp_path):
    """tests/test_cli.py checks message, exit and kept checkpoint; here the numbers in the message are those
    of the last finite iteration in metrics.jsonl."""
    rc, _, err = _main(["train", "--preset", PRESET, "--set", *SETS, "iterations=50", "case=none", "lam=1e-4",
                        "lr_potential=1e6", "lr_discriminator=1e6", "--workdir", tmp_path / "run", "--no-progress"])
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    m = re.fullmatch(r"w12: error: training diverged by iteration (\d+): (\w+) (?:is \S+|holds NaN or Inf); "
                     r"last finite metrics \(iteration (\d+)\): (.*); last good checkpoint: iteration (\d+) in \S+",
                     err.strip())
    assert m, err
    it, what, last, shown, kept = int(m[1]), m[2], int(m[3]), m[4], int(m[5])
    assert what in METRICS + STATE_PARTS and last == kept == it - 1
    rec = records(tmp_path / "run")
    assert rec[-1]["iteration"] == it and rec[-2]["iteration"] == it - 1
    shown = dict(part.split("=") for part in shown.split(", "))
    assert set(shown) == {"divergence", "kinetic_energy", "hj_residual", "terminal_residual"}, shown
    assert all(float(v) == float(f"{rec[-2][k]:.4g}") for k, v in shown.items()), (shown, rec[-2])
    state, _ = restore(tmp_path / "run")
    assert int(state.step) == kept
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))


def test_divergence_between_logged_iterations_never_reaches_a_checkpoint(tmp_path):
    """The loop checks the state only on logged iterations and before every save: with log_every=10 and a
    checkpoint every 3 iterations, the divergence is caught at a check, and the kept checkpoint is finite."""
    sets = [s for s in SETS if not s.startswith(("log_every", "checkpoint_every"))]
    rc, _, err = _main(["train", "--preset", PRESET, "--set", *sets, "log_every=10", "checkpoint_every=3",
                        "iterations=50", "case=none", "lam=1e-4", "lr_potential=1e6", "lr_discriminator=1e6",
                        "--workdir", tmp_path / "run", "--no-progress"])
    m = re.search(r"training diverged by iteration (\d+): .*last good checkpoint: iteration (\d+) in", err)
    assert rc == 1 and m, err
    it, kept = int(m[1]), int(m[2])
    assert it % 3 == 0 or it % 10 == 0, it  # found at a save or a logged iteration
    assert kept % 3 == 0 and kept < it
    state, _ = restore(tmp_path / "run")
    assert int(state.step) == kept
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))


# ------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def mismatched(reference, tmp_path_factory):
    """other/: a run with other layer sizes; arch/: the reference run with the config item of its latest
    checkpoint taken from other/; trunc/: the reference run with its latest checkpoint's data files cut in half;
    empty/: a data directory without the IDX files."""
    cwd = tmp_path_factory.mktemp("bad")
    other = w12(*RUN, "--set", "potential_hidden=16", "iterations=1", "--workdir", "other", cwd=cwd)
    assert other.returncode == 0, other.stderr
    shutil.copytree(reference, cwd / "arch")
    item = cwd / "arch" / "checkpoints" / str(ITERATIONS) / "config"
    shutil.rmtree(item)
    shutil.copytree(cwd / "other" / "checkpoints" / "1" / "config", item)
    shutil.copytree(reference, cwd / "trunc")
    for root, _, files in os.walk(cwd / "trunc" / "checkpoints" / str(ITERATIONS) / "state"):
        for name in files:
            if os.path.basename(root) == "d" or name == "manifest.ocdbt":
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(max(os.path.getsize(os.path.join(root, name)) // 2, 1))
    (cwd / "empty").mkdir()
    return cwd


BAD = [
    (["train", "--set", "T=0"], "T must be a finite number > 0, got 0.0"),
    (["train", "--set", "T=-5"], "T must be a finite number > 0"),
    (["train", "--set", "dt=-1"], "dt must be a finite number > 0"),
    (["train", "--set", "lam=0"], "lam must be a finite number > 0"),
    (["train", "--set", "L=0"], "L must be a finite number > 0"),
    (["train", "--set", "batch_size=0"], "batch_size must be a finite number > 0"),
    (["train", "--set", "batch_size=-8"], "batch_size must be a finite number > 0"),
    (["train", "--set", "T=1", "dt=0.4"], "dt=0.4 must divide T=1.0"),
    (["train", "--preset", PRESET, "--set", "T=1e30", "--workdir", "x"],
     "T=1e+30 and dt=0.2 give T/dt=5e+30 Euler steps, more than 16384; raise dt or lower T"),
    (["train", "--preset", PRESET, "--set", "num_samples=5", "--workdir", "x"],
     "data set '8gaussians' with num_samples=5 has 5 training and 0 held-out samples; both must be non-empty"),
    (["train", "--set", "divergence=js"], "divergence='js' is not valid; choose one of kl, reverse_kl, alpha, w1"),
    (["train", "--set", "lambda=1"], "unknown config key 'lambda'"),
    (["train", "--preset", "mnist"], "unknown preset 'mnist'"),
    (["train", "--preset", PRESET, "--set", "dataset=9gaussians", "--workdir", "x"], "unknown data set '9gaussians'"),
    (["train", "--set", "dataset=mnist", "data_dir=nowhere", "--workdir", "x"], "nowhere"),
    (["train", "--set", "dataset=fashion_mnist", "data_dir=empty", "--workdir", "x"], "is missing train-images"),
    (["sample", "--workdir", "arch"], "was saved from another architecture"),
    (["evaluate", "--workdir", "arch"], "was saved from another architecture"),
    (["train", "--workdir", "arch", "--resume"], "was saved from another architecture"),
    (["sample", "--workdir", "trunc"], "corrupt"),
    (["train", "--workdir", "trunc", "--resume"], "corrupt"),
    (["train", "--workdir", "other", "--resume", "--set", "potential_hidden=8,8"],
     "cannot resume {cwd}/other with a different config (potential_hidden=(16,) there, (8, 8) here)"),
    ([*RUN, "--set", "iterations=1", "--workdir", "other"],
     "holds a run with a different config (potential_hidden=(16,) there, (8, 8) here); use another workdir"),
    (["sample", "--workdir", "other", "--solver", "rk4"], "unknown solver 'rk4'"),
    (["sample", "--workdir", "other", "--n", "0"], "--n must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:4]) for a, _ in BAD])
def test_bad_input_is_one_line_without_traceback(mismatched, argv, message, monkeypatch):
    monkeypatch.chdir(mismatched)
    before = sorted(os.listdir(mismatched))
    rc, _, err = _main(argv)
    assert rc not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("w12") and "Traceback" not in err, err
    assert message.replace("{cwd}", str(mismatched)) in lines[0], lines[0]
    assert sorted(os.listdir(mismatched)) == before  # nothing written for a bad request


def test_bad_input_through_the_entry_point_has_status_1(tmp_path):
    line = stderr_line(w12("train", "--preset", PRESET, "--set", "dt=0.3", cwd=tmp_path))
    assert line == "w12: error: dt=0.3 must divide T=1.0 into a whole number of steps (got T/dt=3.33333)"


# -------------------------------------------------------------------------- random command lines
# one tiny run per accepted example: small integers so that sizes, K and iterations stay small
TINY = ("potential_hidden=4 discriminator_hidden=4 batch_size=4 n_critic=1 num_samples=100 T=1 dt=0.5 "
        "iterations=1 log_every=1 checkpoint_every=1 sample_every=1000 eval_samples=8").split()
VALUES = st.one_of(st.integers(-3, 6), st.floats(-4, 4, width=32), st.booleans(), st.text(max_size=6),
                   st.sampled_from(["nan", "inf", "-1e30", "1e30", "0", "kl", "w1", "w2", "none", "mlp", "conv",
                                    "tanh", "gaussian", "uniform", "4,4", "2", "(3,)", "moons", "1e-3", "0.25"]))
FIELDS = st.sampled_from(sorted(FIELD_TYPES) + ["case"])
KEYS = st.sampled_from([FIELDS] * 5 + [st.text(min_size=1, max_size=8)]).flatmap(lambda keys: keys)  # mostly real
TYPED = {"int": st.integers(1, 5).map(str), "float": st.sampled_from(["0.5", "1", "2", "0.25", "1e-3"]),
         "bool": st.sampled_from(["true", "false", "1", "0"]), "tuple[int, ...]": st.sampled_from(["4", "4,4", "3,2"]),
         "str": st.sampled_from(["kl", "alpha", "w1", "reverse_kl", "moons", "tanh", "gaussian", "uniform", "mlp"])}


def _text(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def _assignment(key):
    """key=value with a value of the key's type (often valid) or anything else."""
    typed = st.sampled_from(sorted(CASES)) if key == "case" else TYPED.get(FIELD_TYPES.get(key))
    values = [VALUES.map(_text)] if typed is None else [typed, typed, VALUES.map(_text)]
    return st.one_of(*values).map(lambda value: f"{key}={value}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sets=st.lists(KEYS.flatmap(_assignment), min_size=1, max_size=2))
def test_random_set_assignments_train_and_round_trip_or_fail_in_one_line(sets):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        rc, _, err = _main(["train", "--preset", "moons-w1w2", "--set", *TINY, *sets, "--workdir", workdir,
                            "--no-progress"])
        event("rejected" if rc else "accepted")
        if rc != 0:
            lines = err.strip().splitlines()
            assert rc in (1, 2) and len(lines) == 1 and "Traceback" not in err, (sets, err)
            assert lines[0].startswith("w12"), (sets, err)
            return
        assert err.strip() == "", (sets, err)
        expected = override(get_preset("moons-w1w2"), dict(map(parse_assignment, TINY + sets)))
        with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
            assert ckpt.restore_config() == expected
            state, saved = ckpt.restore()
        assert saved == expected and int(state.step) == expected.iterations
        with open(os.path.join(workdir, "config.json")) as f:
            assert Config.from_dict(json.load(f)) == expected
