"""A run's directory: what it holds, whether a config may start or resume in it, and its records.

    run = read_run_dir("runs/mnist5k")       # the stored config and latest checkpoint, read once
    check_run(run, config, resume=True)      # ConfigError unless config may (re)start there

Layout:
    config.json        the run's Config (Config.to_dict)
    run_info.json      seed, package versions, git revision, devices; one entry per session (start, resumes)
    metrics.jsonl      one JSON record per `log_every` iterations: {"iteration", METRICS..., "time"}
    checkpoints/<step> TrainState + config (orbax)
    samples/step_<N>.png, samples.png, curves.png
    generator/         a one-step generator G distilled from the flow (`w12 distill`; `distill.save_generator`)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import NamedTuple, Optional, Sequence

import jax

from w12_jax.checkpoint import Checkpointer
from w12_jax.config import RESUMABLE_CHANGES, Config, ConfigError
from w12_jax.plots import read_jsonl
from w12_jax.provenance import git_revision, package_versions


class RunDir(NamedTuple):
    """A workdir as found: absolute `path`; `stored`, the config of the run in it (its latest checkpoint's,
    else config.json's, else None); `latest`, its latest checkpoint step or None."""

    path: str
    stored: Optional[Config]
    latest: Optional[int]

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, "checkpoints")

    @property
    def config_file(self) -> str:
        return os.path.join(self.path, "config.json")

    @property
    def run_info_file(self) -> str:
        return os.path.join(self.path, "run_info.json")

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.path, "metrics.jsonl")


def stored_config(path: str) -> Optional[Config]:
    """The Config in the file `path` (a workdir's config.json), None when there is none; ConfigError when it
    is unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable config ({e}); move it away or use another workdir") from None


def read_run_dir(workdir: str | os.PathLike) -> RunDir:
    """What `workdir` holds (it need not exist)."""
    empty = RunDir(os.path.abspath(os.fspath(workdir)), None, None)
    stored, latest = stored_config(empty.config_file), None
    if os.path.isdir(empty.checkpoints):
        with Checkpointer(empty.checkpoints, read_only=True) as probe:
            latest = probe.latest_step()
            if latest is not None:
                stored = probe.restore_config(latest)
    return empty._replace(stored=stored, latest=latest)


def first_difference(a: Config, b: Config, ignore: Sequence[str] = ()) -> Optional[str]:
    """'field=<a's> there, <b's> here' for the first field (not in `ignore`) where a and b differ, else None."""
    for f in dataclasses.fields(Config):
        if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name):
            return f"{f.name}={getattr(a, f.name)!r} there, {getattr(b, f.name)!r} here"
    return None


def check_run(run: RunDir, config: Config, resume: bool) -> None:
    """ConfigError unless `config` may start in `run` (no checkpoint, no other config) or, with resume,
    continue its latest checkpoint (only RESUMABLE_CHANGES differ; a decaying schedule keeps iterations)."""
    stored, latest, workdir = run.stored, run.latest, run.path
    if (not resume or latest is None) and stored is not None and stored != config:
        hint = ("pass --resume to continue it with the new schedule, or use another workdir"
                if latest is not None and first_difference(stored, config, RESUMABLE_CHANGES) is None
                else "use another workdir")
        raise ConfigError(f"workdir {workdir} holds a run with a different config "
                          f"({first_difference(stored, config)}); {hint}")
    if not resume and latest is not None:
        raise ConfigError(f"workdir {workdir} already holds a run (checkpoint at iteration {latest}); "
                          "pass --resume to continue it, or use another workdir")
    if resume and stored is not None and latest is not None:
        diff = first_difference(stored, config, RESUMABLE_CHANGES)
        if diff is not None:
            raise ConfigError(f"cannot resume {workdir} with a different config ({diff}); "
                              f"only {', '.join(RESUMABLE_CHANGES)} may change")
        if stored.lr_schedule != "constant" and stored.iterations != config.iterations:
            raise ConfigError(f"cannot resume {workdir} with iterations={config.iterations}: its "
                              f"lr_schedule={stored.lr_schedule!r} decays over iterations={stored.iterations}")


def run_info(config: Config) -> dict:
    """Seed, package versions, git revision and devices of this process."""
    return {"seed": config.seed, "versions": package_versions(), "git_revision": git_revision(),
            "python": sys.version.split()[0], "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


def write_json(path: str, obj) -> None:
    """Write obj as indented JSON, atomically (a temporary file, then os.replace)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def previous_sessions(path: str) -> list:
    """The "sessions" list of run_info.json at `path`; [] when missing or unreadable."""
    try:
        with open(path) as f:
            sessions = json.load(f).get("sessions", [])
        return sessions if isinstance(sessions, list) else []
    except (OSError, ValueError, AttributeError):
        return []


def keep_records_up_to(path: str, step: int) -> None:
    """Drop metrics.jsonl records past `step` (written after the checkpoint a resumed run starts from)."""
    records = [r for r in read_jsonl(path) if r.get("iteration", 0) <= step]
    with open(path + ".tmp", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)


def open_session(run: RunDir, config: Config, start: int, write: bool) -> tuple[dict, dict]:
    """(run info, this session's entry in it) for a session from iteration `start`; with `write` (process 0)
    also writes config.json and trims metrics.jsonl to the iterations before `start` (none for a fresh run)."""
    info = run_info(config)
    # one entry per session (a fresh start, then one per resume): iterations, compile and training time
    info["sessions"] = previous_sessions(run.run_info_file) if start > 0 else []
    session = {"start_iteration": start}
    info["sessions"].append(session)
    if write:
        write_json(run.config_file, config.to_dict())
        if start == 0 and os.path.exists(run.metrics_file):
            os.remove(run.metrics_file)
        elif start > 0 and os.path.exists(run.metrics_file):
            keep_records_up_to(run.metrics_file, start)
    return info, session
