"""The training loop: feed the compiled step, log, checkpoint, resume, plot (design.md §6).

    state = train_and_evaluate(get_preset("moons-w1w2"), "runs/moons-w1w2")
    state = train_and_evaluate(config, "runs/moons-w1w2", resume=True)   # continue from the latest checkpoint

Workdir layout:
    config.json        the run's Config (Config.to_dict)
    run_info.json      seed, package versions, git revision, devices, compile and training time
    metrics.jsonl      one JSON record per `log_every` iterations: {"iteration", METRICS..., "time"}
                       ("time": seconds since this session's first iteration; a non-finite record ends it)
    checkpoints/<step> TrainState + config (orbax), every `checkpoint_every` iterations and at the end
    samples/step_<N>.png and samples.png   sample grid / 2-D scatter with trajectories
    curves.png         divergence estimate, kinetic energy, HJ and terminal residuals vs iteration

Iteration i (0-based) trains on `sample_batches(train, seed, step=i)` and draws its randomness from
fold_in(key, i), so a resumed run is bit-identical to an uninterrupted one. Iteration numbers in logs and
messages count completed iterations (= state.step after the update).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from w12_jax import plots
from w12_jax.checkpoint import Checkpointer, all_finite
from w12_jax.config import Config, ConfigError
from w12_jax.data import Dataset, batch_sampler, data_fingerprint, is_data_path, load_dataset
from w12_jax.networks import make_flow_network
from w12_jax.provenance import git_revision, package_versions
from w12_jax.reference import sample_reference
from w12_jax.sample import SampleResult, sample
from w12_jax.train import (METRICS, WARMUP, TrainState, data_sharding, global_array, init_train_state,
                           make_mesh, make_scanned_steps, make_train_step, phase_config, phase_of)

# Fields that may change when a run is resumed (schedule and logging only, not the problem or networks).
RESUMABLE_CHANGES = ("iterations", "log_every", "steps_per_call", "checkpoint_every", "sample_every",
                     "eval_samples", "data_dir")
LIVE_METRICS = (("divergence", "div"), ("cfm_loss", "cfm"), ("kinetic_energy", "KE"), ("hj_residual", "HJ"),
                ("terminal_residual", "term"))
STATE_PARTS = ("potential_params", "potential_ema", "discriminator_params", "potential_opt_state",
               "discriminator_opt_state")
SAMPLE_KEY = 0x5A3  # fold_in tag of the fixed x0 used for the sample figures
# the most Euler steps K = T/dt: the default max_steps of w12_jax.sample.sample, which draws the figures
# (the paper uses K <= 10; without a bound, a huge T/dt fails inside XLA with a traceback)


class TrainingDiverged(RuntimeError):
    """A metric or parameter became NaN/Inf; the message (one line) names the iteration and quantity."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training: a checkpoint was saved; the message says how to resume."""


# ------------------------------------------------------------------------------------------ data
def configure_own_data(config: Config) -> tuple[Config, str]:
    """(config, one-line summary) for own data (`config.dataset` a .npy / .npz file or an image folder):
    data_shape, architecture (the conv pair for images, MLPs for vectors), reference (U[0, 0.5] for images,
    N(0, I) for vectors) and data_hash taken from the data. Other datasets: (config, "")."""
    if not is_data_path(config.dataset):
        return config, ""
    ds = load_dataset(config.dataset, seed=config.seed)
    images = len(ds.sample_shape) == 3
    config = dataclasses.replace(
        config, data_shape=ds.sample_shape, architecture="conv" if images else "mlp",
        discriminator_architecture="same", reference=ds.reference,
        reference_low=ds.reference_low if images else config.reference_low,
        reference_high=ds.reference_high if images else config.reference_high,
        embed_dim=0, num_samples=0, data_hash=data_fingerprint(config.dataset))
    shape = "×".join(map(str, ds.sample_shape))
    what = (f"images {shape} scaled to [0, 1]; conv potential and discriminator; reference U[0, 0.5]" if images
            else f"vectors in R^{shape}; MLP potential and discriminator; reference N(0, I)")
    return config, (f"data {config.dataset}: {len(ds.train) + len(ds.heldout)} {what}; {len(ds.train)} training "
                    f"and {len(ds.heldout)} held-out samples; sha256 {config.data_hash}")


