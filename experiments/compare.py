"""W1⊕W2 against flow matching with the same data, over several training seeds (design.md §11).

    python -m experiments.compare                        # main job and yardstick, seeds 0 1 2; low-dim
    python -m experiments.compare --skip-lowdim          # MNIST only
    python -m experiments.compare --methods main otcfm icfm --seeds 0 --skip-lowdim   # one-seed extra rows
    python -m experiments.compare --skip-lowdim --reuse --seeds 0 1 2 3 4   # seeds 3, 4 added to results.json's

MNIST (mnist5k): the main job (preset mnist5k) against the yardstick, OT-CFM with a direct velocity field
(the potential's conv trunk and silu MLP with a 784-output head, as torchcfm uses), trained for the main job's
CPU time at the seconds per iteration measured side by side in one process (the budget: the ReLU main job's
2180 iterations, which today's main job matches in 1900); optional rows: the yardstick with ReLU, the main job
without its EMA, the ReLU main job, the job without the velocity penalty, I-CFM and OT-CFM of the conv
potential, at the same CPU time. Each (method, seed) trains in
its own workdir (a finished run is reused). Samplers: Euler at 1, 2, 5, 20 NFE and Dopri5 (rtol = atol =
1e-4) from the same x0; every figure with its 95 % sampling interval (`image_metrics.image_quality`), the floor of
training digits at the same sample size, and the seed mean ± sd with the Student-t interval of the mean.
Low-dimensional (seed 0): W1⊕W2, I-CFM and OT-CFM with the W1⊕W2 preset's networks on the manifolds
experiment's CPU schedule (2000 iterations, 10x the paper's learning rates); energy distance to held-out data
and mass off the 2-D manifold at 1 and 5 NFE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from benchmarks.train_step import side_by_side_seconds
from experiments.common import DIGIT_HEADER, RESULTS, RUNS, SEED_FIGURES, command_line, digit_cells, digit_quality, \
    seeds_cell, digit_rows_figure, interval_cell, lowdim_config, machine, markdown_table, measured, train_or_diverge, \
    training_seconds, write_results
from w12_jax import image_metrics, intervals
from w12_jax.classifier import load_or_train_classifier
from w12_jax.config import Config
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import DOPRI5, quality_floor, sampler_samples, vector_quality
from w12_jax.presets import MAIN_PLAIN, MAIN_RELU, MAIN_UNIFORM, get_preset
from w12_jax.sample import generate

MAIN_JOB = get_preset("mnist5k")
OTCFM_DIRECT = dataclasses.replace(get_preset("mnist5k-otcfm"), velocity_field="direct")
YARDSTICK = dataclasses.replace(OTCFM_DIRECT, potential_activation="silu")  # the main job's smooth MLP
# method -> (label, config); FIXED_ITERATIONS train their config's iterations, every other method the budget
MNIST_METHODS = {
    "main": ("W1⊕W2, the main job (preset mnist5k)", MAIN_JOB),
    "otcfm-direct-silu": ("OT-CFM, direct velocity field, silu in its MLP (the yardstick)", YARDSTICK),
    "otcfm-direct": ("OT-CFM, direct velocity field, ReLU (the yardstick until 2026-12-02)", OTCFM_DIRECT),
    "w1w2-uniform": ("W1⊕W2, the main job from the per-pixel U[0, 0.5] reference (the main job until 2026-12-05)",
                     MAIN_UNIFORM),
    "w1w2-silu": ("W1⊕W2, the main job until 2026-12-05 without its EMA (the last iterate of U)",
                  dataclasses.replace(MAIN_UNIFORM, ema_decay=0.0)),
    "w1w2-relu": ("W1⊕W2 with the paper's ReLU potential (the main job until 2026-12-02)", MAIN_RELU),
    "w1w2-plain": ("W1⊕W2 without the velocity penalty (the main job until 2026-11-27)", MAIN_PLAIN),
    "icfm": ("I-CFM, potential", get_preset("mnist5k-cfm")),
    "otcfm": ("OT-CFM, potential", get_preset("mnist5k-otcfm")),
    "w1w2-cfm600": ("W1⊕W2 (ReLU) + OT-CFM kept (cfm_weight 1), 600 iterations", dataclasses.replace(
        MAIN_RELU, cfm_weight=1.0, iterations=600)),
    "otcfm-direct-silu-block2": ("OT-CFM, direct velocity field, silu, from the 2×2-block reference",
                                 dataclasses.replace(YARDSTICK, reference_block=2)),
}
# trained for their config's iterations
FIXED_ITERATIONS = ("main", "w1w2-uniform", "w1w2-silu", "w1w2-relu", "w1w2-cfm600")
# the CPU budget of every other method: the ReLU main job's 2180 iterations, which the main job matches within
# the rounding to hundreds of iterations that every method gets (1900 iterations of the smooth potential)
BUDGET_METHOD = "w1w2-relu"
YARDSTICK_METHOD = "otcfm-direct-silu"  # the verdicts compare the main job with it
DEFAULT_METHODS = ("main", YARDSTICK_METHOD)
DEFAULT_SEEDS = (0, 1, 2)
LOWDIM_METHODS = {"w1w2": "W1⊕W2", "cfm": "I-CFM", "otcfm": "OT-CFM"}  # preset suffixes
MNIST_RUNS = os.path.join(RUNS, "compare", "mnist")


def reference_of(cfg: Config) -> tuple:
    """The fields that fix x0's distribution: flows that share them are scored from the same x0."""
    return (cfg.reference, cfg.reference_low, cfg.reference_high, cfg.reference_scale, cfg.reference_block)


