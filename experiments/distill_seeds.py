"""One `experiments.distill` recipe over training seeds, beside experiments.compare's main job and yardstick.

    python -m experiments.distill_seeds experiments/results/distill/results_q.json \
        experiments/results/distill/results_q1.json experiments/results/distill/results_q2.json --stem _seeds_600

Reads one distill results file per teacher seed and compare's results.json; writes the mean ± sd over the seeds
with the Student-t interval of the mean (`intervals.seed_summary`) of G's one evaluation and of the teacher's own
samplers, the CPU seconds of each recipe (teacher share + pairs + G), and compare's main job and OT-CFM (direct
field) at each NFE. A method is called ahead of another only where the intervals of the seed means do not overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from experiments.common import RESULTS, SEED_FIGURES, command_line, markdown_table, seeds_cell, write_results
from w12_jax import intervals

COMPARED = {"main": "main job (1900 its)", "otcfm-direct-silu": "OT-CFM, direct field"}


def recipe_seconds(result: dict) -> float:
    """The recipe's CPU seconds: the teacher's training share, the pairs and G's training."""
    d = result["distill"]
    return d["teacher_training_seconds"] + d["pair_seconds"] + d["distill_seconds"]


def summarize(rows: dict[str, list[dict]]) -> dict:
    """{row: {figure: seed_summary}} over one quality dict per seed."""
    return {row: {f: intervals.seed_summary([q[f] for q in qs]) for f in SEED_FIGURES} for row, qs in rows.items()}


def ahead(a: dict, b: dict, name_a: str, name_b: str) -> str:
    """Which of a and b has the lower mean Fréchet distance, only when their seed intervals are apart."""
    if a["interval"] is None or b["interval"] is None or not intervals.separated(a["interval"], b["interval"]):
        return f"{name_a} against {name_b}: intervals overlap, no claim"
    lead, trail = (name_a, name_b) if a["mean"] < b["mean"] else (name_b, name_a)
    return f"{lead} ahead of {trail}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="experiments.distill results files, one per teacher seed")
    parser.add_argument("--compare", default=os.path.join(RESULTS, "compare", "results.json"))
    parser.add_argument("--out", default=os.path.join(RESULTS, "distill"))
    parser.add_argument("--stem", default="_seeds")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if len(args.results) < 2:
        parser.error("give at least two results files (one per seed) for an interval")
    runs = []
    for path in args.results:
        with open(path) as f:
            runs.append(json.load(f))
    with open(args.compare) as f:
        compared = json.load(f)["mnist"]["summary"]

    samplers = list(runs[0]["samplers"])
    nfe = {s: f"{np.mean([r['samplers'][s]['nfe'] for r in runs]):.0f}" for s in samplers}
    rows = {"G (one evaluation)": [r["distilled"] for r in runs]}
    rows.update({f"teacher, {s}": [r["samplers"][s] for r in runs] for s in samplers})
    row_nfe = {"G (one evaluation)": "1", **{f"teacher, {s}": nfe[s] for s in samplers}}
    summary = summarize(rows)
    seconds = intervals.seed_summary([recipe_seconds(r) for r in runs])

    header = ["row", "NFE", "Fréchet", "precision", "recall", "class entropy", "rarest digit", "nearest train"]
    table = []

    def cells(s: dict) -> list:
        return [seeds_cell(s["frechet_distance"])] + [seeds_cell(s[f], 3, interval=False) for f in SEED_FIGURES[1:]]

    for row, s in summary.items():
        table.append([row, row_nfe[row], *cells(s)])
    for method, name in COMPARED.items():
        for s in samplers:
            if s in compared.get(method, {}):
                table.append([f"{name}, {s}", nfe[s] if s.startswith("euler") else "adaptive",
                              *cells(compared[method][s])])
    g = summary["G (one evaluation)"]["frechet_distance"]
    verdicts = [ahead(g, compared[m][s]["frechet_distance"], "G", f"{COMPARED[m]} at {s}")
                for m in COMPARED for s in samplers if s in compared.get(m, {})]
    fractions = np.mean([r["distilled"]["class_fractions"] for r in runs], axis=0)
    results = {"results": args.results, "summary": summary, "recipe_seconds": seconds,
               "class_fractions": fractions.tolist(), "verdicts": verdicts}
    text = (f"# One distill recipe over {len(runs)} teacher seeds\n\nCommand: "
            f"`{command_line('experiments.distill_seeds', argv)}`\n\n"
            f"Recipe CPU seconds (teacher share + pairs + G): {seeds_cell(seconds, 4)}. Cells: mean ± sd over the "
            f"seeds [95 % Student-t interval of the mean]; compare's rows from {os.path.relpath(args.compare)} "
            f"(their own seeds, machine and budget).\n\n"
            f"{markdown_table(header, table)}\n\nG's class fractions (0–9, mean over seeds): "
            f"{', '.join(f'{v:.3f}' for v in fractions)}\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    os.makedirs(args.out, exist_ok=True)
    write_results(args.out, results, text, stem=args.stem)


if __name__ == "__main__":
    main()
