"""Manifold learning (DESIGN.md §8, §10): moons and pinwheel in R^2 and zero-padded into R^7 and R^12,
W1⊕W2 vs W1-only vs W2-only. Distance to held-out data, mass off the data manifold, kinetic energy,
straightness; scatter plots of the first two coordinates with trajectories.

    python -m experiments.manifolds              # CPU schedule
    python -m experiments.manifolds --full       # the paper's 25000 iterations at lr 2e-5 / 1e-4
    python -m experiments.manifolds --full --only pinwheel-12d-w1w2 moons-12d-w1   # some of the 18 runs

The CPU schedule trains `--iterations` (default 2000) outer iterations at 10x the paper's learning rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import RESULTS, RUNS, command_line, machine, markdown_table, train_or_diverge, versions  # noqa: E402
from w12_jax.evaluation import evaluate  # noqa: E402
from w12_jax.loop import generate, load_config_dataset  # noqa: E402
from w12_jax.presets import get_preset  # noqa: E402

DATASETS, DIMS, CASES = ("moons", "pinwheel"), (2, 7, 12), ("w1w2", "w1", "w2")
COLUMNS = ("sinkhorn_divergence", "energy_distance", "energy_distance_reference", "sliced_w2", "off_manifold_mass",
           "kinetic_energy", "straight_line_bound", "straightness_ratio")
# the authors' notebooks: debiased Sinkhorn, cost ½|x − y|², eps = 0.0025, first two coordinates, 5000 vs 5000
# points (DESIGN.md §8); W1⊕W2 on pinwheel
AUTHORS_SINKHORN = {("pinwheel", 2, "w1w2"): 0.0079, ("pinwheel", 7, "w1w2"): 0.0099, ("pinwheel", 12, "w1w2"): 0.019}


def config_for(dataset, dim, case, args):
    cfg = get_preset(f"{dataset}{'' if dim == 2 else f'{dim}d'}-{case}")
    if args.full:
        return cfg
    return dataclasses.replace(cfg, iterations=args.iterations, lr_potential=10 * cfg.lr_potential,
                               lr_discriminator=10 * cfg.lr_discriminator, num_samples=20_000,
                               checkpoint_every=args.iterations, sample_every=args.iterations,
                               log_every=50, eval_samples=2000)


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
                cfg = config_for(dataset, dim, case, args)
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
                                + ["–"] * len(COLUMNS))
                    ax.set_title(f"{name}: diverged", fontsize=8)
                    continue
                report = evaluate(cfg, state.potential_ema, ds, num_samples=2000)
                reports[name] = {"status": status, **report}
                rows.append([dataset, dim, case, f"{cfg.iterations} its",
                             AUTHORS_SINKHORN.get((dataset, dim, case), "–")]
                            + [report.get(c, "–") for c in COLUMNS])
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
    header = ["data", "D", "case", "run", "authors' Sinkhorn"] + list(COLUMNS)
    text = (f"# Manifolds: W1⊕W2 vs W1-only vs W2-only\n\nCommand: `{command_line('experiments.manifolds', argv)}`\n\nMachine: {machine()}\n\n"
            f"Sinkhorn divergence as the authors measure it (debiased, cost ½|x − y|², eps = 0.0025, first two "
            f"coordinates) between 2000 samples and 2000 held-out points (theirs: 5000 and 5000); "
            f"energy distance (U-statistic) and sliced W2² to 2000 held-out points; `energy_distance_reference` is "
            f"the reference Gaussian's own distance, for scale; off-manifold mass = mean norm of the padded "
            f"coordinates (0 on the manifold); straightness ratio = mean|x_T − x_0| / mean path length (1 = "
            f"straight).\n\n{markdown_table(header, rows)}\n\n![scatter](scatter.png)\n")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