def rates(methods, stored: dict | None = None) -> dict[str, float]:
    """Seconds per iteration of the main job, BUDGET_METHOD and `methods`, measured side by side in one process
    the first time and kept in MNIST_RUNS/seconds_per_iteration.json (they fix the equal-time iterations of the
    runs), or taken from `stored` (a results.json's) when that file is missing; a method added later is timed
    beside the main job and scaled to its stored rate."""
    os.makedirs(MNIST_RUNS, exist_ok=True)
    path = os.path.join(MNIST_RUNS, "seconds_per_iteration.json")
    per_it = dict(stored or {})
    if os.path.exists(path):
        with open(path) as f:
            per_it = json.load(f)
    missing = [m for m in dict.fromkeys(["main", BUDGET_METHOD, *methods]) if m not in per_it]
    if missing and per_it:
        ratio = side_by_side_seconds({m: MNIST_METHODS[m][1] for m in ["main"] + missing})
        per_it.update({m: per_it["main"] * ratio[m] / ratio["main"] for m in missing})
    elif missing:
        per_it = side_by_side_seconds({m: MNIST_METHODS[m][1] for m in missing})
    with open(path, "w") as f:
        json.dump(per_it, f)
    return per_it


def budget_seconds(per_it: dict[str, float]) -> float:
    """The CPU seconds every method trains for: BUDGET_METHOD's iterations at its side-by-side rate."""
    return MNIST_METHODS[BUDGET_METHOD][1].iterations * per_it[BUDGET_METHOD]


def run_config(method: str, seed: int, per_it: dict[str, float]) -> tuple[Config, str]:
    """(config, workdir) of `method` trained from training seed `seed`: the main job (and FIXED_ITERATIONS) as
    it is, any other method for the iterations that take `budget_seconds` at the side-by-side rates."""
    base = MNIST_METHODS[method][1]
    iterations = (base.iterations if method in FIXED_ITERATIONS
                  else int(round(budget_seconds(per_it) / per_it[method], -2)))
    cfg = dataclasses.replace(base, seed=seed, iterations=iterations,
                              checkpoint_every=min(iterations, base.checkpoint_every),
                              sample_every=min(iterations, base.sample_every))
    return cfg, os.path.join(MNIST_RUNS, f"{method}-seed{seed}")


EULER_NFE = (1, 2, 5, 20)
REFERENCE = DOPRI5  # the fine solve
PATH_POINTS = 65  # times of the reference path kept for the kinetic energy and straightness


def mnist_samplers(T: float) -> list[tuple[str, dict]]:
    """(label, `sample` kwargs): Euler at 1, 2, 5, 20 NFE and Dopri5 with rtol = atol = 1e-4."""
    return [(f"euler {k}", {"solver": "euler", "num_steps": k}) for k in EULER_NFE] + [REFERENCE]


def measure(workdir: str, cfg: Config, state, x0: np.ndarray, quality) -> dict:
    """`evaluation.measure_samplers` of `mnist_samplers` against the Dopri5 solve (PATH_POINTS times of its
    path), cached in workdir/compare.json."""
    flow, samplers = measured(workdir, cfg, state, x0, quality, mnist_samplers(cfg.T), REFERENCE,
                              {"reference": REFERENCE[0], "protocol": PROTOCOL}, "compare.json", PATH_POINTS)
    return {"flow": flow, "samplers": samplers}


PROTOCOL = 2  # the evaluation protocol of the cached measurements: fixed split, intervals, precision/recall


def _marked(run: dict, previous: dict) -> dict:
    """`run` of the previous results with the revision that measured it (kept from an earlier reuse)."""
    return {**run, "reused_from": run.get("reused_from", previous.get("revision"))}


