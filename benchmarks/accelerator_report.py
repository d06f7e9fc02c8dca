"""The steps of `benchmarks/accelerator.sh` that need Python: evaluate the two runs, gather the results.

    python -m benchmarks.accelerator_report evaluate WORK --n N   # w12 evaluate, 4 samplers x 2 runs
    python -m benchmarks.accelerator_report collect WORK OUT      # at most 7 files into OUT (+ the log)

WORK holds runs/mnist_cases-full/{w1w2,w1} (the two `w12 train` runs), train_step_*.json, sampling.json,
discretization/ and eval/. `collect` writes OUT/results.json (everything, with the device and the run
times), OUT/results.md (the tables), and per run its samples.png and curves.png, and the discretization
figure. A step that failed or timed out leaves its part out; the report says which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from w12_jax.provenance import package_versions

CASES = ("w1w2", "w1")
SAMPLERS = {  # label -> `w12 evaluate` options
    "euler 1": ["--solver", "euler", "--nfe", "1"],
    "euler 2": ["--solver", "euler", "--nfe", "2"],
    "euler 5": ["--solver", "euler", "--nfe", "5"],
    "dopri5 1e-4": ["--solver", "dopri5", "--rtol", "1e-4"],
}
QUALITY = ("frechet_distance", "class_entropy", "confidence", "energy_distance")


def run_dir(work: Path, case: str) -> Path:
    return work / "runs" / "mnist_cases-full" / case


def evaluate(work: Path, n: int) -> int:
    """`w12 evaluate` of each run with each of SAMPLERS, in this one process; returns the failures."""
    from w12_jax.cli import main as w12

    failures = 0
    for case in CASES:
        if not (run_dir(work, case) / "checkpoints").is_dir():
            print(f"accelerator_report: no run {run_dir(work, case)}; not evaluated", file=sys.stderr)
            failures += 1
            continue
        for label, options in SAMPLERS.items():
            out = work / "eval" / f"{case}-{label.replace(' ', '_')}.json"
            rc = w12(["evaluate", "--workdir", str(run_dir(work, case)), "--n", str(n), *options, "--out", str(out)])
            if rc == 130:  # interrupted (the script's time cap): stop here
                return failures + 1
            failures += rc != 0
    return failures


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))


def collect(work: Path, out: Path) -> dict:
    """Gather WORK into OUT; returns the results dict written to OUT/results.json."""
    import jax

    out.mkdir(parents=True, exist_ok=True)
    results = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
               "train_step": {p: _read(work / f"train_step_{p}.json") for p in ("highest", "default")
                              if (work / f"train_step_{p}.json").exists() or p == "default"},
               "sampling": _read(work / "sampling.json"),
               "discretization": _read(work / "discretization" / "results.json"),
               "runs": {}}
    lines = [f"# The paper's MNIST runs on {results['device']} ({results['backend']}, JAX {results['jax']})", ""]
    for case in CASES:
        d = run_dir(work, case)
        info, config = _read(d / "run_info.json"), _read(d / "config.json")
        evals = {label: _read(work / "eval" / f"{case}-{label.replace(' ', '_')}.json") for label in SAMPLERS}
        sessions = (info or {}).get("sessions", [])
        results["runs"][case] = {
            "iterations": sessions[-1].get("end_iteration") if sessions else None,
            "configured_iterations": (config or {}).get("iterations"),
            "compile_seconds": sum(s.get("compile_seconds", 0.0) for s in sessions) if sessions else None,
            "train_seconds": sum(s.get("train_seconds", 0.0) for s in sessions) if sessions else None,
            "evaluation": evals}
        for name in ("samples.png", "curves.png"):
            if (d / name).is_file():
                shutil.copyfile(d / name, out / f"{case}_{name}")
    fig = work / "discretization" / "figure3.png"
    if fig.is_file():
        shutil.copyfile(fig, out / "discretization.png")

    lines += ["## Training (`w12 train --preset mnist-<case>`)", "",
              "| case | iterations done / configured | compile s | train s | s per iteration |", "|---|---|---|---|---|"]
    for case, r in results["runs"].items():
        per = r["train_seconds"] / r["iterations"] if r["train_seconds"] and r["iterations"] else None
        lines.append(f"| {case} | {_fmt(r['iterations'])} / {_fmt(r['configured_iterations'])} | "
                     f"{_fmt(r['compile_seconds'])} | {_fmt(r['train_seconds'])} | {_fmt(per)} |")
    lines += ["", "## `w12 evaluate` (Fréchet distance / class entropy / NFE)", "",
              "| case | " + " | ".join(SAMPLERS) + " |", "|---|" + "---|" * len(SAMPLERS)]
    for case, r in results["runs"].items():
        cells = []
        for label in SAMPLERS:
            e = r["evaluation"][label]
            cells.append("–" if e is None else f"{_fmt(e.get('frechet_distance'))} / "
                                               f"{_fmt(e.get('class_entropy'))} / {e.get('nfe')}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "## Compiled training step (`benchmarks.train_step`)", "",
              "| matmul precision | step s | batched critic flow s | no indicators s | separately jitted s "
              "| fraction of matmul peak | matmul peak TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for p, r in results["train_step"].items():
        if r:
            lines.append(f"| {p} | {_fmt(r['optimized_seconds'])} | {_fmt(r['optimized_batched_critic_flow_seconds'])} | "
                         f"{_fmt(r['optimized_no_indicators_seconds'])} | {_fmt(r['baseline_library_layers_seconds'])} | "
                         f"{_fmt(r['fraction_of_peak'])} | {_fmt(r['matmul_peak_flops_per_s'] / 1e12)} |")
        else:
            lines.append(f"| {p} | not measured (step failed or timed out) |||||")
    if results["sampling"]:
        lines += ["", "## Sampling (`benchmarks.sampling`)", "", "| solver | NFE | samples/s |", "|---|---|---|"]
        lines += [f"| {r['solver']} | {r['nfe']} | {_fmt(r['samples_per_s'])} |" for r in results["sampling"]["rows"]]
    readme = work / "discretization" / "README.md"
    if readme.is_file():
        lines += ["", "## Discretization (`experiments.discretization --full`)", "",
                  readme.read_text().split("\n\n", 1)[-1].replace("![Figure 3](figure3.png)",
                                                                   "![Figure 3](discretization.png)")]
    missing = [k for k, v in (("train_step", results["train_step"]["default"]), ("sampling", results["sampling"]),
                              ("discretization", results["discretization"])) if v is None]
    if missing:
        lines += ["", f"Not measured (failed or out of time): {', '.join(missing)}."]
    (out / "results.json").write_text(json.dumps({**results, "versions": package_versions()}, indent=1) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate")
    p.add_argument("work", type=Path)
    p.add_argument("--n", type=int, default=1000)
    p = sub.add_parser("collect")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return 1 if evaluate(args.work, args.n) else 0
    collect(args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
