"""The training loop: feed the compiled step, log, checkpoint, resume, draw (design.md §6).

    state = train_and_evaluate(get_preset("moons-w1w2"), "runs/moons-w1w2")
    state = train_and_evaluate(config, "runs/moons-w1w2", resume=True)   # continue from the latest checkpoint

`train_and_evaluate` reads as its steps: check the request and the workdir (`workdir.check_run`), plan the
compiled calls (`plan_calls`), compile them (`compile_calls`), run them (`run_calls`: feed, log, guard
against NaN/Inf with `DivergenceGuard`, save, draw), then close the session. The workdir's layout is in
`w12_jax.workdir`.

Iteration i (0-based) trains on `sample_batches(train, seed, step=i)` and draws its randomness from
fold_in(key, i), so a resumed run is bit-identical to an uninterrupted one. Iteration numbers in logs and
messages count completed iterations (= state.step after the update).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from w12_jax import plots
from w12_jax.checkpoint import Checkpointer, all_finite
from w12_jax.config import Config
from w12_jax.data import Dataset, batch_sampler, load_config_dataset
from w12_jax.distributed import data_sharding, global_array, is_main_process, make_mesh
from w12_jax.sample import write_samples_figure
from w12_jax.phases import WARMUP, phase_config, phase_of
from w12_jax.train import METRICS, TrainState, init_train_state, make_scanned_steps, make_train_step, with_data_atoms
from w12_jax.workdir import RunDir, check_run, open_session, read_run_dir, write_json

LIVE_METRICS = (("divergence", "div"), ("cfm_loss", "cfm"), ("kinetic_energy", "KE"), ("hj_residual", "HJ"),
                ("terminal_residual", "term"))
STATE_PARTS = ("potential_params", "potential_ema", "discriminator_params", "potential_opt_state",
               "discriminator_opt_state")

ATOM_KEY = 0xA70  # folded into PRNGKey(seed) for the training samples the atoms start at


class TrainingDiverged(RuntimeError):
    """A metric or parameter became NaN/Inf; the message (one line) names the iteration and quantity."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training: a checkpoint was saved; the message says how to resume."""