def load_config_dataset(config: Config) -> Dataset:
    """The data set named by `config`; ConfigError when its sample shape is not config.data_shape, a split
    is empty (too small num_samples) or own data no longer match the recorded data_hash."""
    if is_data_path(config.dataset) and config.data_hash and os.path.exists(config.dataset):
        now = data_fingerprint(config.dataset)
        if now != config.data_hash:
            raise ConfigError(f"data {config.dataset} changed since this run was configured (sha256 "
                              f"{config.data_hash}, now {now}); train on it in a new workdir")
    ds = load_dataset(config.dataset, seed=config.seed, embed_dim=config.embed_dim or None,
                      data_dir=config.data_dir or None, num_samples=config.num_samples or None)
    if tuple(ds.sample_shape) != tuple(config.data_shape):
        raise ConfigError(f"data set {config.dataset!r} has samples of shape {ds.sample_shape} but "
                          f"data_shape={tuple(config.data_shape)}; set data_shape (and architecture) to match")
    if len(ds.train) == 0 or len(ds.heldout) == 0:
        raise ConfigError(f"data set {config.dataset!r} with num_samples={config.num_samples} has {len(ds.train)} "
                          f"training and {len(ds.heldout)} held-out samples; both must be non-empty, "
                          "raise num_samples")
    return ds


# -------------------------------------------------------------------------------------- sampling
def generate(config: Config, params, n: int, *, seed: int = 0, solver="euler", dt: Optional[float] = None,
             num_steps: Optional[int] = None, rtol: Optional[float] = None,
             save_points: Optional[int] = None) -> tuple[np.ndarray, SampleResult]:
    """(x0, result): n samples from the trained flow; x0 ~ rho_0 drawn from PRNGKey(seed).

    Defaults to the training integrator (Euler with step config.dt); rtol: adaptive steps with
    rtol = atol. save_points: number of equally spaced times in [0, T] at which the path is also returned.
    """
    if dt is None and num_steps is None and rtol is None:
        dt = config.dt
    x0 = sample_reference(config, jax.random.fold_in(jax.random.PRNGKey(seed), SAMPLE_KEY), (n,))
    res = sample(make_flow_network(config), params, x0, T=config.T, lam=config.lam, solver=solver, dt=dt,
                 num_steps=num_steps, rtol=rtol, atol=rtol, save_points=save_points)
    return np.asarray(x0), res


def write_samples_figure(config: Config, params, path: str, data: Optional[np.ndarray] = None,
                         title: str = "", seed: int = 0) -> str:
    """Image grid of 64 samples, or a 2-D scatter of up to 2000 samples with their Euler paths.

    Runs on this process alone: replicated parameters are first taken from a local device.
    """
    params = jax.tree_util.tree_map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, params)
    if len(config.data_shape) == 3:
        _, res = generate(config, params, 64, seed=seed)
        return plots.image_grid(np.asarray(res.x_T), path, title)
    n = min(config.eval_samples, 2000)
    _, res = generate(config, params, n, seed=seed, save_points=config.num_steps + 1)
    return plots.scatter_with_trajectories(np.asarray(res.x_T), path, data=data,
                                           trajectories=np.asarray(res.path), title=title)


# ------------------------------------------------------------------------------------- run info
def run_info(config: Config) -> dict:
    """Seed, package versions, git revision and devices of this process."""
    return {"seed": config.seed, "versions": package_versions(), "git_revision": git_revision(),
            "python": sys.version.split()[0], "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _previous_sessions(path: str) -> list:
    try:
        with open(path) as f:
            sessions = json.load(f).get("sessions", [])
        return sessions if isinstance(sessions, list) else []
    except (OSError, ValueError, AttributeError):
        return []


def _first_difference(a: Config, b: Config, ignore: Sequence[str] = ()) -> Optional[str]:
    for f in dataclasses.fields(Config):
        if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name):
            return f"{f.name}={getattr(a, f.name)!r} there, {getattr(b, f.name)!r} here"
    return None


def _stored_config(workdir: str) -> Optional[Config]:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable config ({e}); move it away or use another workdir") from None


