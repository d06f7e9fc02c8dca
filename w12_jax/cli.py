"""Command line: `w12 train | presets | sample | evaluate | distill` (thin: parse, build a Config, call the
library).

    w12 train [--preset NAME] [--set key=value ...] [--workdir DIR] [--resume]
    w12 presets
    w12 sample --workdir DIR [--solver NAME] [--dt H | --nfe N | --generator] [--n N] [--out FILE]
    w12 evaluate --workdir DIR [--n N]
    w12 distill --workdir DIR [--pairs N] [--validation N] [--warm-iterations N] [--iterations N] [--seed S]

Every bad input ends with one line on stderr and a non-zero exit status (2 for bad command-line syntax,
1 for a bad value, data, checkpoint or a diverged run, 130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional, Sequence

from w12_jax.config import FIELD_TYPES, ConfigError, override, parse_assignment
from w12_jax.presets import DEFAULT_PRESET, PRESETS, get_preset


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _one_line(e: BaseException) -> str:
    text = " ".join(s.strip() for s in str(e).strip().splitlines() if s.strip())
    return text or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="w12", description="W1⊕W2 proximal generative flows (arXiv 2407.11901).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,presets,sample,evaluate,distill}")

    p = sub.add_parser("train", help="train a preset (default: the main job, mnist5k)",
                       description="Train a preset, writing checkpoints, metrics.jsonl and figures to the workdir.")
    p.add_argument("--preset", default=None,
                   help=f"preset name (default {DEFAULT_PRESET}; with --resume, the workdir's own config)")
    p.add_argument("--set", dest="assignments", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set lam=0.1 iterations=200 case=w1; keys: case, "
                        + ", ".join(FIELD_TYPES))
    p.add_argument("--workdir", default=None, help="output directory (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the workdir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress messages")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process run: address of process 0 (with --num-processes, --process-id; "
                        "every process runs the same command)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)

    sub.add_parser("presets", help="list the presets", description="List the presets, one line each.")

    p = sub.add_parser("sample", help="draw samples from a trained workdir",
                       description="Load the latest checkpoint of a workdir and integrate the flow with a "
                                   "diffrax solver; writes samples (.npz) and a picture (.png).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--solver", default="euler", help="euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--dt", type=float, default=None, help="fixed step h dividing T (default: the training h)")
    step.add_argument("--nfe", type=int, default=None, help="number of evaluations of ∇U (sets the step count)")
    step.add_argument("--generator", action="store_true",
                      help="one evaluation of the workdir's distilled generator G(x0) (`w12 distill`) instead")
    p.add_argument("--n", type=int, default=None, help="number of samples (default 64 images / 1000 points)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference samples x0")
    p.add_argument("--out", default=None, help="FILE.npz (arrays; the picture beside it as FILE.png) or FILE.png "
                                               "(the picture; arrays beside it as FILE.npz); default "
                                               "<workdir>/samples/<solver>_nfe<N>.npz")

    p = sub.add_parser("evaluate", help="evaluate a trained workdir, write evaluation.json",
                       description="Sample quality and flow diagnostics of the latest checkpoint.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--n", type=int, default=None, help="number of samples (default: config eval_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", default="euler", help="as for sample (default: Euler with the training step)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--nfe", type=int, default=None, help="number of evaluations of ∇U (sets the step count)")
    step.add_argument("--rtol", type=float, default=None, help="adaptive steps with rtol = atol = RTOL")
    p.add_argument("--out", default=None, help="the report's JSON file (default <workdir>/evaluation.json)")

    p = sub.add_parser("distill", help="distill a trained workdir's flow into a one-step generator G",
                       description="Regress a generator G on the flow's own solve x0 -> Phi_T(x0) (Euler), then "
                                   "train it on that regression plus the run's critic (trained beside G): samples "
                                   "in one evaluation (the recipe: w12_jax.distill.DistillRecipe). Writes "
                                   "<workdir>/generator, which `w12 sample --generator` and `w12 evaluate` use.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs (x0, Phi_T(x0)), the recipe's held-out ones included (default: the recipe's, 5000)")
    p.add_argument("--validation", type=int, default=None, help="pairs held out of the regression, to score G's "
                                                                "fit (default 500)")
    p.add_argument("--warm-iterations", type=int, default=None, help="steps of regression alone (default 1000)")
    p.add_argument("--iterations", type=int, default=None, help="steps with the critic term after them "
                                                                "(default 1450)")
    p.add_argument("--seed", type=int, default=None, help="seed of the pairs' x0 and of G's batches (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ------------------------------------------------------------------------------------------ commands
def cmd_presets(args) -> int:
    width = max(len(k) for k in PRESETS)
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.description}")
    return 0


def _train_config(args):
    """(config, run dir) of `w12 train`: the preset (or, with --resume and no preset, the workdir's own run)
    with the --set assignments; the workdir is read once, here, and handed to the loop."""
    from w12_jax.data import is_data_path
    from w12_jax.workdir import read_run_dir

    assignments = dict(parse_assignment(a) for a in args.assignments)
    preset = args.preset
    own = str(assignments.get("dataset", ""))
    default_name = (os.path.splitext(os.path.basename(os.path.normpath(own)))[0] if own and is_data_path(own)
                    else preset or DEFAULT_PRESET)  # own data: runs/<file or folder name>
    run = read_run_dir(args.workdir or os.path.join("runs", default_name))
    base = run.stored if args.resume and preset is None else None  # continue the workdir's own run
    if base is None:
        base = get_preset(preset or DEFAULT_PRESET)
    return override(base, assignments), run


def cmd_train(args) -> int:
    from w12_jax.loop import train_and_evaluate

    if args.coordinator is not None or args.num_processes is not None:
        from w12_jax.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    config, run = _train_config(args)
    if not config.data_hash:
        from w12_jax.data import configure_own_data

        config, summary = configure_own_data(config)
        if summary:
            print(summary, flush=True)
    train_and_evaluate(config, run, resume=args.resume, progress=not args.no_progress)
    return 0


def _restore(workdir: str):
    from w12_jax.checkpoint import Checkpointer

    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        state, config = ckpt.restore()
    return state, config


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def cmd_sample(args) -> int:
    import numpy as np

    from w12_jax.data import load_config_dataset
    from w12_jax.data_files import DataError
    from w12_jax.sample import generate
    from w12_jax.sample import get_solver

    _positive("--n", args.n)
    if args.out is not None:
        output_paths(args.out)  # a bad name fails before the checkpoint is read
    solver = get_solver(args.solver)
    if args.dt is not None and not args.dt > 0:
        raise ConfigError(f"--dt must be > 0, got {args.dt}")
    state, config = _restore(args.workdir)
    if args.generator:
        return _sample_generator(args, state, config)
    num_steps, dt = None, args.dt
    if args.nfe is not None:
        num_steps = steps_for_nfe(args.solver, args.nfe)
    elif dt is None:
        dt = config.dt
    image = len(config.data_shape) == 3
    n = args.n or (64 if image else 1000)
    save_points = None if image else min(config.num_steps, 64) + 1
    check_memory(n, config, (save_points or 1) + 3)
    x0, res = generate(config, state.potential_ema, n, seed=args.seed, solver=solver, dt=dt,
                       num_steps=num_steps, save_points=save_points)
    nfe = int(res.nfe)
    arrays = {"samples": np.asarray(res.x_T), "x0": x0, "nfe": nfe, "num_steps": int(res.num_steps),
              "solver": args.solver.lower(), "T": config.T, "lam": config.lam, "iteration": int(state.step)}
    if res.path is not None:
        arrays.update(path=np.asarray(res.path), ts=np.asarray(res.ts))
    data = None
    if not image:
        try:
            data = load_config_dataset(config).heldout
        except (DataError, ConfigError):
            data = None  # the picture is drawn without the data
    title = f"{config.dataset} {config.method}, iteration {int(state.step)}, {args.solver.lower()}, NFE {nfe}"
    default_out = os.path.join(args.workdir, "samples", f"{args.solver.lower()}_nfe{nfe}.npz")
    out, picture = write_samples(args.out or default_out, arrays, title, data=data)
    print(f"wrote {n} samples to {out} and {picture}; solver {args.solver.lower()}, "
          f"{int(res.num_steps)} steps, NFE {nfe}")
    return 0


def _sample_generator(args, state, config) -> int:
    """`w12 sample --generator`: G(x0) from the x0 that `generate` draws at --seed."""
    import numpy as np

    from w12_jax.distill import distilled_sample, restore_generator
    from w12_jax.sample import reference_draw

    generator, params, record = restore_generator(args.workdir, config.data_shape)
    n = args.n or (64 if len(config.data_shape) == 3 else 1000)
    check_memory(n, config, 4)
    x0 = np.asarray(reference_draw(config, n, args.seed))
    arrays = {"samples": distilled_sample(generator, params, x0), "x0": x0, "nfe": 1, "num_steps": 1,
              "solver": "generator", "T": config.T, "lam": config.lam, "iteration": record["flow_iteration"]}
    out, picture = write_samples(args.out or os.path.join(args.workdir, "samples", "generator_nfe1.npz"), arrays,
                                 f"{config.dataset}, G distilled from iteration {record['flow_iteration']}, NFE 1")
    print(f"wrote {n} samples to {out} and {picture}; the distilled generator, NFE 1")
    if record["flow_iteration"] != int(state.step):
        print(f"note: G was distilled from iteration {record['flow_iteration']}, the workdir's latest checkpoint "
              f"is iteration {int(state.step)}")
    return 0


def cmd_distill(args) -> int:
    import dataclasses
    import time

    from w12_jax.data import load_config_dataset
    from w12_jax.distill import DistillRecipe, distill_flow, save_generator

    given = {"pairs": args.pairs, "validation": args.validation, "warm_iterations": args.warm_iterations,
             "iterations": args.iterations, "seed": args.seed}
    try:
        recipe = dataclasses.replace(DistillRecipe(), **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:  # the recipe's own bounds, told in the flags' names
        message = str(e)
        for field in sorted(given, key=len, reverse=True):
            message = re.sub(rf"\b{field}\b", "--" + field.replace("_", "-"), message)
        raise ConfigError(message) from None
    state, config = _restore(args.workdir)
    data = load_config_dataset(config).train
    start = time.perf_counter()
    _, params, info = distill_flow(config, state, data, recipe, progress=not args.no_progress)
    folder = save_generator(args.workdir, params, recipe, info)
    print(f"distilled G ({info['architecture']}) from iteration {info['flow_iteration']} of {args.workdir} in "
          f"{time.perf_counter() - start:.0f} s: held-out regression loss {info['heldout_regression_loss']:.4g} "
          f"per coordinate (x0 itself: {info['heldout_identity_loss']:.4g}); wrote {folder}")
    return 0


def steps_for_nfe(solver_name: str, nfe: int) -> int:
    """The fixed step count at which `solver_name` evaluates ∇U `nfe` times (ConfigError if none does)."""
    from w12_jax.sample import evaluations_per_step, get_solver

    per_step, extra = evaluations_per_step(get_solver(solver_name))
    steps, rem = divmod(nfe - extra, per_step)
    if rem or steps < 1:
        raise ConfigError(f"--nfe {nfe} is not reachable with solver {solver_name}: "
                          f"NFE = {per_step}·steps + {extra}, steps >= 1")
    return steps


def write_samples(out: str, arrays: dict, title: str, data=None) -> tuple[str, str]:
    """(arrays file, picture file) of `w12 sample`: `arrays` saved at `out` (.npz, `output_paths`), their
    "samples" drawn beside it (with the data and any "path" trajectories)."""
    import numpy as np

    from w12_jax import plots

    out, picture_path = output_paths(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **arrays)
    picture = plots.samples_figure(arrays["samples"], picture_path, data=data, trajectories=arrays.get("path"),
                                   title=title)
    return out, picture


def output_paths(out: str) -> tuple[str, str]:
    """(arrays .npz, picture .png) of `w12 sample --out FILE`: FILE itself, and the other beside it."""
    stem, suffix = os.path.splitext(out)
    if suffix.lower() not in (".npz", ".png") or not os.path.basename(stem):
        raise ConfigError(f"--out {out!r} must name a .npz file (arrays; the picture goes beside it as .png) "
                          "or a .png file (the picture; the arrays go beside it as .npz)")
    return (out, stem + ".png") if suffix.lower() == ".npz" else (stem + ".npz", out)


def format_report(report: dict) -> str:
    """One line per figure of an evaluation report: `key: value [lo, hi] 95 %` where the report holds
    key_interval; lists (class fractions) as numbers with 3 decimals."""
    lines = []
    for k, v in report.items():
        if k.endswith("_interval") and k.removesuffix("_interval") in report:
            continue
        interval = report.get(k + "_interval")
        if isinstance(v, list):
            v = " ".join(f"{x:.3f}" for x in v)
        elif isinstance(v, dict):
            v = " ".join(f"{name} {value}" for name, value in v.items())
        text = f"{v:.6g}" if isinstance(v, float) else f"{v}"
        if interval:
            text += f"  [{interval[0]:.6g}, {interval[1]:.6g}] 95 %"
        lines.append(f"{k:>34}: {text}")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from w12_jax.evaluation import DIGIT_DATASETS, evaluate, path_points
    from w12_jax.classifier import classifier_cache_path
    from w12_jax.data import load_config_dataset
    from w12_jax.sample import get_solver

    _positive("--n", args.n)
    get_solver(args.solver)
    num_steps = steps_for_nfe(args.solver, args.nfe) if args.nfe is not None else None
    if args.rtol is not None and not 0 < args.rtol < 1:
        raise ConfigError(f"--rtol must be in (0, 1), got {args.rtol}")
    state, config = _restore(args.workdir)
    check_memory(args.n or config.eval_samples, config, path_points(config, num_steps, args.rtol) + 4)
    ds = load_config_dataset(config)
    if config.dataset in DIGIT_DATASETS and not classifier_cache_path().is_file():
        print(f"training the digit classifier once (cached in {classifier_cache_path()})", flush=True)
    report = {"iteration": int(state.step), "dataset": config.dataset, "case": config.case, "method": config.method,
              **evaluate(config, state.potential_ema, ds, num_samples=args.n, seed=args.seed, solver=args.solver,
                         num_steps=num_steps, rtol=args.rtol)}
    from w12_jax.distill import generator_spec_path

    if os.path.isfile(generator_spec_path(args.workdir)):
        report.update(_generator_report(args, config, ds))
    from w12_jax.provenance import git_revision, package_versions

    report.update(versions=package_versions(), git_revision=git_revision())
    path = args.out or os.path.join(args.workdir, "evaluation.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(format_report(report))
    print(f"wrote {path}")
    return 0


def _generator_report(args, config, ds) -> dict:
    """The quality figures of the workdir's distilled G from the x0 that the flow's sampler used, prefixed
    generator_ (`w12 evaluate` of a workdir that `w12 distill` wrote a generator to)."""
    import numpy as np

    from w12_jax.distill import distilled_sample, restore_generator
    from w12_jax.evaluation import generator_quality
    from w12_jax.sample import reference_draw

    generator, params, record = restore_generator(args.workdir, config.data_shape)
    x0 = np.asarray(reference_draw(config, args.n or config.eval_samples, args.seed))
    quality = generator_quality(config, distilled_sample(generator, params, x0), ds, seed=args.seed)
    return {"generator_flow_iteration": record["flow_iteration"], "generator_nfe": 1,
            **{f"generator_{k}": v for k, v in quality.items()}}


def _quiet_closed_event_loop() -> None:
    """Drop the 'Event loop is closed' reports of tensorstore reads still in flight after orbax gave up on
    a corrupt checkpoint (the failure itself is reported as one CheckpointError line)."""
    previous = sys.unraisablehook
    if getattr(previous, "_w12_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._w12_quiet = True
    sys.unraisablehook = hook


COMMANDS = {"train": cmd_train, "presets": cmd_presets, "sample": cmd_sample, "evaluate": cmd_evaluate,
            "distill": cmd_distill}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `w12` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        import absl.logging  # orbax logs through absl; keep stderr for our one-line errors

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    _quiet_closed_event_loop()
    from w12_jax.loop import TrainingDiverged, TrainingInterrupted

    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `w12 presets | head`: the reader left; say nothing more on the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingInterrupted as e:
        print(f"w12: {_one_line(e)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("w12: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingDiverged) as e:  # ConfigError, DataError, CheckpointError, ...
        print(f"w12: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        _forget_failed_computation()
        print(f"w12: error: out of memory ({_memory_detail(e)}); {OUT_OF_MEMORY_HINTS[args.command]}",
              file=sys.stderr)
        return 1


def available_memory() -> Optional[int]:
    """Bytes of physical memory available now (Linux), or None where unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n: int, config, copies: int) -> None:
    """ConfigError (one line: lower --n) when n samples cannot fit: a lower bound of 4 bytes × n × (copies
    sample-sized arrays + 4 activations per hidden unit of U). XLA:CPU allocates without failing and the
    operating system then kills the process, so this is checked before sampling."""
    import math

    per_sample = 4 * (copies * math.prod(config.data_shape) + 4 * sum(config.potential_hidden))
    need, have = n * per_sample, available_memory()
    if have is not None and need > have:
        raise ConfigError(f"--n {n} needs at least {need / 2**30:.3g} GiB for the samples and the network's "
                          f"activations, more than the {have / 2**30:.3g} GiB available; lower --n "
                          f"(at most about {max(1, have // per_sample)})")


def _forget_failed_computation() -> None:
    """Drop JAX's runtime tokens of the computation that failed: its exit hook would raise the error again."""
    try:
        from jax._src import dispatch

        dispatch.runtime_tokens.clear()
    except (ImportError, AttributeError):
        pass


OUT_OF_MEMORY_HINTS = {"sample": "lower --n", "evaluate": "lower --n", "distill": "lower --pairs",
                       "train": "lower batch_size (or n_critic, or the network sizes) with --set",
                       "presets": "close other programs"}


def is_out_of_memory(e: BaseException) -> bool:
    """MemoryError, or an XLA runtime error that reports an allocation failure."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text)


def _memory_detail(e: BaseException) -> str:
    import re

    m = re.search(r"allocating (\d+) bytes", str(e))
    return f"{int(m.group(1)) / 2**30:.3g} GiB requested" if m else type(e).__name__
