"""Behaviour fingerprints: the main job's and moons-w1w2's first iterations from a fixed seed (logged metrics and
a hash of every parameter) and `w12 evaluate` of the main job's checkpoint, kept in fingerprints.json.

On the machine type they were recorded on (CPU model, jaxlib version) they must match bit for bit: a
refactoring that claims to keep behaviour keeps them. Elsewhere XLA compiles for other CPU features and may
round differently: the training metrics and the continuous figures of the evaluation (Fréchet distances,
kinetic energies, nearest-training distances) must agree to 1e-2 relative (a 2-core AMD EPYC, cpu flags
ecfefe0ffbf1, departs from the stored Intel Xeon record by up to 3.7e-3 in the training metrics: the velocity
residual and the critic's gradient norms after two iterations, 1e-3 in the loss terms); the parameter hash and
the count-based figures (precision, recall, class shares), where one sample more or less moves the value by
1/n, are compared there only by their presence. `W12_RECORD_FINGERPRINTS=1 python -m pytest
tests/test_fingerprints.py` records them anew (only when behaviour is meant to change).
"""

import dataclasses
import hashlib
import json
import os
import platform
from pathlib import Path

import jax
import numpy as np
import pytest

from w12_jax.cli import main as w12
from w12_jax.loop import train_and_evaluate
from w12_jax.presets import get_preset
from w12_jax.provenance import cpu_info

STORE = Path(__file__).with_name("fingerprints.json")
RUNS = {"mnist5k": 2, "moons-w1w2": 5}  # preset -> iterations
EVALUATE = ["--n", "64", "--seed", "3"]


CONTINUOUS = ("frechet_distance", "kinetic_energy", "straight", "nearest_train", "deviation")


def machine_type() -> str:
    """CPU architecture, model and instruction-set flags (what XLA compiles for), and the jaxlib."""
    from importlib import metadata

    info = cpu_info()
    flags = hashlib.sha256(" ".join(sorted(info.get("flags", "").split())).encode()).hexdigest()[:12] if info else ""
    return f"{platform.machine()} {info.get('model name', '')} (cpu flags {flags}), jaxlib {metadata.version('jaxlib')}"


def parameter_hash(state) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        a = np.asarray(leaf)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def numbers(d: dict) -> dict:
    """The numeric entries of a report (lists of numbers kept) but wall-clock times, for comparison."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or v is None or k in ("time", "seconds") or k.endswith("_seconds"):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(x) for x in v]
    return out


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    out = {"machine": machine_type()}
    for preset, iterations in RUNS.items():
        workdir = tmp_path_factory.mktemp(preset)
        cfg = dataclasses.replace(get_preset(preset), iterations=iterations, log_every=1,
                                  checkpoint_every=iterations, sample_every=10 ** 6)
        state = train_and_evaluate(cfg, workdir, devices=jax.devices()[:1], progress=False)
        with open(workdir / "metrics.jsonl") as f:
            last = json.loads(f.readlines()[-1])
        out[preset] = {"parameters_sha256": parameter_hash(state), "metrics": numbers(last)}
        if preset == "mnist5k":
            report = workdir / "evaluation.json"
            assert w12(["evaluate", "--workdir", str(workdir), *EVALUATE, "--out", str(report)]) == 0
            out["evaluate"] = numbers(json.loads(report.read_text()))
    if os.environ.get("W12_RECORD_FINGERPRINTS"):
        STORE.write_text(json.dumps(out, indent=1) + "\n")
    return out


def test_fingerprints_are_kept(fingerprints):
    stored = json.loads(STORE.read_text())
    same_machine = stored["machine"] == fingerprints["machine"]
    for part in (*RUNS, "evaluate"):
        got, want = fingerprints[part], stored[part]
        if part in RUNS:
            if same_machine:
                assert got["parameters_sha256"] == want["parameters_sha256"], part
            got, want = got["metrics"], want["metrics"]
        assert set(got) == set(want), (part, set(got) ^ set(want))
        for key in want:
            if same_machine:
                assert got[key] == want[key], (part, key, got[key], want[key])
            elif part in RUNS:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-2, atol=1e-6, err_msg=f"{part} {key}")
            elif any(c in key for c in CONTINUOUS):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-2, err_msg=f"{part} {key}")
