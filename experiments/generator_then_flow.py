"""Two evaluations from a distilled G and its flow: G's chord to t = sT, then one Euler step of the flow to T.

    python -m experiments.generator_then_flow --workdirs runs/main1 runs/main2 --fractions 0.35 0.5 0.8 \
        --stem _then_flow

Each workdir holds a trained run and the G that `w12 distill` wrote. From the x0 of `w12 evaluate` (seed 0):

    x_s = x0 + s·(G(x0) − x0),    x_T = x_s + (1 − s)·T·v(x_s, sT),    v = −∇U/λ,

two network evaluations (G, then ∇U). The flow's paths are nearly straight, so x_s stands for the flow's
state at sT, and the flow's last step may sharpen what G drew. Scored as `w12 evaluate` scores G
(`evaluation.generator_quality`); G alone is the 1-NFE row.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, command_line, digit_cells, digit_rows_figure, machine, markdown_table, \
    restore_digit_run, write_results
from w12_jax.data import load_config_dataset
from w12_jax.distill import distilled_sample, restore_generator
from w12_jax.evaluation import generator_quality
from w12_jax.flow import velocity
from w12_jax.networks import make_flow_network
from w12_jax.sample import reference_draw


def flow_velocity(config, params):
    """v(x, t) = −∇U(x, t)/λ of the run, jit-compiled once for every fraction s."""
    return jax.jit(velocity(make_flow_network(config), params, config.lam))


def generator_then_flow(v, T: float, g: np.ndarray, x0: np.ndarray, s: float, chunk: int = 250) -> np.ndarray:
    """x_s + (1 − s)·T·v(x_s, sT) with x_s = x0 + s·(g − x0), g = G(x0); (n, *shape)."""
    if not 0.0 <= s < 1.0:
        raise ValueError(f"the chord's fraction s must be in [0, 1), got {s}")
    x_s = x0 + s * (g - x0)
    return np.concatenate([np.asarray(x_s[i:i + chunk] + (1.0 - s) * T * v(jnp.asarray(x_s[i:i + chunk]), s * T))
                           for i in range(0, len(x_s), chunk)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", nargs="+", required=True, help="runs that `w12 distill` wrote a G to")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.35, 0.5, 0.8], help="s of x_s")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(RESULTS, "distill"))
    parser.add_argument("--stem", default="_then_flow")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    results, table, grids = {}, [], {}
    labels = ["G (1 NFE)"] + [f"G to {s}T, Euler (2 NFE)" for s in args.fractions]
    for workdir in args.workdirs:
        state, config = restore_digit_run(workdir, "generator_then_flow")
        try:
            generator, g_params, record = restore_generator(workdir, config.data_shape)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
        dataset = load_config_dataset(config)
        x0 = np.asarray(reference_draw(config, args.n, 0))
        g = distilled_sample(generator, g_params, x0)
        v = flow_velocity(config, state.potential_ema)
        samples = [g] + [generator_then_flow(v, config.T, g, x0, s) for s in args.fractions]
        rows = {}
        for label, x in zip(labels, samples):
            rows[label] = generator_quality(config, x, dataset, seed=0)
            table.append([workdir, label, *digit_cells(rows[label])])
            print(workdir, label, f"Fréchet {rows[label]['frechet_distance']:.4g}", flush=True)
        results[workdir] = {"flow_iteration": record["flow_iteration"], "rows": rows}
        grids[workdir] = [x[:10] for x in samples]
    figure = f"digits{args.stem}.png"
    digit_rows_figure(grids, labels, os.path.join(args.out, figure))
    header = ["run", "sampler", "Fréchet", "precision", "recall", "class entropy", "min class", "nearest train"]
    text = (f"# G, then one step of its flow\n\nCommand: `{command_line('experiments.generator_then_flow', argv)}`"
            f"\n\nMachine: {machine()}\n\n{args.n} samples from the x0 of `w12 evaluate` (seed 0), each figure "
            f"with its 95 % sampling interval.\n\n{markdown_table(header, table)}\n\n![digits]({figure})\n")
    os.makedirs(args.out, exist_ok=True)
    write_results(args.out, {"fractions": args.fractions, "runs": results}, text, stem=args.stem)


if __name__ == "__main__":
    main()
