"""Sampling throughput: samples/s of `w12_jax.sample` for Euler at K ∈ {1, 5, 20, 64} and Tsit5/Dopri5
(fixed and adaptive), against NFE, with the compiled program's memory footprint.

    python -m benchmarks.sampling [--n 1000] [--repeats 3]

Uses the paper's MNIST potential (design.md §6) at its initialisation: fixed-step cost does not depend on
the weights; adaptive NFE does, so treat adaptive rows as an illustration. Timings are not asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from w12_jax.config import Config, override, parse_assignment
from w12_jax.networks import make_potential
from w12_jax.provenance import package_versions
from w12_jax.reference import sample_reference
from w12_jax.sample import sample
from w12_jax.train import init_train_state

SETTINGS = [("euler", {"num_steps": 1}), ("euler", {"num_steps": 5}), ("euler", {"num_steps": 20}),
            ("euler", {"num_steps": 64}), ("heun", {"num_steps": 5}), ("tsit5", {"num_steps": 5}),
            ("dopri5", {"num_steps": 5}), ("dopri5", {"rtol": 1e-3, "atol": 1e-3})]


def run(n: int, repeats: int, config: Config = Config()):
    potential, params = make_potential(config), init_train_state(config).potential_params
    x0 = sample_reference(config, jax.random.PRNGKey(0), (n,))
    rows = []
    for solver, kwargs in SETTINGS:
        kwargs = dict(T=config.T, lam=config.lam, solver=solver, **kwargs)
        res = jax.block_until_ready(sample(potential, params, x0, **kwargs))  # compile
        compiled = jax.jit(lambda p, x: sample(potential, p, x, **kwargs)).lower(params, x0).compile()
        mem = compiled.memory_analysis()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(sample(potential, params, x0, **kwargs))
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        rows.append({"solver": solver, **{k: v for k, v in kwargs.items() if k not in ("T", "lam", "solver")},
                     "nfe": int(res.nfe), "seconds": seconds, "samples_per_s": n / seconds,
                     "temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1})
    return {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "n": n, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/sampling.json")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config changes (networks)")
    args = parser.parse_args(argv)
    result = run(args.n, args.repeats, override(Config(), dict(map(parse_assignment, args.set))))
    print(f"{'solver':<8} {'setting':<22} {'NFE':>5} {'samples/s':>11} {'temp MiB':>9}")
    for r in result["rows"]:
        setting = ", ".join(f"{k}={v}" for k, v in r.items() if k in ("num_steps", "rtol", "atol"))
        print(f"{r['solver']:<8} {setting:<22} {r['nfe']:>5} {r['samples_per_s']:>11.1f} {r['temp_bytes'] / 2**20:>9.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**result, "versions": package_versions()}, indent=2))


if __name__ == "__main__":
    main()
