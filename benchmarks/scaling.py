"""Data-parallel scaling at a fixed global batch over 1, 2, 4 devices (simulated CPU devices by default).

    python -m benchmarks.scaling [--batch-size 200] [--repeats 3]

On a CPU the simulated devices share the same cores, so this checks correctness (metrics and parameters
equal to one device's) and measures the partitioning overhead; on a multi-GPU host it measures scaling.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.train_step import median_seconds  # noqa: E402
from w12_jax.config import Config  # noqa: E402
from w12_jax.provenance import package_versions  # noqa: E402
from w12_jax.train import init_train_state, make_train_step  # noqa: E402


def run(config: Config, repeats: int):
    data = np.random.default_rng(0).uniform(0, 1, (config.n_critic, config.batch_size) + config.data_shape)
    data = data.astype(np.float32)
    rows, reference = [], None
    for n in (1, 2, 4):
        if n > jax.device_count() or config.batch_size % n:
            continue
        step = make_train_step(config, devices=jax.devices()[:n], donate=False)
        state = init_train_state(config)
        new_state, metrics = jax.block_until_ready(step(state, data))
        leaves = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(new_state.potential_params)])
        reference = leaves if reference is None else reference
        seconds = median_seconds(lambda: jax.block_until_ready(step(state, data)), repeats)
        rows.append({"devices": n, "seconds": seconds,
                     "max_param_diff_vs_1": float(np.max(np.abs(leaves - reference))),
                     "kinetic_energy": float(metrics["kinetic_energy"])})
    for r in rows:
        r["speedup_vs_1"] = rows[0]["seconds"] / r["seconds"]
    return {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "batch_size": config.batch_size,
            "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    result = run(dataclasses.replace(Config(), batch_size=args.batch_size, n_critic=args.n_critic), args.repeats)
    print(f"{'devices':>7} {'s/iter':>8} {'speedup':>8} {'max |Δparam| vs 1':>18}")
    for r in result["rows"]:
        print(f"{r['devices']:>7} {r['seconds']:>8.3f} {r['speedup_vs_1']:>8.2f} {r['max_param_diff_vs_1']:>18.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**result, "versions": package_versions()}, indent=2))


if __name__ == "__main__":
    main()
