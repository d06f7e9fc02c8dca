"""Manifold learning (design.md §8, §10): moons and pinwheel in R^2 and zero-padded into R^7 and R^12,
W1⊕W2 vs W1-only vs W2-only. Distance to held-out data, mass off the data manifold, kinetic energy,
straightness; scatter plots of the first two coordinates with trajectories.

    python -m experiments.manifolds              # CPU schedule
    python -m experiments.manifolds --full       # the paper's 25000 iterations at lr 2e-5 / 1e-4
    python -m experiments.manifolds --full --only pinwheel-12d-w1w2 moons-12d-w1   # some of the 18 runs
    python -m experiments.manifolds --full --only pinwheel-2d-w1w2 pinwheel-7d-w1w2 pinwheel-12d-w1w2 \
        --out experiments/results/authors_sinkhorn     # the runs the authors publish Sinkhorn figures for

Beside the authors' Sinkhorn figures, the same measure the same way (`metrics.eps_scaling_sinkhorn_divergence`,
geomloss's estimator, 5000 generated against 5000 held-out points, first two coordinates) with its bootstrap
interval, and its floor: 5000 training points against the same held-out points.

The CPU schedule trains `--iterations` (default 2000) outer iterations at 10x the paper's learning rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import RESULTS, RUNS, command_line, lowdim_config, interval_cell, machine, markdown_table, train_or_diverge, \
    versions  # noqa: E402
from w12_jax import intervals, metrics  # noqa: E402
from w12_jax.evaluation import evaluate, floor_samples  # noqa: E402
from w12_jax.data import load_config_dataset  # noqa: E402
from w12_jax.sample import generate  # noqa: E402

DATASETS, DIMS, CASES = ("moons", "pinwheel"), (2, 7, 12), ("w1w2", "w1", "w2")
COLUMNS = ("sinkhorn_divergence", "energy_distance", "energy_distance_reference", "sliced_w2", "off_manifold_mass",
           "kinetic_energy", "straight_line_bound", "straightness_ratio")
# the authors' notebooks: debiased Sinkhorn, cost ½|x − y|², eps = 0.0025, first two coordinates, 5000 vs 5000
# points (design.md §8); W1⊕W2 on pinwheel
AUTHORS_SINKHORN = {("pinwheel", 2, "w1w2"): 0.0079, ("pinwheel", 7, "w1w2"): 0.0099, ("pinwheel", 12, "w1w2"): 0.019}
AUTHORS_SAMPLES = 5000  # points a side in the authors' Sinkhorn figures
AUTHORS_RESAMPLES = 50  # bootstrap resamples of that estimate (~2 s each at 5000 points on 2 cores)


def authors_sinkhorn(x_T: np.ndarray, held: np.ndarray) -> dict:
    """The authors' Sinkhorn measure of samples x_T against held-out points, their way: geomloss's estimator
    on the first two coordinates of AUTHORS_SAMPLES points a side, with its 95 % bootstrap interval."""
    n = AUTHORS_SAMPLES
    value, interval = intervals.bootstrap_interval(
        lambda a, b: float(metrics.eps_scaling_sinkhorn_divergence(a, b)), (x_T[:n, :2], held[:n, :2]),
        num_resamples=AUTHORS_RESAMPLES)
    return {"value": value, "interval": list(interval), "samples": int(min(n, len(x_T))),
            "heldout": int(min(n, len(held)))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(RESULTS, "manifolds"))
    names = [f"{d}-{m}d-{c}" for d in DATASETS for m in DIMS for c in CASES]
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", default=names,
                        help="runs to train and report, named DATA-Dd-CASE (e.g. pinwheel-12d-w1w2); default all")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows, reports = [], {}
    fig, axes = plt.subplots(len(DATASETS) * len(DIMS), len(CASES), figsize=(3.2 * len(CASES), 3.0 * 6),
                             squeeze=False)
    for di, dataset in enumerate(DATASETS):
        for mi, dim in enumerate(DIMS):
            for ci, case in enumerate(CASES):
                cfg = lowdim_config(dataset, dim, case, args.full, args.iterations)
                name = f"{dataset}-{dim}d-{case}"
                ax = axes[di * len(DIMS) + mi, ci]
                if name not in args.only:
                    ax.set_axis_off()
                    continue
                state, status = train_or_diverge(cfg, os.path.join(RUNS, "manifolds" + ("-full" if args.full else ""),
                                                                   name))
                ds = load_config_dataset(cfg)
                ax.scatter(ds.heldout[:2000, 0], ds.heldout[:2000, 1], s=1, c="0.75")
                if state is None:
                    reports[name] = {"status": status}
                    rows.append([dataset, dim, case, "diverged", AUTHORS_SINKHORN.get((dataset, dim, case), "–")]
                                + ["–"] * (len(COLUMNS) + 2))
                    ax.set_title(f"{name}: diverged", fontsize=8)
                    continue
                report = evaluate(cfg, state.potential_ema, ds, num_samples=2000)
                held = ds.heldout[:AUTHORS_SAMPLES]
                x_T = np.asarray(generate(cfg, state.potential_ema, AUTHORS_SAMPLES, seed=1)[1].x_T)
                report["authors_sinkhorn"] = authors_sinkhorn(x_T, held)
                report["authors_sinkhorn_floor"] = authors_sinkhorn(floor_samples(ds, AUTHORS_SAMPLES), held)
                reports[name] = {"status": status, **report}
                rows.append([dataset, dim, case, f"{cfg.iterations} its",
                             AUTHORS_SINKHORN.get((dataset, dim, case), "–")]
                            + [interval_cell(report[k]["value"], report[k]["interval"], 2)
                               for k in ("authors_sinkhorn", "authors_sinkhorn_floor")]
                            + [interval_cell(report[c], report.get(c + "_interval"), 3) if c in report else "–"
                               for c in COLUMNS])
                _, res = generate(cfg, state.potential_ema, 300, save_points=cfg.num_steps + 1)
                path = np.asarray(res.path)
                ax.plot(path[:, :60, 0], path[:, :60, 1], lw=0.5, c="tab:blue", alpha=0.6)
                ax.scatter(path[-1, :, 0], path[-1, :, 1], s=2, c="tab:red")
                ax.set_title(f"{name}: ED {report['energy_distance']:.3g}", fontsize=8)
            for ax in axes[di * len(DIMS) + mi]:
                ax.set_xlim(-4.5, 4.5)
                ax.set_ylim(-4.5, 4.5)
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "scatter.png"), dpi=80)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**reports, "versions": versions()}, f, indent=2)
    header = ["data", "D", "case", "run", "authors' Sinkhorn", f"ours, their way ({AUTHORS_SAMPLES} v {AUTHORS_SAMPLES})",
              f"floor, their way ({AUTHORS_SAMPLES} training points)"] + list(COLUMNS)
    text = (f"# Manifolds: W1⊕W2 vs W1-only vs W2-only\n\nCommand: `{command_line('experiments.manifolds', argv)}`\n\nMachine: {machine()}\n\n"
            f"The authors' Sinkhorn figures beside ours measured their way: geomloss's debiased ε-scaling "
            f"estimator (cost ½|x − y|², blur 0.05, scaling 0.5; `metrics.eps_scaling_sinkhorn_divergence`, equal "
            f"to geomloss to 6 digits: benchmarks/results/sinkhorn_estimators.json) on the first two coordinates of "
            f"{AUTHORS_SAMPLES} generated against {AUTHORS_SAMPLES} held-out points, and its floor, "
            f"{AUTHORS_SAMPLES} training points against the same held-out points [95 % bootstrap intervals, "
            f"{AUTHORS_RESAMPLES} resamples]. `sinkhorn_divergence`: the same divergence solved to convergence "
            f"(ott-jax, threshold 1e-3) on 2000 against 2000 points [first-order interval]; "
            f"energy distance (U-statistic) and sliced W2² to 2000 held-out points; `energy_distance_reference` is "
            f"the reference Gaussian's own distance, for scale; off-manifold mass = mean norm of the padded "
            f"coordinates (0 on the manifold); straightness ratio = mean|x_T − x_0| / mean path length (1 = "
            f"straight).\n\n{markdown_table(header, rows)}\n\n![scatter](scatter.png)\n")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