def reusable(previous: dict | None, name: str, cfg: Config, workdir: str) -> dict | None:
    """The run `name` of a previous results.json's MNIST part (marked with the revision that measured it) when
    its workdir has no checkpoints here and its stored config is `cfg`; else None."""
    if previous is None or os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    run = previous["runs"].get(name)
    if run is None or "config" not in run or Config.from_dict(run["config"]).to_dict() != cfg.to_dict():
        return None
    return _marked(run, previous)


def mnist(args, previous: dict | None = None) -> tuple[dict, dict]:
    """(results: rates, floor, every run by "method-seedS" and the seed summary by method and sampler; digit
    grids by flow label for the first seed). With `previous` (the MNIST part of an earlier results.json, and its
    git revision under "revision"), a run with no workdir here and the same config is taken from it instead of
    trained (no digit grid then), and its runs that this command does not ask for are kept."""
    per_it = rates(args.methods, previous and previous["seconds_per_iteration"])
    classifier, accuracy = load_or_train_classifier()
    dataset = load_config_dataset(MAIN_JOB)  # the fixed split: one reference for every seed and method
    quality = digit_quality(classifier, accuracy, dataset)
    runs, grids, x0s = {}, {}, {}
    for method in args.methods:
        for seed in args.seeds:
            cfg, workdir = run_config(method, seed, per_it)
            label = MNIST_METHODS[method][0]
            name = f"{method}-seed{seed}"
            kept = reusable(previous, name, cfg, workdir)
            if kept is not None:
                runs[name] = kept
                continue
            state, status = train_or_diverge(cfg, workdir)
            if state is None:
                runs[name] = {"method": method, "seed": seed, "iterations": cfg.iterations, "status": status}
                continue
            params = state.potential_ema
            reference = reference_of(cfg)
            if reference not in x0s:  # the same x0 (PRNGKey(0)) for every flow from the same reference
                x0s[reference], _ = generate(cfg, params, args.n, num_steps=1)
            x0 = x0s[reference]
            report = measure(workdir, cfg, state, x0, quality)
            runs[name] = {"method": method, "seed": seed, "iterations": cfg.iterations, "config": cfg.to_dict(),
                          "status": status, "seconds_at_side_by_side_rate": cfg.iterations * per_it[method],
                          "training_seconds_as_run": training_seconds(workdir), **report}
            if seed == args.seeds[0]:
                grids[f"{label}, seed {seed}"] = sampler_samples(cfg, params, x0[:8], mnist_samplers(cfg.T))
    if previous is not None:  # the runs not asked for are kept; all in MNIST_METHODS order, then by seed
        runs = {**{k: _marked(r, previous) for k, r in previous["runs"].items() if k not in runs}, **runs}
        runs = dict(sorted(runs.items(), key=lambda kv: (list(MNIST_METHODS).index(kv[1]["method"]), kv[1]["seed"])))
    floor = quality_floor(MAIN_JOB, dataset, args.n)
    return {"seconds_per_iteration": per_it, "budget_seconds": budget_seconds(per_it),
            "n": args.n, "heldout": len(dataset.heldout[:args.n]), "floor": floor, "runs": runs, "summary": summarize(runs)}, grids


def summarize(runs: dict) -> dict:
    """{method: {sampler: {figure: seed_summary}}} over the runs that trained."""
    out = {}
    for r in runs.values():
        for label, q in r.get("samplers", {}).items():
            for figure in SEED_FIGURES:
                out.setdefault(r["method"], {}).setdefault(label, {}).setdefault(figure, []).append(q[figure])
    return {m: {label: {f: intervals.seed_summary(v) for f, v in figs.items()} for label, figs in by.items()}
            for m, by in out.items()}


def verdict(summary: dict, sampler: str, figure: str = "frechet_distance", lower_is_better: bool = True) -> str:
    """Which of the main job and the yardstick is ahead at `sampler`: only when the 95 % intervals of their
    seed means do not overlap."""
    a, b = (summary.get(m, {}).get(sampler, {}).get(figure) for m in ("main", YARDSTICK_METHOD))
    if a is None or b is None or a["interval"] is None or b["interval"] is None:
        return "–"
    if not intervals.separated(a["interval"], b["interval"]):
        return "intervals overlap: no claim"
    main_ahead = (a["mean"] < b["mean"]) == lower_is_better
    return "main job ahead" if main_ahead else "OT-CFM ahead"


