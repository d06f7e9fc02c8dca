"""benchmarks/accelerator.sh --smoke: the GPU script's every step on the CPU with tiny settings, so that it
cannot rot before a GPU is lent (issue "Accelerators")."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_accelerator_script_smoke_runs_every_step_and_reports_in_8_files(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "ACCELERATOR_BUDGET": "900"}  # a slow CI machine must not cut a step short
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["discretization.png", "log.txt", "results.json", "results.md", "w1_curves.png",
                     "w1_samples.png", "w1w2_curves.png", "w1w2_samples.png"], files
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for case in ("w1w2", "w1"):
        run = results["runs"][case]
        assert run["iterations"] == run["configured_iterations"] == 2 and run["train_seconds"] > 0
        nfe = {label: e["nfe"] for label, e in run["evaluation"].items()}
        assert [nfe["euler 1"], nfe["euler 2"], nfe["euler 5"]] == [1, 2, 5] and nfe["dopri5 1e-4"] > 5, nfe
        assert all(e["num_samples"] == 8 and e["frechet_distance"] > 0 for e in run["evaluation"].values())
    assert set(results["discretization"]) == {"w1w2", "w1", "floor", "versions"}
    assert results["discretization"]["floor"]["frechet_distance_interval"][0] <= \
        results["discretization"]["floor"]["frechet_distance"]
    assert results["discretization"]["w1w2"]["euler h=1/64"]["deviation"] == 0.0
    step = results["train_step"]["default"]
    assert step["optimized_seconds"] > 0 and step["baseline_library_layers_seconds"] > 0
    assert [r["nfe"] for r in results["sampling"]["rows"][:4]] == [1, 5, 20, 64]
    assert "0 failed step(s)" in (tmp_path / "out" / "log.txt").read_text()
