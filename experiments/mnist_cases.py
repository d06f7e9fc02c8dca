"""The four cases of the paper on MNIST (design.md §4, §8): unregularized, W2 only, W1 only, W1⊕W2.

    python -m experiments.mnist_cases            # CPU schedule (see CPU_NETWORK), well under an hour
    python -m experiments.mnist_cases --full     # the paper's presets: 5000 iterations (200 diverging)

Reproduces the paper's Figure 2 (divergence estimate, kinetic energy, HJ residual, terminal residual vs
iteration, one line per case) and checks: the two cases without W1 diverge (NaN, or a terminal residual
that explodes) while the W1 cases train; the final kinetic energy of W1⊕W2 is at least 1.5x lower than
W1-only's (the authors logged ≈9.5 vs ≈18).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import RESULTS, RUNS, command_line, machine, markdown_table, train_or_diverge, versions  # noqa: E402
from w12_jax.plots import read_jsonl  # noqa: E402
from w12_jax.presets import CASE_NAMES, get_preset  # noqa: E402

CASES = ("w1w2", "w1", "w2", "none")
CURVES = (("divergence", "divergence estimate"), ("kinetic_energy", "kinetic energy"),
          ("hj_residual", "HJ residual"), ("terminal_residual", "terminal residual"))
# CPU schedule: the paper's settings (T, h, lam, L, mu, n_D, lr, Adam) on MLP networks that fit the CPU budget
# (those of the main job until 2026-11-23, with which results/mnist_cases was measured), for `iterations`
# outer iterations; diverging cases get 200.
CPU_ITERATIONS = 1500
CPU_NETWORK = dict(architecture="mlp", discriminator_architecture="same", potential_hidden=(256, 256, 256),
                   discriminator_hidden=(512, 512, 512), batch_size=100)


def config_for(case: str, args):
    cfg = get_preset(f"mnist-{case}")
    if args.full:
        return cfg
    iterations = args.iterations if cfg.use_w1 else min(200, args.iterations)
    return dataclasses.replace(cfg, **CPU_NETWORK, iterations=iterations, checkpoint_every=max(iterations // 4, 1),
                               sample_every=iterations, log_every=10)


def summary(records, start=100):
    """Final values and means over iterations >= start (what the authors' notebook prints)."""
    finite = [r for r in records if all(np.isfinite(r[k]) for k, _ in CURVES)]
    last = finite[-1] if finite else {}
    late = [r for r in finite if r["iteration"] >= start]
    mean = {k: float(np.mean([r[k] for r in late])) if late else float("nan") for k, _ in CURVES}
    return last, mean


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--iterations", type=int, default=CPU_ITERATIONS)
    parser.add_argument("--out", default=os.path.join(RESULTS, "mnist_cases"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = os.path.join(RUNS, "mnist_cases" + ("-full" if args.full else ""))
    results, rows = {}, []
    for case in CASES:
        cfg = config_for(case, args)
        workdir = os.path.join(runs, case)
        state, status = train_or_diverge(cfg, workdir)
        records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        last, mean = summary(records)
        nan_at = next((r["iteration"] for r in records if not all(np.isfinite(r[k]) for k, _ in CURVES)), None)
        term = [r["terminal_residual"] for r in records if np.isfinite(r["terminal_residual"])]
        results[case] = {"status": status, "config": cfg.to_dict(), "records": records, "last": last,
                         "mean_from_100": mean, "nan_at": nan_at,
                         "terminal_residual_growth": (max(term) / term[0]) if term else float("nan")}
        growth = results[case]["terminal_residual_growth"]
        outcome = ("diverged (NaN/Inf)" if state is None or nan_at is not None
                   else f"terminal residual x{growth:.0f}: exploding" if growth > 10 else "trained")
        rows.append([CASE_NAMES[case], outcome,
                     nan_at if nan_at is not None else "–", last.get("iteration", "–"),
                     last.get("divergence", "–"), last.get("kinetic_energy", "–"), last.get("hj_residual", "–"),
                     last.get("terminal_residual", "–"), mean["kinetic_energy"], mean["hj_residual"],
                     growth, last.get("grad_phi_gen_mean", "–")])

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, (key, title) in zip(axes, CURVES):
        for case in CASES:
            recs = results[case]["records"]
            ax.plot([r["iteration"] for r in recs], [r[key] for r in recs], label=CASE_NAMES[case], lw=1)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_yscale("log" if key != "divergence" else "linear")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "figure2.png"), dpi=90)

    ke_w1w2, ke_w1 = (results[c]["last"].get("kinetic_energy", float("nan")) for c in ("w1w2", "w1"))
    checks = [
        ("unregularized and W2-only diverge (NaN, or terminal residual grows > 10x)",
         all(results[c]["nan_at"] is not None or results[c]["terminal_residual_growth"] > 10 for c in ("w2", "none"))),
        ("W1 and W1⊕W2 train to the end with finite metrics",
         all(results[c]["status"] == "trained" for c in ("w1", "w1w2"))),
        (f"final kinetic energy W1-only / W1⊕W2 = {ke_w1 / ke_w1w2:.2f} >= 1.5", ke_w1 / ke_w1w2 >= 1.5),
    ]
    header = ["case", "outcome", "NaN at", "last finite it.", "divergence", "kinetic energy", "HJ residual",
              "terminal residual", "mean KE (it ≥ 100)", "mean HJ (it ≥ 100)", "max/first terminal res.",
              "mean |∇φ| generated"]
    text = (f"# MNIST: the four cases of the paper\n\nCommand: `{command_line('experiments.mnist_cases', argv)}`\n\n"
            f"Machine: {machine()}\n\nConfig of each case: `results.json` (`config`).\n\n"
            f"{markdown_table(header, rows)}\n\n"
            + "\n".join(f"- [{'x' if ok else ' '}] {what}" for what, ok in checks)
            + "\n\n![Figure 2](figure2.png)\n")
    for case in CASES:
        if os.path.exists(os.path.join(runs, case, "samples.png")):
            text += f"\n{CASE_NAMES[case]}: ![{case}]({case}_samples.png)\n"
            shutil.copyfile(os.path.join(runs, case, "samples.png"), os.path.join(args.out, f"{case}_samples.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**{c: {k: v for k, v in r.items()} for c, r in results.items()}, "versions": versions()}, f,
                  indent=1, default=float)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