class InterruptFlag:
    """First SIGINT sets the flag (the loop saves and stops after the current iteration); a second one
    raises KeyboardInterrupt at once. Installed only in the main thread."""

    def __init__(self, say):
        self.set, self._say, self._previous = False, say, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        self._say("interrupt received: saving a checkpoint after this iteration (Ctrl-C again to abort)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@jax.jit
def finite_parts(state: TrainState) -> dict:
    """{part: no NaN/Inf in it} for the STATE_PARTS of `state`, one compiled call."""
    return {p: all_finite(getattr(state, p)) for p in STATE_PARTS}


def format_metrics(metrics: dict, keys=METRICS) -> str:
    """'k=v, ...' (4 significant digits) for the `keys` present in `metrics`."""
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


# ------------------------------------------------------------------------------- planning the calls
def is_checked(config: Config, it: int) -> bool:
    """Iteration `it` (1-based) is logged, saved or drawn, so its step runs alone."""
    return (it % config.log_every == 0 or it == config.iterations or it % config.checkpoint_every == 0
            or it % config.sample_every == 0)


def plan_calls(config: Config, start: int) -> tuple[list[tuple[int, int]], list]:
    """(plan, phases): the compiled calls of a session from iteration `start`, in order, as (first iteration,
    iterations in the call), and the phase (`phases.phase_of`) of every iteration. A call of steps_per_call > 1
    iterations (one lax.scan) holds no checked iteration and one phase."""
    phase_at = [phase_of(config, i) for i in range(config.iterations)]
    block = config.steps_per_call

    def starts_block(i):
        return block > 1 and i + block <= config.iterations and all(
            not is_checked(config, j + 1) and phase_at[j] == phase_at[i] for j in range(i, i + block))

    plan, i = [], start
    while i < config.iterations:
        plan.append((i, block if starts_block(i) else 1))
        i += plan[-1][1]
    return plan, phase_at


def phase_steps(config: Config, devices) -> dict:
    """{phase: (step, lean step or None)}: one compiled step per phase, the OT-CFM warm-up (cfm_warmup) and
    each training grid K (train_steps draws one per iteration on the host); iterations that are not logged
    skip the INDICATOR_METRICS (same parameters, ~8 % less work)."""
    phases = ([WARMUP] if config.cfm_warmup else []) + sorted(set(config.train_steps or [config.num_steps]))
    steps = {}
    for phase in phases:
        cfg = phase_config(config, phase)
        lean_too = config.log_every > 1 and cfg.objective == "mfg"
        steps[phase] = (make_train_step(cfg, devices),
                        make_train_step(cfg, devices, indicators=False) if lean_too else None)
    return steps


class CallInputs:
    """The data of the call of n iterations from i, identical on every process. One device: the compiled
    step takes the numpy batch itself, one copy inside the call, about 30 µs per iteration less than building a
    jax.Array first (benchmarks/loop_overhead)."""

    def __init__(self, config: Config, ds: Dataset, mesh):
        self.draw = batch_sampler(np.asarray(ds.train, np.float32), seed=config.seed,
                                  num_batches=config.n_critic, batch_size=config.batch_size)
        self.batch = data_sharding(mesh)
        self.stacked = NamedSharding(mesh, P(None, None, "data"))
        self.one_device = mesh.devices.size == 1 and jax.process_count() == 1

    def __call__(self, i: int, n: int):
        if n > 1:
            stacked = np.stack([self.draw(j) for j in range(i, i + n)])
            return stacked if self.one_device else global_array(stacked, self.stacked)
        return self.draw(i) if self.one_device else global_array(self.draw(i), self.batch)


def compile_calls(config: Config, steps: dict, state, plan, phase_at, call_input: CallInputs, devices) -> dict:
    """{(phase, logged) or (phase, "block"): compiled step} for the calls of `plan`, compiled ahead of time."""
    compiled = {}
    if not plan:
        return compiled
    start = plan[0][0]
    one = call_input(start, 1)
    for k, (step_fn, lean_fn) in ((k, f) for k, f in steps.items() if k in set(phase_at[start:])):
        compiled[k, True] = step_fn.jitted.lower(state, one).compile()
        compiled[k, False] = lean_fn.jitted.lower(state, one).compile() if lean_fn is not None else compiled[k, True]
    block = config.steps_per_call
    stacked = jax.ShapeDtypeStruct((block,) + one.shape, one.dtype, sharding=call_input.stacked)
    for k in {phase_at[i] for i, n in plan if n > 1}:
        compiled[k, "block"] = make_scanned_steps(phase_config(config, k), block, devices).lower(
            state, stacked).compile()
    return compiled


# ------------------------------------------------------------------------------------ running them
class DivergenceGuard:
    """Keeps the latest finite metrics; `check` raises TrainingDiverged (one line: the iteration, the first
    non-finite metric or state part, the last finite metrics, the last good checkpoint) on NaN/Inf."""

    def __init__(self, start: int):
        self.last_good: dict = {}  # the metrics of the latest logged iteration, all finite
        self.iteration = start
        self.shown: dict = {}  # the latest value of every metric (indicators: from the latest logged iteration)

    def check(self, it: int, metrics: dict, finite: dict, ckpt: Checkpointer) -> None:
        bad = [k for k in metrics if not np.isfinite(metrics[k])]
        bad_parts = [p for p in STATE_PARTS if not finite[p]]
        if not (bad or bad_parts):
            return
        what = f"{bad[0]} is {metrics[bad[0]]}" if bad else f"{bad_parts[0]} holds NaN or Inf"
        ckpt.wait()
        kept = ckpt.latest_step()
        last = (f"last finite metrics (iteration {self.iteration}): "
                f"{format_metrics(self.last_good, dict(LIVE_METRICS))}" if self.last_good
                else "no finite iteration before it")
        where = (f"last good checkpoint: iteration {kept} in {ckpt.directory}" if kept is not None
                 else "no checkpoint was saved")
        raise TrainingDiverged(f"training diverged by iteration {it}: {what}; {last}; {where}")

    def logged(self, it: int, metrics: dict) -> None:
        self.last_good = self.shown = {**self.shown, **metrics}
        self.iteration = it


class Session(NamedTuple):
    """What one training session writes to and reports through."""

    config: Config
    run: RunDir
    ckpt: Checkpointer
    heldout: np.ndarray
    log_file: Optional[object]
    bar: object
    say: Callable[[str], None]
    plain_log: bool
    is_main: bool


def record(session: Session, guard: DivergenceGuard, it: int, logged: bool, state, metrics, t_train) -> None:
    """Bring a checked iteration's metrics to the host, log them, and guard against NaN/Inf (before any
    save, so that a non-finite state never reaches a checkpoint)."""
    metrics, finite = jax.device_get((metrics, finite_parts(state)))
    metrics = {k: float(v) for k, v in metrics.items()} if logged else {}
    unfinished = not all(np.isfinite(v) for v in metrics.values()) or not all(finite.values())
    if session.log_file is not None and (logged or unfinished):
        session.log_file.write(json.dumps({"iteration": it, **metrics, "time": time.perf_counter() - t_train}) + "\n")
        session.log_file.flush()
    guard.check(it, metrics, finite, session.ckpt)
    if logged:
        guard.logged(it, metrics)
        if not session.bar.disable:
            session.bar.set_postfix_str(", ".join(f"{short}={guard.shown[k]:.3g}" for k, short in LIVE_METRICS
                                                  if k in guard.shown), refresh=False)


def draw_samples(session: Session, state, it: int) -> str:
    """The sample figure of iteration `it` (samples/step_<it>.png); returns its path."""
    config = session.config
    return write_samples_figure(config, state.potential_ema,
                                os.path.join(session.run.path, "samples", f"step_{it:06d}.png"),
                                data=session.heldout, title=f"{config.dataset} {config.method}, iteration {it}",
                                seed=config.seed)


def run_calls(session: Session, state, plan, phase_at, compiled: dict, call_input: CallInputs, guard, t_train):
    """Run the planned calls: feed, log and guard the checked iterations, save, draw, stop on Ctrl-C.
    Returns the final state."""
    config, ckpt = session.config, session.ckpt
    with InterruptFlag(session.say) as interrupt:
        data = call_input(*plan[0]) if plan else None
        for c, (i, n) in enumerate(plan):
            it = i + n
            logged = it % config.log_every == 0 or it == config.iterations
            if n > 1:  # steps_per_call unlogged iterations in one call
                state, metrics = compiled[phase_at[i], "block"](state, data), {}
            else:
                state, metrics = compiled[phase_at[i], logged](state, data)  # dispatched, not waited for
            if c + 1 < len(plan):
                data = call_input(*plan[c + 1])  # drawn on the host while the device runs this call
            session.bar.update(n)
            save = it % config.checkpoint_every == 0 or it == config.iterations or interrupt.set
            figure = session.is_main and it % config.sample_every == 0 and it < config.iterations
            if not (logged or save or figure):
                continue  # no device→host transfer: the device stays busy with the queued steps
            record(session, guard, it, logged, state, metrics, t_train)
            if it % config.checkpoint_every == 0 and it < config.iterations:
                ckpt.save(state, config)
                if session.plain_log:
                    print(f"iteration {it}/{config.iterations}: {format_metrics(guard.shown, dict(LIVE_METRICS))}; "
                          f"checkpoint saved", flush=True)
            if figure:
                draw_samples(session, state, it)
            if interrupt.set and it < config.iterations:
                ckpt.save(state, config)
                ckpt.wait()
                raise TrainingInterrupted(f"interrupted at iteration {it}; checkpoint saved in {ckpt.directory}; "
                                          f"resume with: w12 train --workdir {session.run.path} --resume")
    return state


def progress_bar(config: Config, start: int, show: bool):
    """tqdm bar over the run's iterations (disabled when not `show`)."""
    from tqdm import tqdm

    return tqdm(total=config.iterations, initial=start, disable=True if not show else None, dynamic_ncols=True,
                desc=f"{config.dataset} {config.method}",
                bar_format="{desc} {percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} "
                           "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def mlp_width_note(config: Config) -> Optional[str]:
    """A note when an MLP potential's first layer is narrower than the data (a subspace flow), else None."""
    dim = int(np.prod(config.data_shape))
    if config.architecture == "mlp" and config.potential_hidden[0] < dim:
        return (f"note: the MLP potential's first layer ({config.potential_hidden[0]}) is narrower than the data "
                f"({dim}), so the flow moves samples only within a {config.potential_hidden[0]}-dim subspace")
    return None


# -------------------------------------------------------------------------------- the training loop
def train_and_evaluate(config: Config, workdir: str | os.PathLike | RunDir, *, resume: bool = False,
                       devices: Optional[Sequence[jax.Device]] = None, progress: bool = True) -> TrainState:
    """Train `config` for config.iterations outer iterations, writing everything into `workdir` (a path, or
    the `RunDir` the caller has already read).

    resume: continue from the latest checkpoint in workdir (only the fields RESUMABLE_CHANGES may differ
    from the stored run); without it, a workdir that already holds a checkpoint or another config is
    refused (ConfigError). devices: the data-parallel mesh (default all devices).
    Raises TrainingDiverged when a metric or parameter becomes NaN/Inf (the last good checkpoint stays),
    TrainingInterrupted after saving a checkpoint on Ctrl-C. Returns the final TrainState.
    """
    is_main = is_main_process()

    def say(msg):
        if progress and is_main:
            from tqdm import tqdm
            tqdm.write(msg)

    # everything that can be wrong with the request is checked before the workdir is touched
    ds = load_config_dataset(config)
    steps = phase_steps(config, devices)
    mesh = make_mesh(devices)
    run = workdir if isinstance(workdir, RunDir) else read_run_dir(workdir)
    check_run(run, config, resume)

    os.makedirs(run.path, exist_ok=True)
    ckpt = Checkpointer(run.checkpoints)
    replicated = NamedSharding(mesh, P())
    if run.latest is not None:
        state, _ = ckpt.restore(config, run.latest, sharding=replicated)
        say(f"resuming {run.path} from iteration {int(state.step)}")
    else:
        state = jax.tree_util.tree_map(lambda a: global_array(a, replicated), init_train_state(config))
        if config.potential_atoms and config.potential_atom_init == "data":  # `with_data_atoms`
            state = with_data_atoms(state, ds.train, jax.random.fold_in(jax.random.PRNGKey(config.seed), ATOM_KEY))
    start = int(state.step)
    info, session_info = open_session(run, config, start, write=is_main)
    call_input = CallInputs(config, ds, mesh)
    plan, phase_at = plan_calls(config, start)
    if note := mlp_width_note(config):
        say(note)
    t0 = time.perf_counter()  # compile ahead of time, so that compilation is timed on its own
    compiled = compile_calls(config, steps, state, plan, phase_at, call_input, devices)
    session_info["compile_seconds"] = time.perf_counter() - t0
    if compiled:
        n = len(set(map(id, compiled.values())))
        say(f"compiled {n} training step{'s' if n > 1 else ''} in {session_info['compile_seconds']:.1f} s on "
            f"{len(mesh.devices.flat)} {jax.default_backend()} device(s)")
    if is_main:
        write_json(run.run_info_file, info)

    bar = progress_bar(config, start, progress and is_main)
    session = Session(config, run, ckpt, ds.heldout, open(run.metrics_file, "a") if is_main else None, bar, say,
                      progress and is_main and bar.disable, is_main)  # plain log: no terminal, a line per save
    guard = DivergenceGuard(start)
    t_train = time.perf_counter()
    try:
        state = run_calls(session, state, plan, phase_at, compiled, call_input, guard, t_train)
        seconds = time.perf_counter() - t_train  # the iterations alone (no final checkpoint or figures)
        ckpt.save(state, config)
        ckpt.wait()
    finally:
        close_session(session)

    done = config.iterations - start
    if is_main:
        session_info.update(end_iteration=int(state.step), train_seconds=seconds, compiled_calls=len(plan),
                            iterations_per_second=done / seconds if seconds > 0 and done else None)
        write_json(run.run_info_file, info)
        shutil.copyfile(draw_samples(session, state, int(state.step)), os.path.join(run.path, "samples.png"))
    say(f"trained {done} iterations in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} it/s); "
        f"final {format_metrics(guard.last_good, dict(LIVE_METRICS))}; wrote {run.path}")
    return state


def close_session(session: Session) -> None:
    """Close the bar, the metrics log and the checkpointer; draw curves.png from the metrics so far."""
    session.bar.close()
    if session.log_file is not None:
        session.log_file.close()
    session.ckpt.close()
    if session.is_main and os.path.exists(session.run.metrics_file):
        records = plots.read_jsonl(session.run.metrics_file)
        if records:
            plots.training_curves(records, os.path.join(session.run.path, "curves.png"),
                                  title=f"{session.config.dataset}, {session.config.method}")
