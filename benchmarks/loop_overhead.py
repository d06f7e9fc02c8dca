"""Milliseconds per iteration of the `w12 train` loop against the bare compiled step, on the same config.

    python -m benchmarks.loop_overhead [--preset 8gaussians-w1w2] [--iterations 2000] [--repeats 3]

Side by side in one process, alternating, after compiling everything:
- `bare`: the compiled steps called back to back on batches already on the device (the indicator step on
  every log_every-th iteration, the lean step otherwise, as the loop does), one wait at the end;
- `bare + sync`: the same with the metrics and the finiteness check fetched to the host every iteration
  (what the loop did before it synced only on logged iterations);
- `scan of log_every − 1`: log_every − 1 lean steps in one compiled call (`jax.lax.scan` over stacked
  batches), then one logged step;
- `loop`: `train_and_evaluate` with its progress bar, batches drawn on the host from (seed, step), the
  metrics file, the divergence guard; checkpoints and sample figures only at the end (outside the timing:
  the run's own `train_seconds`);
- `loop, steps_per_call=log_every − 1`: the same, the unlogged iterations in scanned blocks.
Overhead = loop − bare. Timings are not asserted; on a GPU the absolute numbers mean something, on a CPU the
differences do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from w12_jax.config import Config
from w12_jax.data import load_config_dataset, sample_batches
from w12_jax.distributed import data_sharding, global_array, make_mesh
from w12_jax.loop import finite_parts, train_and_evaluate
from w12_jax.presets import get_preset
from w12_jax.provenance import package_versions
from w12_jax.train import build_model, init_train_state, make_train_step, \
    outer_iteration


def bare_seconds(config: Config, step, lean, state, batches, sync: bool) -> float:
    """Seconds for config.iterations compiled steps on device-resident `batches` (cycled)."""
    start = time.perf_counter()
    metrics = None
    for i in range(config.iterations):
        logged = (i + 1) % config.log_every == 0
        state, metrics = (step if logged else lean)(state, batches[i % len(batches)])
        if sync:
            jax.device_get((metrics, finite_parts(state)))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start


def scan_seconds(config: Config, scanned, step, state, stacked, batches) -> float:
    """Seconds for config.iterations steps as blocks of log_every − 1 scanned lean steps + one indicator step."""
    start = time.perf_counter()
    metrics = None
    for i in range(config.iterations // config.log_every):
        state, _ = scanned(state, stacked)
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start


def loop_seconds(config: Config) -> float:
    """train_seconds of a fresh `train_and_evaluate` run of config (progress bar on)."""
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir, progress=True)
        info = json.loads((Path(workdir) / "run_info.json").read_text())
    return info["sessions"][-1]["train_seconds"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="8gaussians-w1w2")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/loop_overhead.json")
    args = parser.parse_args(argv)
    config = dataclasses.replace(get_preset(args.preset), iterations=args.iterations,
                                 checkpoint_every=args.iterations, sample_every=args.iterations)
    mesh = make_mesh()
    ds = load_config_dataset(config)
    batches = [global_array(sample_batches(ds.train, seed=config.seed, step=i, num_batches=config.n_critic,
                                           batch_size=config.batch_size), data_sharding(mesh))
               for i in range(config.log_every)]
    step, lean = make_train_step(config, donate=False), make_train_step(config, indicators=False, donate=False)
    state, model = init_train_state(config), build_model(config)

    def lean_body(s, data):
        return outer_iteration(model, s, data, mesh=mesh, indicators=False)

    stacked = jax.numpy.stack(batches[:config.log_every - 1])
    scanned = jax.jit(lambda s, d: jax.lax.scan(lean_body, s, d))
    for fn in (step, lean):  # compile and warm up
        jax.block_until_ready(fn(state, batches[0]))
    jax.block_until_ready(scanned(state, stacked))
    blocks = dataclasses.replace(config, steps_per_call=config.log_every - 1)
    for c in (config, blocks):  # warm the loop's caches
        loop_seconds(dataclasses.replace(c, iterations=2 * config.log_every))

    times = {"bare": [], "bare + sync": [], f"scan of {config.log_every - 1}": [], "loop": [],
             f"loop, steps_per_call={blocks.steps_per_call}": []}
    for _ in range(args.repeats):
        times["bare"].append(bare_seconds(config, step, lean, state, batches, sync=False))
        times["bare + sync"].append(bare_seconds(config, step, lean, state, batches, sync=True))
        times[f"scan of {config.log_every - 1}"].append(
            scan_seconds(config, scanned, step, state, stacked, batches))
        times["loop"].append(loop_seconds(config))
        times[f"loop, steps_per_call={blocks.steps_per_call}"].append(loop_seconds(blocks))
    ms = {k: 1e3 * float(np.median(v)) / config.iterations for k, v in times.items()}
    result = {"preset": args.preset, "iterations": config.iterations, "repeats": args.repeats,
              "log_every": config.log_every, "ms_per_iteration": ms,
              "loop_overhead_ms": ms["loop"] - ms["bare"], "sync_overhead_ms": ms["bare + sync"] - ms["bare"],
              "backend": jax.default_backend(), "devices": len(jax.devices()),
              "machine": f"{platform.machine()} {platform.system()}, {jax.devices()[0].device_kind}",
              "jax": jax.__version__}
    print(f"{args.preset}, {config.iterations} iterations, median of {args.repeats}:")
    for k, v in ms.items():
        print(f"  {k:>16}: {v:.3f} ms/iteration")
    print(f"  loop overhead over the bare step: {result['loop_overhead_ms']:.3f} ms/iteration")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**result, "versions": package_versions()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