def seeds_text(runs: dict) -> str:
    """'Training seeds 0, 1, 2 of each method', or per group of methods with the same seeds."""
    by_method = {}
    for r in runs.values():
        by_method.setdefault(r["method"], []).append(r["seed"])
    groups = {}
    for method, seeds in by_method.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(method)
    if len(groups) == 1:
        return f"Training seeds {', '.join(map(str, next(iter(groups))))} of each method"
    return "Training seeds " + "; ".join(f"{', '.join(map(str, seeds))} of {', '.join(methods)}"
                                         for seeds, methods in groups.items())


def mnist_text(results: dict) -> str:
    """The markdown of the MNIST part: seed summary with verdicts, coverage, the floor, every run."""
    summary, floor = results["summary"], results["floor"]
    methods = [m for m in MNIST_METHODS if m in summary]
    samplers = list(next(iter(summary.values()))) if summary else []
    fd_rows = [[label] + [seeds_cell(summary[m][label]["frechet_distance"]) for m in methods]
               + [verdict(summary, label)] + [verdict(summary, label, f, lower_is_better=False)
                                              for f in ("precision", "recall")] for label in samplers]
    cover_rows = [[label, MNIST_METHODS[m][0]] + [seeds_cell(summary[m][label][f], 2, interval=False)
                                                  for f in SEED_FIGURES[1:]]
                  for label in samplers for m in methods]
    floor_row = [["training digits (the floor)", *digit_cells(floor)]]
    run_rows = []
    for name, r in results["runs"].items():
        if "samplers" not in r:
            run_rows.append([name, r["iterations"], "diverged"] + ["–"] * 8)
            continue
        for label, q in r["samplers"].items():
            run_rows.append([name, r["iterations"], label, q["nfe"], *digit_cells(q),
                             f"{r['flow']['ke_over_bound']:.3f}"])
    per_it = results["seconds_per_iteration"]
    n = results["n"]
    return (
        f"## MNIST (mnist5k)\n\n{seeds_text(results['runs'])}; the main job trains "
        f"{MAIN_JOB.iterations} iterations (the CPU time of the ReLU main job's "
        f"{MNIST_METHODS[BUDGET_METHOD][1].iterations}, rounded to hundreds), every other method the iterations that "
        f"take that budget at the rates measured side by side in one process ("
        + ", ".join(f"{m} {s:.4f} s" for m, s in per_it.items())
        + f" per iteration; budget {results['budget_seconds']:.0f} s). Every flow is scored on {n} samples from "
        f"the same x0 (one draw per reference distribution) against the {results['heldout']} held-out digits of "
        f"the fixed split (no run trains on them), "
        f"in the features of the project's digit classifier (trained on the training part only).\n\n"
        f"Cells: mean ± sd over the seeds [95 % Student-t interval of the mean]. A method is called ahead only "
        f"where those intervals do not overlap.\n\n### Fréchet distance\n\n"
        + markdown_table(["sampler"] + [MNIST_METHODS[m][0] for m in methods]
                         + ["Fréchet verdict", "precision verdict", "recall verdict"], fd_rows)
        + "\n\n### Coverage and memorisation (mean ± sd over the seeds)\n\nPrecision and recall: k-NN manifolds (k = "
        f"{image_metrics.PRECISION_RECALL_NEIGHBOURS}, Kynkäänniemi et al. 2019) in the classifier's features, generated "
        f"samples against the held-out digits; min class: the rarest digit's share of the samples (all ten equal: "
        f"0.1); nearest train: mean L2 distance of a sample to its nearest training digit (a copy scores 0).\n\n"
        + markdown_table(["sampler", "method", "precision", "recall", "class entropy", "min class",
                          "nearest train"], cover_rows)
        + f"\n\nThe floor: {n} training digits scored the same way against the same held-out digits (95 % "
        f"sampling intervals); its nearest-train distance is the held-out digits' own.\n\n"
        + markdown_table(["", *DIGIT_HEADER], floor_row)
        + "\n\n### Every run\n\nEach figure with its 95 % sampling interval (Fréchet distance and class "
          "entropy: bootstrap over samples and reference; precision and recall: Wilson; nearest train: normal "
          "interval of a mean).\n\n"
        + markdown_table(["run", "iterations", "sampler", "NFE", *DIGIT_HEADER, "KE / bound"], run_rows)
        + "\n\nDigits: one row per flow (seed 0), one panel per sampler, the same x0.\n\n![digits](digits.png)\n")


