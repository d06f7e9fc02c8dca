"""One-step distillation of a trained W1⊕W2 flow (`w12_jax.distill`): does a generator G regressed on the flow's
own solve x0 ↦ Φ_T(x0) sample in one evaluation as well as the flow's adaptive solve?

    python -m experiments.distill --workdir runs/main0
    python -m experiments.distill --workdir RUN --pairs 20000 --pair-rtol 1e-4 --iterations 4000
    python -m experiments.distill --workdir RUN --warm-iterations 8000 --iterations 1000 --critic-weight 0.01
    python -m experiments.distill --workdir RUN --pairs 5000 --validation 500 --pair-steps 10 --batch 128 \
        --generator conv --hidden 1024 --warm-iterations 1000 --iterations 1450 --critic-weight 1 \
        --regression-weight 15 --lr 2e-3 --critic-divergence reverse_kl

Loads the run's latest checkpoint, or `--step`'s (its EMA parameters), draws `--pairs` x0 (a key no sampler of the
evaluation uses; the last `--validation` pairs held out), solves each with Dopri5 at `--pair-rtol` (or Euler at
`--pair-steps`), regresses G on them (after `--warm-iterations` steps of regression alone, cached in the workdir and
scored too) with `--critic-weight` w·mean φ(G(x0)) added when w > 0 (`--critic trained`: the run's φ trained beside
G as the run trained it, with `--critic-divergence`'s f (and `--critic-alpha`'s α) if given; `frozen`: held) and
scores G(x0) beside the flow's Euler 1 / 2 / 5 and Dopri5 samples from the same `--n` x0 (PRNGKey(0):
experiments.few_step's), with the training seconds of both. Each `--beside` run (another flow from the same
reference, e.g. OT-CFM) is scored and drawn from the same x0 beside them. The last command above is the best
one-step recipe measured (experiments/results/distill, seventh section: 45 ± 6 over three seeds from 600-iteration
runs, level with the main job's adaptive solve, at the main job's CPU time; with the run's KL critic,
`--regression-weight 30`: 53 ± 6); it is also the command `w12 distill` (`distill.DistillRecipe`), which keeps G.
`--ema-decay d` also scores G's parameter average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from functools import partial

import jax
import numpy as np

from experiments.common import DIGIT_HEADER, QUICK_REFERENCE, QUICK_SAMPLERS, RESULTS, command_line, digit_cells, \
    digit_floor_text, digit_quality, digit_rows_figure, machine, markdown_table, measured, restore_digit_run, \
    training_seconds, write_results
from w12_jax.classifier import load_or_train_classifier
from w12_jax.config import DIVERGENCES, Config, ConfigError
from w12_jax.data import load_config_dataset
from w12_jax.distill import GENERATORS, TrainedCritic, distill, distilled_sample
from w12_jax.evaluation import sampler_samples
from w12_jax.reflow import reflow_pairs
from w12_jax.sample import generate
from w12_jax.train import build_model, critic_values

def cached_pairs(workdir: str, cfg, state, n: int, seed: int, solve: dict):
    """(x0, x1, seconds): `reflow.reflow_pairs` of the run's EMA parameters, kept in workdir/distill_pairs_<step>.npz
    with their seed, solve, checkpoint step and the seconds they took (per pair: a cached set of m >= n pairs
    gives its first n at n/m of its time)."""
    path = os.path.join(workdir, f"distill_pairs_{int(state.step)}.npz")
    key = json.dumps({"seed": seed, "solve": solve, "step": int(state.step)}, sort_keys=True)
    if os.path.exists(path):
        stored = np.load(path)
        if str(stored["key"]) == key and len(stored["x0"]) >= n:
            return stored["x0"][:n], stored["x1"][:n], float(stored["seconds"]) * n / len(stored["x0"])
    start = time.perf_counter()
    x0, x1 = reflow_pairs(cfg, state.potential_ema, n, seed=seed, **solve)
    seconds = time.perf_counter() - start
    np.savez(path, x0=x0, x1=x1, seconds=seconds, key=key)
    return x0, x1, seconds


def cached_warm_start(workdir: str, step: int, pairs_key: dict, train):
    """(params, seconds): G regressed alone, `train()` -> (params, seconds) run once per settings and kept
    in workdir/distill_warm_<step>_<hash>.msgpack with its settings and seconds."""
    import hashlib

    from flax import serialization

    key = json.dumps(pairs_key, sort_keys=True)
    path = os.path.join(workdir, f"distill_warm_{step}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.msgpack")
    if os.path.exists(path):
        with open(path, "rb") as f:
            stored = serialization.msgpack_restore(f.read())
        if stored["key"] == key:
            return stored["params"], float(stored["seconds"])
    params, seconds = train()
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize({"key": key, "params": jax.device_get(params), "seconds": seconds}))
    return params, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run (its checkpoints/ folder)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint to distill (default: the latest)")
    parser.add_argument("--pairs", type=int, default=20_000, help="pairs (x0, Φ_T(x0)), validation included")
    parser.add_argument("--validation", type=int, default=1000, help="pairs held out of the regression")
    parser.add_argument("--pair-rtol", type=float, default=1e-4, help="Dopri5 rtol = atol of the teacher's solve")
    parser.add_argument("--pair-steps", type=int, default=0, help="> 0: Euler with this many steps instead")
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--generator", choices=GENERATORS, default="mlp",
                        help="G: x0 + MLP(x0), or an MLP into a conv decoder (w12_jax.distill.ConvGenerator)")
    parser.add_argument("--hidden", default="1024,1024,1024", help="G's MLP widths")
    parser.add_argument("--channels", default="64,32,16", help="the conv decoder's widths (--generator conv)")
    parser.add_argument("--critic-weight", type=float, default=0.0,
                        help="> 0: add w·mean φ(G(x0)), the flow's terminal cost, φ the run's critic")
    parser.add_argument("--regression-weight", type=float, default=1.0,
                        help="r of r·MSE + w·mean φ(G(x0)) in the critic phase (0: the critic alone)")
    parser.add_argument("--critic", choices=("trained", "frozen"), default="trained",
                        help="φ trained beside G as the run trained it (n_critic steps per G step), or held")
    parser.add_argument("--n-critic", type=int, default=None,
                        help="Adam steps of the trained φ per G step (default: the run's n_critic)")
    parser.add_argument("--critic-divergence", choices=DIVERGENCES, default=None,
                        help="f of the trained φ's dual (default: the run's): G's term stays w·mean φ(G(x0)), φ "
                             "starts from the run's network with this f's output map")
    parser.add_argument("--critic-alpha", type=float, default=None,
                        help="α of --critic-divergence alpha (default: the run's): > 1, or < 1 and ≠ 0; α < 0 "
                             "charges a digit G draws too rarely more than the reverse KL (α → 0) does")
    parser.add_argument("--warm-iterations", type=int, default=0,
                        help="regression-only steps before the --iterations with the critic term (cached)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam, cosine decay to 0")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="d > 0: also score the moving average of G's parameters over the critic phase "
                             "(e ← d·e + (1 − d)·p per step), beside the last parameters")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1, help="seed of the pairs' x0 and of G's training")
    parser.add_argument("--n", type=int, default=1000, help="evaluation samples (x0 of PRNGKey(0))")
    parser.add_argument("--out", default=os.path.join(RESULTS, "distill"))
    parser.add_argument("--stem", default="", help="suffix of the results files (results<stem>.json)")
    parser.add_argument("--beside", action="append", default=[], metavar="WORKDIR",
                        help="another trained run from the same reference, scored and drawn from the same x0 "
                             "(repeatable)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.n_critic is not None and args.n_critic < 1:
        parser.error(f"--n-critic must be >= 1, got {args.n_critic}")
    if args.critic_divergence and (not args.critic_weight or args.critic != "trained"):
        parser.error("--critic-divergence needs a trained critic (--critic-weight > 0, --critic trained)")
    if args.critic_alpha is not None and args.critic_divergence != "alpha":
        parser.error("--critic-alpha needs --critic-divergence alpha")
    if args.critic_alpha is not None:  # the config's rule for alpha, checked before the run is loaded
        try:
            Config(divergence="alpha", alpha=args.critic_alpha)
        except ConfigError as e:
            parser.error(f"--critic-alpha: {e}")
    if args.regression_weight < 0 or (args.regression_weight == 0 and not args.critic_weight):
        parser.error(f"--regression-weight must be >= 0, and > 0 without --critic-weight, got {args.regression_weight}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.warm_iterations < 0:
        parser.error(f"--warm-iterations must be >= 0, got {args.warm_iterations}")
    if args.pairs <= args.validation:
        parser.error(f"--pairs ({args.pairs}) must exceed --validation ({args.validation})")
    hidden = tuple(int(w) for w in args.hidden.split(","))
    channels = tuple(int(w) for w in args.channels.split(","))
    workdir = args.workdir.rstrip("/")
    state, cfg = restore_digit_run(workdir, "distill", args.step)
    x0, _ = generate(cfg, state.potential_ema, args.n, num_steps=1)  # PRNGKey(0): few_step's x0
    beside = {}
    for other in (w.rstrip("/") for w in args.beside):
        o_state, o_cfg = beside[other] = restore_digit_run(other, "distill")
        if not np.array_equal(generate(o_cfg, o_state.potential_ema, args.n, num_steps=1)[0], x0):
            raise SystemExit(f"--beside {other}: its reference draws other x0 than {workdir}'s; a run beside G "
                             f"needs the same reference, reference_block included")

    solve = ({"solver": "euler", "num_steps": args.pair_steps} if args.pair_steps > 0
             else {"solver": "dopri5", "rtol": args.pair_rtol, "atol": args.pair_rtol})
    solve_text = (f"Euler, {args.pair_steps} steps" if args.pair_steps > 0
                  else f"Dopri5, rtol = atol = {args.pair_rtol:g}")
    x0_pairs, x1_pairs, pair_seconds = cached_pairs(workdir, cfg, state, args.pairs, args.seed, solve)
    print(f"{args.pairs} pairs ({solve_text}) in {pair_seconds:.0f} s")
    dataset = load_config_dataset(cfg)
    model = build_model(cfg)
    critic = None
    critic_cfg = dataclasses.replace(cfg, n_critic=args.n_critic or cfg.n_critic,
                                     divergence=args.critic_divergence or cfg.divergence,
                                     alpha=cfg.alpha if args.critic_alpha is None else args.critic_alpha)
    if args.critic_weight and args.critic == "frozen":
        critic = partial(critic_values, model, state.discriminator_params)
    elif args.critic_weight:
        critic_model = model if critic_cfg == cfg else build_model(critic_cfg)
        critic = TrainedCritic(critic_model, state.discriminator_params, np.asarray(dataset.train))
    run = partial(distill, x0_pairs, x1_pairs, hidden=hidden, lr=args.lr, batch_size=args.batch,
                  validation=args.validation, progress=True, architecture=args.generator, channels=channels)
    conv = {"generator": args.generator, "channels": list(channels)} if args.generator == "conv" else {}
    warm, warm_seconds = None, 0.0
    if args.warm_iterations:
        def train_warm():
            start = time.perf_counter()
            _, params, _ = run(iterations=args.warm_iterations, key=jax.random.PRNGKey(args.seed))
            return params, time.perf_counter() - start

        warm, warm_seconds = cached_warm_start(workdir, int(state.step), {
            "seed": args.seed, "solve": solve, "pairs": args.pairs, "validation": args.validation,
            "hidden": list(hidden), "lr": args.lr, "batch": args.batch, "iterations": args.warm_iterations,
            **conv},
            train_warm)
    start = time.perf_counter()
    second_seed = args.seed + 1000 * (warm is not None)  # after a warm start, batches of another stream
    generator, params, history = run(iterations=args.iterations, key=jax.random.PRNGKey(second_seed), critic=critic,
                                     critic_weight=args.critic_weight, regression_weight=args.regression_weight,
                                     init_params=warm, ema_decay=args.ema_decay)
    distill_seconds = warm_seconds + time.perf_counter() - start

    classifier, accuracy = load_or_train_classifier()
    quality = digit_quality(classifier, accuracy, dataset)
    samplers = QUICK_SAMPLERS + [QUICK_REFERENCE]

    def scored_flow(run_dir: str, run_state, run_cfg) -> tuple[dict, dict, list, float]:
        """(flow, per-sampler quality, the first ten samples per sampler, training seconds up to the checkpoint:
        a constant-rate share) of a run's EMA flow from the shared x0."""
        flow, per_sampler = measured(run_dir, run_cfg, run_state, x0, quality, QUICK_SAMPLERS, QUICK_REFERENCE, {},
                                     f"few_step_quick_{int(run_state.step)}.json")
        return (flow, per_sampler, sampler_samples(run_cfg, run_state.potential_ema, x0[:10], samplers),
                training_seconds(run_dir) * int(run_state.step) / run_cfg.iterations)

    flow, per_sampler, flow_rows, teacher_seconds = scored_flow(workdir, state, cfg)
    x_student = distilled_sample(generator, params, x0)
    student = {"nfe": 1, **quality(x_student)}
    rows = [["flow", label, r["nfe"], *digit_cells(r)] for label, r in per_sampler.items()]
    rows.append(["distilled G", "one evaluation", 1, *digit_cells(student)])
    warm_rows, warm_labels = [], []
    if warm is not None:  # the regression alone, from the same x0: what the critic term changed
        x_warm = distilled_sample(generator, warm, x0)
        results_warm = {"nfe": 1, **quality(x_warm)}
        rows.insert(-1, ["G, regression alone", f"{args.warm_iterations} steps", 1, *digit_cells(results_warm)])
        warm_rows, warm_labels = [x_warm[:10]], ["G alone"]
    ema_rows, ema_labels = [], []
    if args.ema_decay:  # the same run's parameter average: G at no extra training
        x_ema = distilled_sample(generator, history["ema_params"], x0)
        student_ema = {"nfe": 1, **quality(x_ema)}
        rows.append([f"distilled G, EMA {args.ema_decay:g}", "one evaluation", 1, *digit_cells(student_ema)])
        ema_rows, ema_labels = [x_ema[:10]], ["G EMA"]
    labels = [label for label, _ in samplers]
    grids = {f"{workdir}: flow, then G": flow_rows + warm_rows + [x_student[:10]] + ema_rows}
    results_beside = {}
    for other, (o_state, o_cfg) in beside.items():
        o_flow, o_samplers, o_rows, o_seconds = scored_flow(other, o_state, o_cfg)
        results_beside[other] = {"flow": o_flow, "samplers": o_samplers, "objective": o_cfg.objective,
                                 "velocity_field": o_cfg.velocity_field, "iterations": int(o_state.step),
                                 "training_seconds": o_seconds}
        rows += [[other, label, r["nfe"], *digit_cells(r)] for label, r in o_samplers.items()]
        blank = np.full_like(x_student[:10], 0.5)  # no G of this run: a grey strip
        grids[f"{other}: flow"] = o_rows + [blank] * (len(warm_rows) + 1 + len(ema_rows))
    distilled = {"pairs": args.pairs, "validation": args.validation, "pair_solve": solve,
                 "critic_weight": args.critic_weight, "critic": args.critic if args.critic_weight else None,
                 "regression_weight": args.regression_weight,
                 "n_critic": critic_cfg.n_critic if args.critic_weight else None,
                 "critic_divergence": critic_cfg.divergence if args.critic_weight else None,
                 **({"critic_alpha": critic_cfg.alpha} if args.critic_weight and critic_cfg.divergence == "alpha"
                    else {}),
                 "warm_iterations": args.warm_iterations, "warm_seconds": warm_seconds,
                 "dual_last_100": float(np.mean(history["dual"][-100:])) if "dual" in history else None,
                 "generator": args.generator, "hidden": list(hidden),
                 "channels": list(channels) if args.generator == "conv" else None,
                 "iterations": args.iterations, "lr": args.lr, "ema_decay": args.ema_decay, "batch": args.batch,
                 "seed": args.seed,
                 "pair_seconds": pair_seconds, "distill_seconds": distill_seconds,
                 "teacher_training_seconds": teacher_seconds,
                 "loss_first_100": float(np.mean(history["train"][:100])),
                 "loss_last_100": float(np.mean(history["train"][-100:])),
                 "validation_loss": history["validation"]}
    results = {"workdir": workdir, "flow": flow, "samplers": per_sampler, "distilled": student, "distill": distilled}
    if warm is not None:
        results["warm_start"] = results_warm
    if args.ema_decay:
        results["distilled_ema"] = student_ema
    if results_beside:
        results["beside"] = results_beside
    os.makedirs(args.out, exist_ok=True)
    figure = f"digits{args.stem}.png"
    digit_rows_figure(grids, labels + warm_labels + ["G (1 NFE)"] + ema_labels, os.path.join(args.out, figure))
    results["floor"], floor_text = digit_floor_text(cfg, dataset, args.n)
    val = history["validation"][-1][1] if history["validation"] else float("nan")
    generator_text = (f"x0 + MLP {'-'.join(map(str, hidden))} (silu)" if args.generator == "mlp" else
                      f"MLP {'-'.join(map(str, hidden))} into a conv decoder {'-'.join(map(str, channels))} (silu)")
    warm_text = f"{args.warm_iterations} steps of regression, then " if args.warm_iterations else ""
    critic_text = (f", critic term w = {args.critic_weight:g}"
                   + (f", regression weight {args.regression_weight:g}" if args.regression_weight != 1 else "")
                   + f", φ {args.critic}"
                   + (f" ({distilled['n_critic']} Adam steps per G step, f = {distilled['critic_divergence']}"
                      + (f", α = {distilled['critic_alpha']:g}" if "critic_alpha" in distilled else "") + ")"
                      if args.critic == "trained" else "")
                   + (f", its dual {distilled['dual_last_100']:.3g} over the last 100 steps"
                      if distilled["dual_last_100"] is not None else "") if args.critic_weight else "")
    text = (f"# One-step distillation of `{workdir}`\n\nCommand: `{command_line('experiments.distill', argv)}`\n\n"
            f"Machine: {machine()}\n\n{args.pairs} pairs ({solve_text}) in {pair_seconds:.0f} s; G: {generator_text}, "
            f"{warm_text}{args.iterations} Adam steps (B = {args.batch}, "
            f"lr {args.lr:g}, "
            f"cosine{critic_text}"
            f"{f'; its parameter EMA, d = {args.ema_decay:g}, scored too' if args.ema_decay else ''}) on "
            f"{args.pairs - args.validation} pairs in {distill_seconds:.0f} s (the flow: {int(state.step)} "
            f"iterations, {teacher_seconds:.0f} s of training). Training loss"
            f"{' (with the critic term)' if args.critic_weight else ''} {distilled['loss_first_100']:.4g} over the "
            f"first 100 steps, {distilled['loss_last_100']:.4g} over the last 100; regression loss per coordinate "
            f"{val:.4g} on the {args.validation} held-out pairs. "
            f"{args.n} samples from the same x0 per row"
            + "".join(f"; {o}: {r['objective']}, {r['velocity_field']} field, {r['iterations']} iterations, "
                      f"{r['training_seconds']:.0f} s of training" for o, r in results_beside.items())
            + ".\n\n"
            f"Each figure with its 95 % sampling interval.\n\n"
            f"{markdown_table(['model', 'sampler', 'NFE', *DIGIT_HEADER], rows)}\n\n{floor_text}\n\n"
            f"![digits]({figure})\n")
    write_results(args.out, results, text, stem=args.stem)


if __name__ == "__main__":
    main()
