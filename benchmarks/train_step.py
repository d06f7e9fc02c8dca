"""Seconds per outer iteration (n_D φ updates + 1 U update), compiled step vs a direct-port baseline.

    python -m benchmarks.train_step [--batch-size 200] [--n-critic 5] [--repeats 5]

The compiled step is `w12_jax.make_train_step` (one program: the n_D φ updates and the U update, the flows
unrolled, the first conv layer by space-to-depth), timed in its variants: n_D critic flows of B particles
(the CPU default) or one flow of n_D·B (the accelerator default), and without the three indicator gradient
passes. The baseline is what a direct port of the authors' loop does: separately jitted φ and U updates
called from Python, each φ update re-integrating its own flow, with Flax's `nn.Conv` and `nn.max_pool`
(`conv_space_to_depth=False`); it is timed also with the library's layers, which isolates the effect of the
program structure. All use the same loss functions (`w12_jax.train.critic_loss`, `potential_loss`).
Achieved FLOP/s come from XLA's cost analysis of the compiled step; the machine's peak is a large f32
matmul timed in the same run. With the `bench` extra (PyTorch CPU) the same iteration in PyTorch eager
(`benchmarks.torch_step`) is timed too. Timings are not asserted; ratios are measured side by side in one
run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
import optax

from w12_jax.config import Config, override, parse_assignment
from w12_jax.data import load_config_dataset, sample_batches
from w12_jax.flow import euler_flow, scalar_potential
from w12_jax.provenance import package_versions
from w12_jax.reference import sample_reference
from w12_jax.train import build_model, critic_loss, ema_update, init_train_state, make_train_step, potential_loss


def median_seconds(fn, repeats):
    """Median wall time of fn() over `repeats` calls (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak_flops(n=2048, repeats=5):
    """Measured f32 matmul throughput (FLOP/s) of an n×n by n×n product."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    return 2 * n**3 / median_seconds(lambda: mm(a).block_until_ready(), repeats)


def make_baseline(config: Config):
    """(critic_update, potential_update), each its own jit, for a Python loop of n_D + 1 calls."""
    model = build_model(config)
    opt_u, opt_phi, potential = model.potential_tx, model.discriminator_tx, model.flow_network

    @jax.jit
    def critic_update(state, y, key):
        k_ref, k_gp = jax.random.split(key)
        x0 = sample_reference(config, k_ref, (config.batch_size,))
        u = scalar_potential(potential, state.potential_params)
        x_T = euler_flow(u, x0, config.T, config.num_steps, config.lam).x_T  # its own flow per update
        grads = jax.grad(lambda p: critic_loss(model, p, x_T, y, k_gp)[0])(state.discriminator_params)
        updates, opt_state = opt_phi.update(grads, state.discriminator_opt_state, state.discriminator_params)
        return state.replace(discriminator_params=optax.apply_updates(state.discriminator_params, updates),
                             discriminator_opt_state=opt_state)

    @jax.jit
    def potential_update(state, key):
        x0 = sample_reference(config, key, (config.batch_size,))
        grads = jax.grad(lambda p: potential_loss(model, p, state.discriminator_params, x0)[0])(
            state.potential_params)
        updates, opt_state = opt_u.update(grads, state.potential_opt_state, state.potential_params)
        pu = optax.apply_updates(state.potential_params, updates)
        return state.replace(potential_params=pu, potential_opt_state=opt_state, step=state.step + 1,
                             potential_ema=ema_update(config.ema_decay, state.step, state.potential_ema, pu))

    def outer_iteration(state, data):
        keys = jax.random.split(jax.random.fold_in(state.key, state.step), config.n_critic + 1)
        for i in range(config.n_critic):
            state = critic_update(state, data[i], keys[i])
        return potential_update(state, keys[-1])

    return outer_iteration


def side_by_side_seconds(configs: dict[str, Config], iterations: int = 10, rounds: int = 3) -> dict[str, float]:
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


def compiled_seconds(config, state, data, devices, repeats, **options):
    """(median s per call, compile s, XLA cost-analysis FLOPs) of `make_train_step(config, **options)`."""
    step = make_train_step(config, devices=devices, donate=False, **options)
    start = time.perf_counter()
    compiled = step.jitted.lower(state, data).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return median_seconds(lambda: jax.block_until_ready(compiled(state, data)), repeats), compile_seconds, flops


def baseline_seconds(config, state, data, repeats):
    """Median s per outer iteration of `make_baseline(config)` after its first (compiling) call."""
    baseline_step = make_baseline(config)
    jax.block_until_ready(baseline_step(state, data))
    return median_seconds(lambda: jax.block_until_ready(baseline_step(state, data)), repeats)


def run(config: Config, repeats: int, torch: bool = True, quick: bool = False):
    devices = jax.devices()[:1]
    data = np.random.default_rng(0).uniform(0, 1, (config.n_critic, config.batch_size) + config.data_shape)
    data = data.astype(np.float32)
    state = init_train_state(config)

    optimized, compile_seconds, flops = compiled_seconds(config, state, data, devices, repeats)
    nan = float("nan")
    batched_flow, _, _ = (nan,) * 3 if quick else compiled_seconds(config, state, data, devices, repeats,
                                                                   batched_critic_flow=True)
    no_indicators, _, _ = (nan,) * 3 if quick else compiled_seconds(config, state, data, devices, repeats,
                                                                    indicators=False)
    baseline = nan if quick else baseline_seconds(dataclasses.replace(config, conv_space_to_depth=False), state,
                                                  data, repeats)
    baseline_library_layers = baseline_seconds(config, state, data, repeats)
    peak = matmul_peak_flops()
    torch_seconds, torch_version = float("nan"), "not run (--no-torch)"
    try:  # the same outer iteration in PyTorch eager, if the `bench` extra is installed
        if torch:
            from benchmarks.torch_step import seconds_per_iteration

            torch_seconds, torch_version = seconds_per_iteration(config.batch_size, config.n_critic, repeats)
    except ImportError:
        torch_version = "not installed"
    return {
        "device": str(devices[0].device_kind), "platform": platform.platform(), "jax": jax.__version__,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "batch_size": config.batch_size, "n_critic": config.n_critic, "num_steps": config.num_steps,
        "repeats": repeats, "compile_seconds": compile_seconds,
        "optimized_seconds": optimized, "optimized_batched_critic_flow_seconds": batched_flow,
        "optimized_no_indicators_seconds": no_indicators,
        "baseline_seconds": baseline, "optimized_over_baseline": optimized / baseline,
        "baseline_library_layers_seconds": baseline_library_layers,
        "optimized_over_baseline_library_layers": optimized / baseline_library_layers,
        "step_flops": flops, "achieved_flops_per_s": flops / optimized, "matmul_peak_flops_per_s": peak,
        "fraction_of_peak": flops / optimized / peak,
        "torch": torch_version, "torch_seconds": torch_seconds, "jax_over_torch": optimized / torch_seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="other config changes")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    parser.add_argument("--quick", action="store_true",
                        help="only the compiled step and the separately jitted updates on the same layers")
    args = parser.parse_args(argv)
    config = override(dataclasses.replace(Config(), batch_size=args.batch_size, n_critic=args.n_critic),
                      dict(map(parse_assignment, args.set)))
    result = run(config, args.repeats, torch=not args.no_torch, quick=args.quick)
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**result, "versions": package_versions()}, indent=2))


if __name__ == "__main__":
    main()
