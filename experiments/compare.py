"""W1⊕W2 against flow matching (I-CFM, OT-CFM) with the same networks and data (DESIGN.md §11).

    python -m experiments.compare                   # MNIST and moons / pinwheel in 2-D, 7-D, 12-D
    python -m experiments.compare --skip-lowdim     # MNIST only

MNIST (mnist5k): the main job without its velocity penalty (`presets.MAIN_PLAIN`, the main job until
2026-11-27), and with the velocity-consistency penalty (velocity_weight 50, experiments.few_step's "straight";
the main job now runs it for 2180 iterations), against the presets mnist5k-cfm and mnist5k-otcfm,
the same conv potential, and OT-CFM with a direct velocity network (the potential's trunk, a 784-output
head). Every flow
is measured at the plain main job's 2400 iterations; I-CFM and OT-CFM are then trained on, to the iterations that
take the main job's time, from the seconds per iteration of every method measured side by side in this
process. Samplers: Euler at 1, 2, 5, 20 NFE and Dopri5 (rtol = atol = 1e-4), from the same x0; Fréchet
distance and class entropy on the project's digit classifier, deviation from the fine solve (the Dopri5
samples), kinetic energy over the straight-line bound and straightness on the Dopri5 path.
Low-dimensional: W1⊕W2, I-CFM and OT-CFM with the W1⊕W2 preset's networks on the manifolds experiment's CPU
schedule (2000 iterations, 10x the paper's learning rates); energy distance to held-out data and mass off
the 2-D manifold at 1 and 5 NFE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from experiments.common import RESULTS, RUNS, command_line, digit_quality, digit_rows_figure, machine, \
    markdown_table, train_or_diverge, write_results
from experiments.few_step import cached
from w12_jax import metrics
from w12_jax.config import Config
from w12_jax.data import sample_batches
from w12_jax.loop import generate, load_config_dataset
from w12_jax.networks import make_flow_network
from w12_jax.presets import MAIN_PLAIN, get_preset
from w12_jax.sample import sample
from w12_jax.train import init_train_state, make_train_step

# method -> (label, config); the W1⊕W2 runs are experiments.few_step's (main, straight)
MNIST_METHODS = {
    "w1w2": ("W1⊕W2 (the main job until 2026-11-27, no velocity penalty)", MAIN_PLAIN),
    "w1w2-straight": ("W1⊕W2 + velocity penalty 50", dataclasses.replace(MAIN_PLAIN, velocity_weight=50.0)),
    "icfm": ("I-CFM", get_preset("mnist5k-cfm")),
    "otcfm": ("OT-CFM", get_preset("mnist5k-otcfm")),
    "otcfm-direct": ("OT-CFM, direct velocity network",
                     dataclasses.replace(get_preset("mnist5k-otcfm"), velocity_field="direct")),
}
EQUAL_TIME = ("icfm", "otcfm")  # trained on to the main job's CPU time (default of --equal-time)
LOWDIM_METHODS = {"w1w2": "W1⊕W2", "cfm": "I-CFM", "otcfm": "OT-CFM"}  # preset suffixes


EULER_NFE = (1, 2, 5, 20)
REFERENCE = ("dopri5 1e-4", {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4})  # the fine solve
PATH_POINTS = 65  # times of the reference path kept for the kinetic energy and straightness


def mnist_samplers(T: float) -> list[tuple[str, dict]]:
    """(label, `sample` kwargs): Euler at 1, 2, 5, 20 NFE and Dopri5 with rtol = atol = 1e-4."""
    return [(f"euler {k}", {"solver": "euler", "num_steps": k}) for k in EULER_NFE] + [REFERENCE]


def measure(workdir: str, cfg: Config, state, x0: np.ndarray, quality) -> dict:
    """{"flow": KE / straight-line bound and straightness on the Dopri5 path (PATH_POINTS times),
    "samplers": {label: nfe, deviation from the Dopri5 samples, **quality}}, cached in workdir/compare.json."""
    def compute():
        net, params = make_flow_network(cfg), state.potential_ema
        ref = sample(net, params, x0, T=cfg.T, lam=cfg.lam, save_points=PATH_POINTS, **REFERENCE[1])
        path, x_ref = np.asarray(ref.path), np.asarray(ref.x_T)
        ke = float(metrics.path_kinetic_energy(path, cfg.T))
        bound = float(metrics.straight_line_bound(path[0], path[-1], cfg.T))
        flow = {"kinetic_energy": ke, "straight_line_bound": bound, "ke_over_bound": ke / bound,
                "straightness_ratio": float(metrics.straightness_ratio(path))}
        out = {}
        for label, kw in mnist_samplers(cfg.T):
            x_T, nfe = ((x_ref, int(ref.nfe)) if label == REFERENCE[0] else
                        (np.asarray((r := sample(net, params, x0, T=cfg.T, lam=cfg.lam, **kw)).x_T), int(r.nfe)))
            dev = float(metrics.discretization_deviation(x_T.reshape(len(x_T), -1), x_ref.reshape(len(x_ref), -1)))
            out[label] = {"nfe": nfe, "deviation": dev, **quality(x_T)}
        return {"flow": flow, "samplers": out}

    return cached(workdir, {"step": int(state.step), "n": len(x0), "reference": REFERENCE[0]}, compute, "compare.json")


def seconds_per_iteration(configs: dict[str, Config], iterations: int = 10, rounds: int = 3) -> dict[str, float]:
    """Seconds per training iteration of each config, side by side in this process: every step compiled
    first, then `rounds` interleaved rounds of `iterations` iterations per config; the fastest round.
    W1⊕W2 steps without the logged indicators, as the training loop runs 9 of every 10 iterations."""
    runs = {}
    for name, cfg in configs.items():
        ds = load_config_dataset(cfg)
        step = make_train_step(cfg, indicators=False)
        data = [sample_batches(ds.train, seed=0, step=i, num_batches=cfg.n_critic, batch_size=cfg.batch_size)
                for i in range(iterations)]
        state, _ = step(init_train_state(cfg), data[0])
        jax.block_until_ready(state)
        runs[name] = [step, state, data]
    best = {name: float("inf") for name in configs}
    for _ in range(rounds):
        for name, run in runs.items():
            step, state, data = run
            t0 = time.perf_counter()
            for batch in data:
                state, _ = step(state, batch)
            jax.block_until_ready(state)
            best[name] = min(best[name], (time.perf_counter() - t0) / iterations)
            run[1] = state
    return best


def training_seconds(workdir: str) -> float:
    with open(os.path.join(workdir, "run_info.json")) as f:
        return sum(s.get("train_seconds", 0.0) for s in json.load(f).get("sessions", []))


def mnist(args) -> tuple[dict, dict]:
    """(results by "method@iterations", digit grids by flow label)."""
    classifier, accuracy = metrics.load_or_train_classifier()
    runs = os.path.join(RUNS, "compare", "mnist")
    os.makedirs(runs, exist_ok=True)
    timing_path = os.path.join(runs, "seconds_per_iteration.json")
    per_it = {}
    if os.path.exists(timing_path):  # measured once: it fixes the equal-time iterations of the runs
        with open(timing_path) as f:
            per_it = json.load(f)
    missing = [m for m in args.methods if m not in per_it]
    if missing and per_it:  # a method added later: timed beside the main job, scaled to its stored rate
        ratio = seconds_per_iteration({m: MNIST_METHODS[m][1] for m in ["w1w2"] + missing})
        per_it.update({m: per_it["w1w2"] * ratio[m] / ratio["w1w2"] for m in missing})
    elif missing:
        per_it = seconds_per_iteration({m: MNIST_METHODS[m][1] for m in args.methods})
    with open(timing_path, "w") as f:
        json.dump(per_it, f)
    main_iterations = MNIST_METHODS["w1w2"][1].iterations
    budget = main_iterations * per_it["w1w2"]
    quality = digit_quality(classifier, accuracy, load_config_dataset(MNIST_METHODS["w1w2"][1]))
    results, grids = {"seconds_per_iteration": per_it, "budget_seconds": budget}, {}
    for method in args.methods:
        label, base = MNIST_METHODS[method]
        stages = [main_iterations]
        if method in args.equal_time:
            stages.append(int(round(budget / per_it[method], -2)))
        for iterations in stages:
            # each stage in its own workdir: a resumed longer run never stands in for the shorter one
            workdir = {"w1w2": os.path.join(RUNS, "few_step", "mnist", "main"),
                       "w1w2-straight": os.path.join(RUNS, "few_step", "mnist", "straight")}.get(
                           method, os.path.join(runs, method + ("" if iterations == stages[-1] else f"-{iterations}")))
            cfg = dataclasses.replace(base, iterations=iterations, checkpoint_every=min(iterations, 2400),
                                      sample_every=min(iterations, 2400))
            state, status = train_or_diverge(cfg, workdir)
            name = f"{method}@{iterations}"
            if state is None:
                results[name] = {"method": label, "iterations": iterations, "status": status}
                continue
            params = state.potential_ema
            x0, _ = generate(cfg, params, args.n, num_steps=1)  # the same x0 (seed 0) for every flow

            report = measure(workdir, cfg, state, x0, quality)
            flow, per_sampler = report["flow"], report["samplers"]
            seconds = iterations * per_it[method]
            results[name] = {"method": label, "iterations": iterations, "config": cfg.to_dict(), "status": status,
                             "seconds_at_side_by_side_rate": seconds, "training_seconds_as_run":
                             training_seconds(workdir), "flow": flow, "samplers": per_sampler}
            net = make_flow_network(cfg)
            grids[f"{label}, {iterations} its"] = [
                np.asarray(sample(net, params, x0[:8], T=cfg.T, lam=cfg.lam, **kw).x_T)
                for _, kw in mnist_samplers(cfg.T)]
    return results, grids


def mnist_rows(results: dict) -> list:
    rows = []
    for r in results.values():
        if not isinstance(r, dict) or "iterations" not in r:
            continue
        if "samplers" not in r:
            rows.append([r["method"], r["iterations"], "diverged"] + ["–"] * 7)
            continue
        for label, q in r["samplers"].items():
            rows.append([r["method"], r["iterations"], label, q["nfe"], q["frechet_distance"], q["class_entropy"],
                         q["deviation"], r["flow"]["ke_over_bound"], r["flow"]["straightness_ratio"],
                         r["seconds_at_side_by_side_rate"]])
    return rows


def lowdim(args) -> dict:
    """Results by "<preset stem>-<method>"."""
    from experiments.manifolds import config_for

    schedule = argparse.Namespace(full=False, iterations=2000)
    results = {}
    for dataset in ("moons", "pinwheel"):
        for dim in (2, 7, 12):
            stem = f"{dataset}{'' if dim == 2 else f'{dim}d'}"
            for method, label in LOWDIM_METHODS.items():
                cfg = config_for(dataset, dim, method, schedule)
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
                for nfe in (1, 5):
                    x_T = np.asarray(sample(make_flow_network(cfg), state.potential_ema, x0, T=cfg.T, lam=cfg.lam,
                                            num_steps=nfe).x_T)
                    out[f"energy_distance_{nfe}"] = float(metrics.energy_distance(x_T, held))
                    out[f"off_manifold_mass_{nfe}"] = (float(metrics.off_manifold_mass(x_T, 2)) if dim > 2
                                                       else None)
                results[name] = out
    return results


def lowdim_rows(results: dict) -> list:
    rows = []
    for r in results.values():
        if "energy_distance_1" not in r:
            rows.append([r["dataset"], r["dim"], r["method"], "diverged"] + ["–"] * 4)
            continue
        rows.append([r["dataset"], r["dim"], r["method"]]
                    + [r[f"{k}_{nfe}"] if r[f"{k}_{nfe}"] is not None else "–"
                       for k in ("energy_distance", "off_manifold_mass") for nfe in (1, 5)] + [r["training_seconds"]])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(MNIST_METHODS), choices=list(MNIST_METHODS))
    parser.add_argument("--equal-time", nargs="*", default=list(EQUAL_TIME), choices=list(EQUAL_TIME),
                        help="flow-matching methods also trained to the main job's CPU time")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-lowdim", action="store_true")
    parser.add_argument("--out", default=os.path.join(RESULTS, "compare"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if "w1w2" not in args.methods:
        args.methods.insert(0, "w1w2")  # the time budget is the main job's
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    if not args.skip_mnist:
        results["mnist"], grids = mnist(args)
        labels = [label for label, _ in mnist_samplers(5.0)]
        digit_rows_figure({lab: [grids[m][i] for m in grids] for i, lab in enumerate(labels)}, list(grids),
                          os.path.join(args.out, "digits.png"))
    if not args.skip_lowdim:
        results["lowdim"] = lowdim(args)
    text = (f"# W1⊕W2 against flow matching\n\nCommand (each part can be rerun alone): "
            f"`{command_line('experiments.compare', argv)}`\n\nMachine: {machine()}\n\n")
    if "mnist" in results:
        per_it = results["mnist"]["seconds_per_iteration"]
        header = ["method", "iterations", "sampler", "NFE", "Fréchet", "class entropy", "deviation vs fine",
                  "KE / bound", "straightness", "CPU s"]
        text += ("## MNIST (mnist5k)\n\nSeconds per iteration, side by side in one process: "
                 + ", ".join(f"{m} {s:.3f}" for m, s in per_it.items())
                 + f". CPU s = iterations × that rate (the main job's 2400 iterations: "
                 f"{results['mnist']['budget_seconds']:.0f} s). {args.n} samples from the same x0 per sampler; "
                 f"deviation: mean|x_T − x_T^dopri5| over the mean distance between independent samples; KE / bound "
                 f"and straightness on the Dopri5 path ({PATH_POINTS} times).\n\n"
                 f"{markdown_table(header, mnist_rows(results['mnist']))}\n\nDigits: one row per flow, one panel "
                 f"per sampler, the same x0.\n\n![digits](digits.png)\n")
    if "lowdim" in results:
        header = ["data", "D", "method", "energy distance 1 NFE", "energy distance 5 NFE", "off-manifold 1 NFE",
                  "off-manifold 5 NFE", "training s"]
        text += (f"\n## Moons and pinwheel in 2-D, 7-D, 12-D\n\n2000 iterations each (the manifolds experiment's "
                 f"CPU schedule); 2000 samples, energy distance to 2000 held-out points, off-manifold mass = mean "
                 f"norm of the padded coordinates.\n\n{markdown_table(header, lowdim_rows(results['lowdim']))}\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