def _keep_records_up_to(path: str, step: int) -> None:
    """Drop metrics.jsonl records past `step` (written after the checkpoint a resumed run starts from)."""
    records = [r for r in plots.read_jsonl(path) if r.get("iteration", 0) <= step]
    with open(path + ".tmp", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)


# -------------------------------------------------------------------------------- the training loop
class _InterruptFlag:
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
def _finite_parts(state: TrainState) -> dict:
    """{part: no NaN/Inf in it} for the STATE_PARTS of `state`, one compiled call."""
    return {p: all_finite(getattr(state, p)) for p in STATE_PARTS}


def _format(metrics: dict, keys=METRICS) -> str:
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *, resume: bool = False,
                       devices: Optional[Sequence[jax.Device]] = None, progress: bool = True) -> TrainState:
    """Train `config` for config.iterations outer iterations, writing everything into `workdir`.

    resume: continue from the latest checkpoint in workdir (only the fields RESUMABLE_CHANGES may differ
    from the stored run); without it, a workdir that already holds a checkpoint or another config is
    refused (ConfigError). devices: the data-parallel mesh (default all devices).
    Raises TrainingDiverged when a metric or parameter becomes NaN/Inf (the last good checkpoint stays),
    TrainingInterrupted after saving a checkpoint on Ctrl-C. Returns the final TrainState.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    is_main = jax.process_index() == 0

    def say(msg):
        if progress and is_main:
            from tqdm import tqdm
            tqdm.write(msg)

    # everything that can be wrong with the request is checked before the workdir is touched
    ds = load_config_dataset(config)
    # one compiled step per phase: the OT-CFM warm-up (cfm_warmup), and each training grid K (train_steps draws
    # one per iteration on the host); iterations that are not logged skip the INDICATOR_METRICS (same
    # parameters, ~8 % less work)
    phases = ([WARMUP] if config.cfm_warmup else []) + sorted(set(config.train_steps or [config.num_steps]))
    step_fns = {}
    for phase in phases:
        cfg = phase_config(config, phase)
        lean_too = config.log_every > 1 and cfg.objective == "mfg"
        step_fns[phase] = (make_train_step(cfg, devices),
                           make_train_step(cfg, devices, indicators=False) if lean_too else None)
    mesh = make_mesh(devices)
    replicated = NamedSharding(mesh, P())
    ckpt_dir = os.path.join(workdir, "checkpoints")
    stored = _stored_config(workdir)
    latest = None
    if os.path.isdir(ckpt_dir):
        with Checkpointer(ckpt_dir, read_only=True) as probe:
            latest = probe.latest_step()
            if latest is not None:
                stored = probe.restore_config(latest)
    if (not resume or latest is None) and stored is not None and stored != config:
        hint = ("pass --resume to continue it with the new schedule, or use another workdir"
                if latest is not None and _first_difference(stored, config, RESUMABLE_CHANGES) is None
                else "use another workdir")
        raise ConfigError(f"workdir {workdir} holds a run with a different config "
                          f"({_first_difference(stored, config)}); {hint}")
    if not resume and latest is not None:
        raise ConfigError(f"workdir {workdir} already holds a run (checkpoint at iteration {latest}); "
                          "pass --resume to continue it, or use another workdir")
    if resume and stored is not None and latest is not None:
        diff = _first_difference(stored, config, RESUMABLE_CHANGES)
        if diff is not None:
            raise ConfigError(f"cannot resume {workdir} with a different config ({diff}); "
                              f"only {', '.join(RESUMABLE_CHANGES)} may change")
        if stored.lr_schedule != "constant" and stored.iterations != config.iterations:
            raise ConfigError(f"cannot resume {workdir} with iterations={config.iterations}: its "
                              f"lr_schedule={stored.lr_schedule!r} decays over iterations={stored.iterations}")

    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(ckpt_dir)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if latest is not None:
        state, _ = ckpt.restore(config, latest, sharding=replicated)
        start = int(state.step)
        say(f"resuming {workdir} from iteration {start}")
    else:
        state = jax.tree_util.tree_map(lambda a: global_array(a, replicated), init_train_state(config))
        start = 0
    info = run_info(config)
    info_path = os.path.join(workdir, "run_info.json")
    # one entry per session (a fresh start, then one per resume): iterations, compile and training time
    info["sessions"] = _previous_sessions(info_path) if start > 0 else []
    session = {"start_iteration": start}
    info["sessions"].append(session)
    if is_main:
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
        if start == 0 and os.path.exists(metrics_path):
            os.remove(metrics_path)
        elif start > 0 and os.path.exists(metrics_path):
            _keep_records_up_to(metrics_path, start)

    draw = batch_sampler(np.asarray(ds.train, np.float32), seed=config.seed, num_batches=config.n_critic,
                         batch_size=config.batch_size)
    batch_sharding = data_sharding(mesh)
    one_device = mesh.devices.size == 1 and jax.process_count() == 1

    # the compiled calls of this session, in order: (first iteration, iterations in the call); a call of
    # steps_per_call > 1 iterations (one lax.scan) holds no logged, saved or drawn iteration and one phase
    phase_at = [phase_of(config, i) for i in range(config.iterations)]
    block = config.steps_per_call
    stacked_sharding = NamedSharding(mesh, P(None, None, "data"))

    def checked(it):  # iteration `it` (1-based) is logged, saved or drawn: its step runs alone
        return (it % config.log_every == 0 or it == config.iterations or it % config.checkpoint_every == 0
                or it % config.sample_every == 0)

    def starts_block(i):
        return block > 1 and i + block <= config.iterations and all(
            not checked(j + 1) and phase_at[j] == phase_at[i] for j in range(i, i + block))

    plan, i = [], start
    while i < config.iterations:
        plan.append((i, block if starts_block(i) else 1))
        i += plan[-1][1]

    def call_input(i, n):  # the data of the call of n iterations from i, identical on every process
        # one device: the compiled step takes the numpy batch itself, one copy inside the call, about 30 µs
        # per iteration less than building a jax.Array first (benchmarks/loop_overhead)
        if n > 1:
            stacked = np.stack([draw(j) for j in range(i, i + n)])
            return stacked if one_device else global_array(stacked, stacked_sharding)
        return draw(i) if one_device else global_array(draw(i), batch_sharding)

    dim = int(np.prod(config.data_shape))
    if config.architecture == "mlp" and config.potential_hidden[0] < dim:
        say(f"note: the MLP potential's first layer ({config.potential_hidden[0]}) is narrower than the data "
            f"({dim}), so the flow moves samples only within a {config.potential_hidden[0]}-dim subspace")
    t0 = time.perf_counter()  # compile ahead of time, so that compilation is timed on its own
    compiled = {}  # (phase, logged) or (phase, "block") -> compiled step
    if start < config.iterations:
        needed = set(phase_at[start:])
        one = call_input(start, 1)
        for k, (step_fn, lean_fn) in ((k, f) for k, f in step_fns.items() if k in needed):
            compiled[k, True] = step_fn.jitted.lower(state, one).compile()
            compiled[k, False] = (lean_fn.jitted.lower(state, one).compile() if lean_fn is not None
                                  else compiled[k, True])
        blocks = {phase_at[i] for i, n in plan if n > 1}
        stacked = jax.ShapeDtypeStruct((block,) + one.shape, one.dtype, sharding=stacked_sharding)
        for k in blocks:
            compiled[k, "block"] = make_scanned_steps(phase_config(config, k), block, devices).lower(
                state, stacked).compile()
    session["compile_seconds"] = time.perf_counter() - t0
    if compiled:
        n = len(set(map(id, compiled.values())))
        say(f"compiled {n} training step{'s' if n > 1 else ''} in {session['compile_seconds']:.1f} s on "
            f"{len(mesh.devices.flat)} {jax.default_backend()} device(s)")
    if is_main:
        _write_json(info_path, info)

    from tqdm import tqdm

    bar = tqdm(total=config.iterations, initial=start, disable=True if not (progress and is_main) else None,
               dynamic_ncols=True, desc=f"{config.dataset} {config.method}",
               bar_format="{desc} {percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} "
                          "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    plain_log = progress and is_main and bar.disable  # no terminal: one stdout line per checkpoint instead
    log_file = open(metrics_path, "a") if is_main else None
    last_good: dict = {}  # the metrics of the latest checked iteration, all finite
    good_iteration = start
    shown: dict = {}  # the latest value of every metric (indicators: from the latest logged iteration)
    t_train = time.perf_counter()
    try:
        with _InterruptFlag(say) as interrupt:
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
                bar.update(n)
                save = it % config.checkpoint_every == 0 or it == config.iterations or interrupt.set
                figure = is_main and it % config.sample_every == 0 and it < config.iterations
                if not (logged or save or figure):
                    continue  # no device→host transfer: the device stays busy with the queued steps
                # checked iterations: every logged one, and every one before a save, so that a non-finite
                # state never reaches a checkpoint
                metrics, finite = jax.device_get((metrics, _finite_parts(state)))
                metrics = {k: float(v) for k, v in metrics.items()} if logged else {}
                bad = [k for k in metrics if not np.isfinite(metrics[k])]
                bad_parts = [p for p in STATE_PARTS if not finite[p]]
                if log_file is not None and (logged or bad or bad_parts):
                    log_file.write(json.dumps({"iteration": it, **metrics,
                                               "time": time.perf_counter() - t_train}) + "\n")
                    log_file.flush()
                if bad or bad_parts:
                    what = f"{bad[0]} is {metrics[bad[0]]}" if bad else f"{bad_parts[0]} holds NaN or Inf"
                    ckpt.wait()
                    kept = ckpt.latest_step()
                    last = (f"last finite metrics (iteration {good_iteration}): "
                            f"{_format(last_good, dict(LIVE_METRICS))}" if last_good else "no finite iteration before it")
                    where = (f"last good checkpoint: iteration {kept} in {ckpt_dir}" if kept is not None
                             else "no checkpoint was saved")
                    raise TrainingDiverged(f"training diverged by iteration {it}: {what}; {last}; {where}")
                if logged:
                    last_good = shown = {**shown, **metrics}
                    good_iteration = it
                    if not bar.disable:
                        bar.set_postfix_str(", ".join(f"{short}={shown[k]:.3g}" for k, short in LIVE_METRICS
                                                      if k in shown), refresh=False)
                if it % config.checkpoint_every == 0 and it < config.iterations:
                    ckpt.save(state, config)
                    if plain_log:
                        print(f"iteration {it}/{config.iterations}: {_format(shown, dict(LIVE_METRICS))}; "
                              f"checkpoint saved", flush=True)
                if figure:
                    write_samples_figure(config, state.potential_ema,
                                         os.path.join(workdir, "samples", f"step_{it:06d}.png"),
                                         data=ds.heldout, title=f"{config.dataset} {config.method}, iteration {it}",
                                         seed=config.seed)
                if interrupt.set and it < config.iterations:
                    ckpt.save(state, config)
                    ckpt.wait()
                    raise TrainingInterrupted(
                        f"interrupted at iteration {it}; checkpoint saved in {ckpt_dir}; "
                        f"resume with: w12 train --workdir {workdir} --resume")
        seconds = time.perf_counter() - t_train  # the iterations alone (no final checkpoint or figures)
        ckpt.save(state, config)
        ckpt.wait()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        ckpt.close()
        if is_main and os.path.exists(metrics_path):
            records = plots.read_jsonl(metrics_path)
            if records:
                plots.training_curves(records, os.path.join(workdir, "curves.png"),
                                      title=f"{config.dataset}, {config.method}")

    done = config.iterations - start
    if is_main:
        session.update(end_iteration=int(state.step), train_seconds=seconds, compiled_calls=len(plan),
                       iterations_per_second=done / seconds if seconds > 0 and done else None)
        _write_json(info_path, info)
        title = f"{config.dataset} {config.method}, iteration {int(state.step)}"
        final = write_samples_figure(config, state.potential_ema,
                                     os.path.join(workdir, "samples", f"step_{int(state.step):06d}.png"),
                                     data=ds.heldout, title=title, seed=config.seed)
        shutil.copyfile(final, os.path.join(workdir, "samples.png"))
    say(f"trained {done} iterations in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} it/s); "
        f"final {_format(last_good, dict(LIVE_METRICS))}; wrote {workdir}")
    return state
