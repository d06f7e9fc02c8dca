"""Why one step lags (issue "One step and all ten digits", design.md §13): along segments of x0,
x0(s) = (1 − s) a + s b for s in [0, 1], does one Euler step change the sample evenly, drawing blends of two
digits midway, where more steps jump from one digit to the other?

    python -m experiments.segments --workdir runs/experiments/compare/mnist/main-seed3

Loads the run's latest checkpoint; draws --pairs (a, b) of x0 ~ rho_0 (a key no evaluation uses) and maps the
--points x0(s) of each segment by Euler 1, 2, 5 and Dopri5. Per sampler, over the segments (samples clipped to
[0, 1], as for every digit metric): the share of samples the digit classifier calls with confidence below
BLEND_CONFIDENCE (blends; the held-out digits give the floor), the class changes per segment, and the jump
concentration max_s |Φ(x(s + ds)) − Φ(x(s))| / mean_s |Φ(x(s + ds)) − Φ(x(s))| (1: the sample changes evenly
along the segment; large: most of the change happens in one jump).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from experiments.common import RESULTS, command_line, digit_rows_figure, machine, markdown_table, \
    restore_digit_run, write_results
from w12_jax.classifier import classifier_apply, load_or_train_classifier
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import DOPRI5
from w12_jax.networks import make_flow_network
from w12_jax.reference import sample_reference
from w12_jax.sample import sample

SAMPLERS = [(f"euler {k}", {"solver": "euler", "num_steps": k}) for k in (1, 2, 5)] + [DOPRI5]
BLEND_CONFIDENCE = 0.5  # a sample the classifier gives no digit more than this probability is a blend
SEGMENT_KEY = 7  # fold_in of PRNGKey(seed) for the segments' end points: no sampler of the evaluation uses it
SHOWN = 4  # segments drawn in the figure


def segment_points(cfg, pairs: int, points: int, seed: int) -> np.ndarray:
    """x0(s) = (1 − s) a + s b for (a, b) ~ rho_0 ⊗ rho_0 and s = linspace(0, 1, points): (pairs, points, *shape).
    The reference is convex (a box, or blocks of one), so every x0(s) lies in its support."""
    key_a, key_b = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), SEGMENT_KEY))
    a = np.asarray(sample_reference(cfg, key_a, (pairs,)))[:, None]
    b = np.asarray(sample_reference(cfg, key_b, (pairs,)))[:, None]
    s = np.linspace(0.0, 1.0, points).reshape((1, points) + (1,) * (a.ndim - 2))
    return ((1.0 - s) * a + s * b).astype(np.float32)


def classes_and_confidence(classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, max softmax probability) of the digit classifier on images clipped to [0, 1]."""
    logits = classifier_apply(classifier, np.clip(images, 0.0, 1.0))
    p = np.asarray(jax.nn.softmax(logits, axis=-1))
    return p.argmax(-1), p.max(-1)


def segment_statistics(mapped: np.ndarray, classes: np.ndarray, confidence: np.ndarray) -> dict:
    """mapped (pairs, points, *shape) with their classes and confidences (pairs, points): blend share, class
    changes per segment and jump concentration (module docstring), each with its mean over segments."""
    steps = np.linalg.norm((mapped[:, 1:] - mapped[:, :-1]).reshape(mapped.shape[0], mapped.shape[1] - 1, -1),
                           axis=-1)
    concentration = steps.max(1) / np.maximum(steps.mean(1), 1e-12)
    changes = (classes[:, 1:] != classes[:, :-1]).sum(1)
    return {"blend_share": float(np.mean(confidence < BLEND_CONFIDENCE)),
            "class_changes": float(changes.mean()), "jump_concentration": float(concentration.mean()),
            "jump_concentration_median": float(np.median(concentration)),
            "endpoint_class_differs": float(np.mean(classes[:, 0] != classes[:, -1]))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained digit run (its checkpoints/ folder)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--points", type=int, default=33, help="points per segment, ends included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "segments"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.points < 3:
        raise SystemExit(f"--pairs must be >= 1 and --points >= 3, got {args.pairs} and {args.points}")
    workdir = args.workdir.rstrip("/")
    state, cfg = restore_digit_run(workdir, "segments")
    classifier, accuracy = load_or_train_classifier()
    held = load_config_dataset(cfg).heldout
    _, held_confidence = classes_and_confidence(classifier, held)
    floor = float(np.mean(held_confidence < BLEND_CONFIDENCE))

    x = segment_points(cfg, args.pairs, args.points, args.seed)
    flat = x.reshape((-1,) + x.shape[2:])
    network = make_flow_network(cfg)
    results, rows, grids = {}, [], {f"segment {j}": [] for j in range(min(SHOWN, args.pairs))}
    shown = np.linspace(0, args.points - 1, 11).round().astype(int)  # s = 0, 0.1, ..., 1 in the figure
    for label, kwargs in SAMPLERS:
        mapped = np.asarray(sample(network, state.potential_ema, flat, T=cfg.T, lam=cfg.lam, **kwargs).x_T)
        classes, confidence = classes_and_confidence(classifier, mapped)
        mapped = mapped.reshape(x.shape)
        stats = segment_statistics(mapped, classes.reshape(x.shape[:2]), confidence.reshape(x.shape[:2]))
        results[label] = stats
        rows.append([label, stats["blend_share"], stats["class_changes"], stats["endpoint_class_differs"],
                     stats["jump_concentration"], stats["jump_concentration_median"]])
        for j, name in enumerate(grids):
            grids[name].append(np.clip(mapped[j, shown], 0.0, 1.0))
    os.makedirs(args.out, exist_ok=True)
    digit_rows_figure(grids, [label for label, _ in SAMPLERS], os.path.join(args.out, "segments.png"))
    results["heldout_blend_share"] = floor
    results["setup"] = {"workdir": workdir, "step": int(state.step), "pairs": args.pairs, "points": args.points,
                        "seed": args.seed, "classifier_accuracy": accuracy, "config": cfg.to_dict()}
    header = ["sampler", f"blend share (confidence < {BLEND_CONFIDENCE})", "class changes per segment",
              "end points of different digits", "jump concentration (mean)", "jump concentration (median)"]
    text = (f"# Segments of x0: `{workdir}` (iteration {int(state.step)})\n\n"
            f"Command: `{command_line('experiments.segments', argv)}`\n\nMachine: {machine()}\n\n"
            f"{args.pairs} segments x0(s) = (1 − s) a + s b of {args.points} points each, a and b ~ rho_0; every point "
            f"mapped by each sampler. Blend share: samples the digit classifier (held-out accuracy {accuracy:.3f}) "
            f"gives no digit more than {BLEND_CONFIDENCE} probability (held-out digits: {floor:.3f}). Jump "
            f"concentration: the largest change between neighbouring points of a segment over the mean change "
            f"(1: even; large: one jump).\n\n{markdown_table(header, rows)}\n\n"
            f"![segments](segments.png)\n\nEach panel: one segment, s = 0, 0.1, ..., 1 left to right, one row per "
            f"sampler.\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
