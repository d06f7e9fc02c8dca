"""Few-step sampling (issue "Straight flows", design.md §5, §11): how well do 1, 2, 3 and 5 Euler steps, Heun
at 2 and 4 NFE and adaptive Dopri5 sample a trained flow, against the fine solve (Euler h = T/320)?

    python -m experiments.few_step                       # MNIST: main job without and with its penalty, W1
    python -m experiments.few_step --lowdim              # + moons and pinwheel in 12-D (CPU schedule)
    python -m experiments.few_step --iterations w1=600   # W1-only stopped at 600 iterations
    python -m experiments.few_step --variants main chord k1-chord --iterations 600   # a screening run

Trains each variant (resuming finished or partial runs under runs/experiments/few_step/), samples the same x0
with every sampler and reports, per sampler: NFE, Fréchet distance and class entropy (digits) or energy
distance (vectors), and the deviation mean|x_T − x_T^fine| / mean distance between independent samples; per
flow, on the fine path: kinetic energy over the straight-line bound ½E|x_T − x0|²/T, the straightness ratio
|x_T − x0| / path length (1 iff straight) and the training seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable

import numpy as np

from experiments.common import DIGIT_HEADER, QUICK_REFERENCE, QUICK_SAMPLERS, RESULTS, RUNS, command_line, \
    digit_cells, digit_floor_text, digit_quality, digit_rows_figure, interval_cell, lowdim_config, machine, \
    markdown_table, measured, train_or_diverge, training_seconds, write_results
from w12_jax import image_metrics
from w12_jax.classifier import load_or_train_classifier
from w12_jax.config import Config, override, parse_assignment, with_case
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import few_step_samplers, floor_samples, sampler_samples, vector_quality
from w12_jax.networks import atom_costs, reference_mean
from w12_jax.presets import MAIN_PLAIN, MAIN_RELU
from w12_jax.sample import generate

FINE_STEPS = 320  # Euler h = T/320: h = 1/64 in the paper's MNIST units (T = 5)
FINE_SAVE = 65  # points of the fine path kept for the kinetic energy and straightness


def straight(cfg: Config) -> Config:
    """The straight-flow change measured at full length: the velocity-consistency penalty (design.md §11)
    with weight 50 (10x the kinetic energy's excess over the straight-line bound in the main job's loss)."""
    return dataclasses.replace(cfg, velocity_weight=50.0)


def warm_start(cfg: Config, warmup: int) -> Config:
    """cfg after `warmup` OT-CFM iterations of U (`cfm_warmup`); `iterations` counts the MFG iterations."""
    return dataclasses.replace(cfg, cfm_warmup=warmup, iterations=cfg.iterations + warmup)


# variant name -> (description, change of the base config); the base is the main job (MNIST) or the
# W1⊕W2 low-dimensional preset on the manifolds experiment's CPU schedule
VARIANTS: dict[str, tuple[str, Callable[[Config], Config]]] = {
    "main": ("main job without the velocity penalty (W1⊕W2, the main job until 2026-11-27)", lambda c: c),
    "adopted": ("the main job from 2026-11-27 to 2026-12-02: velocity_weight 50 at the plain main job's CPU time "
                "(iterations × 2180 / 2400)", lambda c: dataclasses.replace(
                    straight(c), iterations=c.iterations * MAIN_RELU.iterations // MAIN_PLAIN.iterations)),
    "adopted-seed1": ("the main job from 2026-11-27 to 2026-12-02, seed 1", lambda c: dataclasses.replace(
        VARIANTS["adopted"][1](c), seed=1)),
    "straight": ("main job + velocity-consistency penalty, velocity_weight 50", straight),
    "w1": ("W1 only", lambda c: with_case(c, "w1")),
    "k1": ("one Euler step in training (dt = T)", lambda c: dataclasses.replace(c, dt=c.T)),
    "k2": ("two Euler steps in training (dt = T/2)", lambda c: dataclasses.replace(c, dt=c.T / 2)),
    "hj": ("HJ penalty, hj_weight 1", lambda c: dataclasses.replace(c, hj_weight=1.0)),
    "k1-chord": ("one Euler step in training (dt = T) + chord penalty, chord_weight 10",
                 lambda c: dataclasses.replace(c, dt=c.T, chord_weight=10.0)),
    "chord": ("chord penalty, chord_weight 10", lambda c: dataclasses.replace(c, chord_weight=10.0)),
    "terminal": ("terminal penalty, terminal_weight 1", lambda c: dataclasses.replace(c, terminal_weight=1.0)),
    "grids": ("Euler grids of 1, 2 or 5 steps drawn per iteration in training (train_steps=1,2,5)",
              lambda c: dataclasses.replace(c, train_steps=(1, 2, 5))),
    "straight-grids": ("velocity_weight 50 and train_steps=1,2,5",
                       lambda c: dataclasses.replace(straight(c), train_steps=(1, 2, 5))),
    "warm": ("OT-CFM warm start: the first 1500 iterations train U by OT-CFM (cfm_warmup=1500)",
             lambda c: warm_start(c, 1500)),
    "warm-straight": ("OT-CFM warm start (cfm_warmup=1500) and velocity_weight 50",
                      lambda c: warm_start(straight(c), 1500)),
    "straight-seed1": ("main job + velocity_weight 50, seed 1",
                       lambda c: dataclasses.replace(straight(c), seed=1)),
    "straight200": ("velocity_weight 200 (4x straight)", lambda c: dataclasses.replace(c, velocity_weight=200.0)),
    "straight1000": ("velocity_weight 1000 (20x straight)",
                     lambda c: dataclasses.replace(c, velocity_weight=1000.0)),
    "lam0.2": ("λ = 0.2 (4x the main job's 0.05): the kinetic-energy cost binds harder",
               lambda c: dataclasses.replace(c, lam=0.2)),
    "lam0.5": ("λ = 0.5 (10x the main job's 0.05)", lambda c: dataclasses.replace(c, lam=0.5)),
}
DEFAULT_VARIANTS = ("main", "adopted", "w1")


REFERENCE = (f"euler {FINE_STEPS} (fine)", {"solver": "euler", "num_steps": FINE_STEPS})


def samplers_of(quick: bool) -> list:
    """The samplers of the table: `few_step_samplers`, or with --quick Euler 1, 2, 5 and Dopri5."""
    return QUICK_SAMPLERS + [QUICK_REFERENCE] if quick else few_step_samplers()


def measure(workdir: str, cfg: Config, state, x0: np.ndarray, quality, quick: bool = False) -> tuple[dict, dict]:
    """`evaluation.measure_samplers` of `few_step_samplers` against the fine Euler solve (FINE_SAVE points of
    its path), cached in workdir/few_step.json; quick (screens): Euler 1, 2, 5 against Dopri5, in
    workdir/few_step_quick.json (four samplers to compile instead of eight)."""
    if quick:
        return measured(workdir, cfg, state, x0, quality, QUICK_SAMPLERS, QUICK_REFERENCE, {}, "few_step_quick.json",
                        FINE_SAVE)
    return measured(workdir, cfg, state, x0, quality, few_step_samplers(), REFERENCE, {"fine_steps": FINE_STEPS},
                    "few_step.json", FINE_SAVE)


def atom_usage(cfg: Config, params, x0: np.ndarray, x_one_step: np.ndarray) -> dict:
    """How a `potential_atoms` flow uses its atoms at t = 0, w = softmax(−c(x0, 0)/τ) over the n draws x0:
    mean top weight (1: each x0 goes to one atom), atoms that lead for some x0, the mean weights' range, and
    one step's distance from the atoms' blend, mean|x_1 − w·y| / mean|x_1 − mean x_1| (0: it lands on them)."""
    import jax

    atoms = params["params"]["AtomPotential_0"]
    y = np.asarray(atoms["atoms"])
    flat = x0.reshape(len(x0), -1)
    costs = atom_costs(flat, np.zeros(len(x0), flat.dtype), y, atoms["costs"], cfg.T, reference_mean(cfg))
    w = np.asarray(jax.nn.softmax(-costs / cfg.potential_atom_temperature, axis=-1))
    x1 = x_one_step.reshape(len(x0), -1)
    spread = np.linalg.norm(x1 - x1.mean(0), axis=1).mean()
    return {"top_weight": float(w.max(-1).mean()), "atoms_leading": len(set(w.argmax(-1).tolist())),
            "atoms": len(y), "mean_weight_range": [float(w.mean(0).min()), float(w.mean(0).max())],
            "one_step_off_blend": float(np.linalg.norm(x1 - w @ y, axis=1).mean() / spread)}


def component_usage(cfg: Config, params, x0: np.ndarray, classifier) -> dict:
    """How a flow from a `reference_components` mixture uses its components: each x0's component (the sign
    pattern it correlates with most), the class of its Euler-5 sample; purity: the share of a component's
    samples in its most common class, averaged with the components' sizes (1: each component draws one digit),
    and the same with the classes shuffled (what unrelated components score at these sizes); class shares."""
    from w12_jax.classifier import classifier_apply
    from w12_jax.reference import component_signs

    b = cfg.reference_block if len(cfg.data_shape) == 3 else 1
    blocks = x0[:, ::b, ::b] if b > 1 else x0
    signs = np.asarray(component_signs(cfg.reference_components, blocks.shape[1:]))
    component = np.argmax((blocks - reference_mean(cfg)).reshape(len(x0), -1) @ signs.reshape(len(signs), -1).T, axis=1)
    x_T = sampler_samples(cfg, params, x0, [("euler 5", {"solver": "euler", "num_steps": 5})])[0]
    classes = np.asarray(classifier_apply(classifier, np.clip(x_T, 0.0, 1.0))).argmax(-1)

    def purity(labels):
        return float(sum(np.bincount(labels[component == m]).max() for m in np.unique(component)) / len(x0))

    shuffled = np.random.default_rng(0).permutation(classes)
    return {"purity": purity(classes), "purity_if_unrelated": purity(shuffled),
            "components_used": len(np.unique(component)),
            "class_shares": (np.bincount(classes, minlength=10) / len(x0)).tolist()}


def variant_change(variant: str) -> tuple[str, Callable[[Config], Config]]:
    """(description, change) of a VARIANTS name, or of 'NAME+key=value+...': NAME's change, then the
    assignments (config.override), e.g. 'straight+identity_path=scalar+cfm_weight=1'."""
    name, *assignments = variant.split("+")
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)} (optionally +key=value...)")
    description, change = VARIANTS[name]
    if not assignments:
        return description, change
    pairs = dict(parse_assignment(a) for a in assignments)
    return f"{description}, {', '.join(assignments)}", lambda c: override(change(c), pairs)


def train_variant(base: Config, variant: str, iterations: int | None, group: str):
    """(config, state or None, status, training seconds, workdir) of `variant` of `base`, trained in its own
    workdir."""
    if iterations:  # MFG iterations: a warm-started variant adds its OT-CFM iterations
        base = dataclasses.replace(base, iterations=iterations, checkpoint_every=min(base.checkpoint_every, iterations),
                                   sample_every=min(base.sample_every, iterations))
    cfg = variant_change(variant)[1](base)
    workdir = os.path.join(RUNS, "few_step", group, variant + (f"-{iterations}" if iterations else ""))
    state, status = train_or_diverge(cfg, workdir)
    return cfg, state, status, training_seconds(workdir), workdir


def parse_iterations(items: list[str]) -> dict:
    """['600'] -> {None: 600} (every variant); ['w1=600'] -> {'w1': 600}."""
    out = {}
    for item in items:
        name, _, n = item.rpartition("=")
        if (name and name not in VARIANTS) or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--iterations: expected N or VARIANT=N with a variant of {', '.join(VARIANTS)}, "
                             f"got {item!r}")
        out[name or None] = int(n)
    return out


def mnist(args) -> tuple[list, dict, dict]:
    classifier, accuracy = load_or_train_classifier()
    base = MAIN_PLAIN  # the variants are changes of the main job without its velocity penalty
    quality = digit_quality(classifier, accuracy, load_config_dataset(base))
    rows, results, grids = [], {}, {}
    results["floor"], args.floor_text = digit_floor_text(base, load_config_dataset(base), args.n)
    for variant in args.variants:
        iterations = args.iterations.get(variant, args.iterations.get(None))
        cfg, state, status, seconds, workdir = train_variant(base, variant, iterations, "mnist")
        if state is None:
            results[variant] = {"status": status}
            rows.append([variant, "diverged"] + ["–"] * 12)
            continue
        params = state.potential_ema
        x0, one_step = generate(cfg, params, args.n, num_steps=1)  # the same x0 (seed 0) for every variant

        flow, per_sampler = measure(workdir, cfg, state, x0, quality, args.quick)
        results[variant] = {"description": variant_change(variant)[0], "iterations": cfg.iterations,
                            "config": cfg.to_dict(), "status": status,
                            "training_seconds": seconds, "flow": flow, "samplers": per_sampler}
        if cfg.potential_atoms:
            results[variant]["atoms"] = atom_usage(cfg, params, x0, np.asarray(one_step.x_T))
        if cfg.reference_components > 1:
            results[variant]["components"] = component_usage(cfg, params, x0, classifier)
        for label, r in per_sampler.items():
            rows.append([f"{variant} ({cfg.iterations} its)", label, r["nfe"], *digit_cells(r), r["deviation"],
                         flow["ke_over_bound"], flow["straightness_ratio"], seconds])
        grids[variant] = sampler_samples(cfg, params, x0[:8], samplers_of(args.quick))
    return rows, results, grids


def lowdim(args) -> tuple[list, dict]:
    rows, results = [], {}
    for dataset in ("moons", "pinwheel"):
        base = lowdim_config(dataset, 12, "w1w2")
        ds = load_config_dataset(base)
        held = ds.heldout[:2000]
        floor = vector_quality(floor_samples(ds, 2000), held, embedded=True, sinkhorn=False)
        rows.append([dataset, "training points (the floor)", "–", "–",
                     interval_cell(floor["energy_distance"], floor["energy_distance_interval"]), 0.0, "–", "–", "–",
                     "–"])
        for variant in args.variants:
            cfg, state, status, seconds, workdir = train_variant(base, variant, None, f"{dataset}12d")
            name = f"{dataset}12d-{variant}"
            if state is None:
                results[name] = {"status": status}
                continue
            x0, _ = generate(cfg, state.potential_ema, 2000, num_steps=1)

            def quality(x_T):
                q = vector_quality(x_T, held, embedded=True, sinkhorn=False)
                return {k: q[k] for k in ("energy_distance", "energy_distance_interval", "off_manifold_mass",
                                          "off_manifold_mass_interval")}

            flow, per_sampler = measure(workdir, cfg, state, x0, quality)
            results[name] = {"config": cfg.to_dict(), "status": status, "training_seconds": seconds,
                             "flow": flow, "samplers": per_sampler}
            for label, r in per_sampler.items():
                rows.append([dataset, variant, label, r["nfe"],
                             interval_cell(r["energy_distance"], r.get("energy_distance_interval")),
                             interval_cell(r["off_manifold_mass"], r.get("off_manifold_mass_interval")),
                             r["deviation"], flow["ke_over_bound"], flow["straightness_ratio"], seconds])
    return rows, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME[+key=value...]",
                        help=f"variants: {', '.join(VARIANTS)}, each optionally with +key=value changes")
    parser.add_argument("--iterations", nargs="+", default=[], metavar="[VARIANT=]N",
                        help="MNIST: train N iterations instead of the main job's, for every variant or for one")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="screens: Euler 1, 2, 5 and Dopri5 only")
    parser.add_argument("--lowdim", action="store_true", help="also moons and pinwheel in 12-D")
    parser.add_argument("--out", default=os.path.join(RESULTS, "few_step"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.iterations = parse_iterations(args.iterations)
    os.makedirs(args.out, exist_ok=True)
    rows, results, grids = mnist(args)
    stem = "" if None not in args.iterations else f"-{args.iterations[None]}"
    labels = [label for label, _ in samplers_of(args.quick)]
    digit_rows_figure(grids, labels,
                      os.path.join(args.out, f"digits{stem}.png"))
    header = ["variant", "sampler", "NFE", *DIGIT_HEADER, "deviation vs fine", "KE / bound", "straightness",
              "training s"]
    variants = "\n".join(f"- `{v}`: {variant_change(v)[0]}" for v in args.variants)
    reference = ("Dopri5 (rtol = atol = 1e-4)" if args.quick
                 else f"Euler with {FINE_STEPS} steps (h = 1/64 in the paper's units)")
    text = (f"# Few-step sampling: MNIST\n\n"
            f"Command: `{command_line('experiments.few_step', argv)}`\n\nMachine: {machine()}\n\n{variants}\n\n"
            f"{args.n} samples from the same x0 per sampler (PRNGKey(0), clipped to [0, 1] for the digit "
            f"classifier). Deviation: mean|x_T − x_T^fine| over the mean distance between independent samples, "
            f"against {reference}; KE / bound and straightness on that reference path. Each figure with its 95 % sampling interval; precision and recall: "
            f"k-NN manifolds (k = {image_metrics.PRECISION_RECALL_NEIGHBOURS}) in the classifier's features; min class: the "
            f"rarest digit's share; nearest train: mean distance to the nearest training digit.\n\n"
            f"{markdown_table(header, rows)}\n\n{args.floor_text}\n\n"
            f"![digits](digits{stem}.png)\n")
    if args.lowdim:
        low_rows, low_results = lowdim(args)
        results["lowdim"] = low_results
        header = ["data (12-D)", "variant", "sampler", "NFE", "energy distance", "off-manifold mass",
                  "deviation vs fine", "KE / bound", "straightness", "training s"]
        text += (f"\n## Moons and pinwheel in 12-D\n\nThe W1⊕W2 preset on the manifolds experiment's CPU "
                 f"schedule (2000 iterations, 10x the paper's learning rates); 2000 samples, energy distance to "
                 f"2000 held-out points [95 % bootstrap interval]; the floor row: 2000 training points against them.\n\n{markdown_table(header, low_rows)}\n")
    write_results(args.out, results, text, stem)


if __name__ == "__main__":
    main()