def lowdim(args) -> dict:
    """Results by "<preset stem>-<method>"."""
    results = {}
    for dataset in ("moons", "pinwheel"):
        for dim in (2, 7, 12):
            stem = f"{dataset}{'' if dim == 2 else f'{dim}d'}"
            for method, label in LOWDIM_METHODS.items():
                cfg = lowdim_config(dataset, dim, method)
                # the 12-D W1⊕W2 runs are experiments.few_step's (the same config)
                workdir = (os.path.join(RUNS, "few_step", f"{dataset}12d", "main") if (dim, method) == (12, "w1w2")
                           else os.path.join(RUNS, "compare", stem, method))
                state, status = train_or_diverge(cfg, workdir)
                name = f"{stem}-{method}"
                if state is None:
                    results[name] = {"dataset": dataset, "dim": dim, "method": label, "status": status}
                    continue
                held = load_config_dataset(cfg).heldout[:2000]
                x0, _ = generate(cfg, state.potential_ema, 2000, num_steps=1)
                out = {"dataset": dataset, "dim": dim, "method": label, "status": status,
                       "iterations": cfg.iterations, "training_seconds": training_seconds(workdir)}
                steps = [(nfe, {"solver": "euler", "num_steps": nfe}) for nfe in (1, 5)]
                for nfe, x_T in zip((1, 5), sampler_samples(cfg, state.potential_ema, x0, steps)):
                    q = vector_quality(x_T, held, embedded=dim > 2, sinkhorn=False)
                    for k in ("energy_distance", "off_manifold_mass"):
                        out[f"{k}_{nfe}"], out[f"{k}_{nfe}_interval"] = q.get(k), q.get(f"{k}_interval")
                results[name] = out
    return results


def lowdim_rows(results: dict) -> list:
    rows = []
    for r in results.values():
        if "energy_distance_1" not in r:
            rows.append([r["dataset"], r["dim"], r["method"], "diverged"] + ["–"] * 4)
            continue
        cells = []
        for k in ("energy_distance", "off_manifold_mass"):
            for nfe in (1, 5):
                value, interval = r[f"{k}_{nfe}"], r.get(f"{k}_{nfe}_interval")
                cells.append("–" if value is None else interval_cell(value, interval) if interval else value)
        rows.append([r["dataset"], r["dim"], r["method"]] + cells + [r["training_seconds"]])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(MNIST_METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="training seeds")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-lowdim", action="store_true")
    parser.add_argument("--out", default=os.path.join(RESULTS, "compare"))
    parser.add_argument("--reuse", action="store_true",
                        help="take runs with no workdir here from OUT/results.json when their config is the same, and "
                             "keep its runs not asked for: add seeds or methods to a committed comparison")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if "main" not in args.methods:
        args.methods.insert(0, "main")  # every table compares against the main job
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    if not args.skip_mnist:
        previous = None
        if args.reuse and "mnist" in results:
            previous = {**results["mnist"], "revision": results.get("versions", {}).get("git_revision")}
        results["mnist"], grids = mnist(args, previous)
        labels = [label for label, _ in mnist_samplers(5.0)]
        drawn = [m for m in args.methods if f"{MNIST_METHODS[m][0]}, seed {args.seeds[0]}" in grids]
        if len(drawn) < len(args.methods):
            print(f"digits.png left as it is: the first seed of {len(args.methods) - len(drawn)} method(s) was reused")
        if drawn:  # every method: digits.png; else the methods trained here get their own digits-<methods>.png
            figure = "digits.png" if len(drawn) == len(args.methods) else "digits-" + "-".join(drawn) + ".png"
            digit_rows_figure({lab: [grids[m][i] for m in grids] for i, lab in enumerate(labels)}, list(grids),
                              os.path.join(args.out, figure))
            print(f"wrote {figure}")
    if not args.skip_lowdim:
        results["lowdim"] = lowdim(args)
    text = (f"# W1⊕W2 against flow matching\n\nCommand (each part can be rerun alone): "
            f"`{command_line('experiments.compare', argv)}`\n\nMachine: {machine()}\n\n")
    if "mnist" in results and "summary" in results["mnist"]:
        text += mnist_text(results["mnist"])
    if "lowdim" in results:
        header = ["data", "D", "method", "energy distance 1 NFE", "energy distance 5 NFE", "off-manifold 1 NFE",
                  "off-manifold 5 NFE", "training s"]
        text += (f"\n## Moons and pinwheel in 2-D, 7-D, 12-D\n\n2000 iterations each (the manifolds experiment's "
                 f"CPU schedule), seed 0 only; 2000 samples, energy distance to 2000 held-out points [95 % bootstrap "
                 f"interval], off-manifold mass = mean norm of the padded coordinates [95 % interval of a mean]. "
                 f"Rows without intervals were measured before the evaluation protocol had them."
                 f"\n\n{markdown_table(header, lowdim_rows(results['lowdim']))}\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
