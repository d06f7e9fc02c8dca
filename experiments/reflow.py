"""Reflow of a trained W1⊕W2 flow (`w12_jax.reflow`): does regressing the field on the flow's own straight
chords x0 → Φ_T(x0) make one and two Euler steps sample as well as the adaptive solve?

    python -m experiments.reflow --workdir runs/experiments/few_step/mnist/straight
    python -m experiments.reflow --workdir RUN --pairs 10000 --pair-steps 32 --iterations 3000

Loads the run's latest checkpoint, draws `--pairs` x0 (a key no sampler of the evaluation uses) and solves each
with Euler at `--pair-steps` steps, fine-tunes U on those pairs, saves the result as a checkpoint of
`<workdir>-reflow` (so `w12 sample` / `w12 evaluate --workdir <workdir>-reflow` use it) and reports
experiments.few_step's sampler table for the run before and after, from the same x0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from experiments.common import DIGIT_HEADER, RESULTS, command_line, digit_cells, digit_floor_text, digit_quality, \
    digit_rows_figure, machine, markdown_table, measured, restore_digit_run, write_results
from w12_jax.checkpoint import Checkpointer
from w12_jax.classifier import load_or_train_classifier
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import few_step_samplers, sampler_samples
from w12_jax.reflow import reflow, reflow_pairs
from w12_jax.sample import generate

FINE = ("euler 320 (fine)", {"solver": "euler", "num_steps": 320})  # the reference solve of experiments.few_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run (its checkpoints/ folder)")
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--pair-steps", type=int, default=32, help="Euler steps of the solve that gives x1")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=1, help="seed of the pairs' x0 and of the reflow steps")
    parser.add_argument("--n", type=int, default=1000, help="evaluation samples (x0 of PRNGKey(0))")
    parser.add_argument("--out", default=os.path.join(RESULTS, "reflow"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    workdir = args.workdir.rstrip("/")
    state, cfg = restore_digit_run(workdir, "reflow")

    start = time.perf_counter()
    x0_pairs, x1_pairs = reflow_pairs(cfg, state.potential_ema, args.pairs, seed=args.seed, solver="euler",
                                      num_steps=args.pair_steps)
    pair_seconds = time.perf_counter() - start
    print(f"{args.pairs} pairs by Euler with {args.pair_steps} steps in {pair_seconds:.0f} s")
    start = time.perf_counter()
    params, losses = reflow(cfg, state.potential_ema, x0_pairs, x1_pairs, iterations=args.iterations,
                            key=jax.random.PRNGKey(args.seed), lr=args.lr, progress=True)
    reflow_seconds = time.perf_counter() - start
    reflowed = state.replace(step=state.step + args.iterations, potential_params=params, potential_ema=params)
    out_dir = workdir + "-reflow"
    with Checkpointer(os.path.join(out_dir, "checkpoints")) as ckpt:
        ckpt.save(reflowed, cfg, force=True)

    classifier, accuracy = load_or_train_classifier()
    quality = digit_quality(classifier, accuracy, load_config_dataset(cfg))
    x0, _ = generate(cfg, state.potential_ema, args.n, num_steps=1)  # PRNGKey(0): few_step's x0
    rows, results, grids = [], {}, {}
    for name, run_dir, st in (("before", workdir, state), ("after reflow", out_dir, reflowed)):
        flow, per_sampler = measured(run_dir, cfg, st, x0, quality, few_step_samplers(), FINE, {"fine_steps": FINE[1]["num_steps"]},
                                     "few_step.json")
        results[name] = {"workdir": run_dir, "flow": flow, "samplers": per_sampler}
        for label, r in per_sampler.items():
            rows.append([name, label, r["nfe"], *digit_cells(r), r["deviation"], flow["ke_over_bound"],
                         flow["straightness_ratio"]])
        grids[name] = sampler_samples(cfg, st.potential_ema, x0[:8], few_step_samplers())
    results["reflow"] = {"pairs": args.pairs, "pair_steps": args.pair_steps, "iterations": args.iterations,
                         "lr": args.lr, "seed": args.seed, "pair_seconds": pair_seconds,
                         "reflow_seconds": reflow_seconds,
                         "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:]))}
    os.makedirs(args.out, exist_ok=True)
    digit_rows_figure(grids, [label for label, _ in few_step_samplers()], os.path.join(args.out, "digits.png"))
    header = ["flow", "sampler", "NFE", *DIGIT_HEADER, "deviation vs fine", "KE / bound", "straightness"]
    results["floor"], floor_text = digit_floor_text(cfg, load_config_dataset(cfg), args.n)
    r = results["reflow"]
    text = (f"# Reflow of `{workdir}`\n\nCommand: `{command_line('experiments.reflow', argv)}`\n\n"
            f"Machine: {machine()}\n\n{args.pairs} pairs (Euler, {args.pair_steps} steps) in {pair_seconds:.0f} s; "
            f"{args.iterations} reflow iterations (B = {cfg.batch_size}, Adam lr {args.lr:g}) in "
            f"{reflow_seconds:.0f} s; reflow loss {r['loss_first_100']:.4g} over the first 100 iterations, "
            f"{r['loss_last_100']:.4g} over the last 100. {args.n} samples from the same x0 per sampler.\n\n"
            f"Each figure with its 95 % sampling interval.\n\n{markdown_table(header, rows)}\n\n{floor_text}\n\n"
            f"![digits](digits.png)\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
