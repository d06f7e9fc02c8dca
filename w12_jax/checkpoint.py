"""Checkpoints of the whole `TrainState` and its `Config`, through one orbax `CheckpointManager`.

    ckpt = Checkpointer(workdir + "/checkpoints")
    ckpt.save(state, config)                  # step = int(state.step); refuses non-finite parameters
    state, config = ckpt.restore(config)      # latest step, against jax.eval_shape(init_train_state(config))
    ckpt.close()                              # waits for asynchronous saves

Each step directory holds two items: `state` (params, both optimizer states, step, key; orbax
StandardSave) and `config` (JSON, `Config.to_dict`). Because the PRNG key of every iteration is
fold_in(key, step) and the batches are a pure function of (seed, step), nothing else is needed for a
bit-identical resume. Every failure to read a checkpoint is a `CheckpointError` with a one-line message.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from w12_jax.config import Config, ConfigError
from w12_jax.train import TrainState, init_train_state

STATE, CONFIG = "state", "config"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, non-finite or of another architecture; one-line message."""


@jax.jit
def all_finite(tree) -> jax.Array:
    """True iff every floating-point leaf of `tree` is free of NaN and ±Inf (one fused reduction)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def abstract_state(config: Config, sharding: Optional[Sharding] = None) -> TrainState:
    """Shapes and dtypes of `init_train_state(config)` (nothing computed), placed on `sharding`.

    sharding defaults to the first local device; pass a replicated NamedSharding to restore straight
    onto a mesh.
    """
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if sharding is None else sharding
    shapes = jax.eval_shape(lambda: init_train_state(config))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _one_line(e: BaseException, limit: int = 200) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpointer:
    """Save / restore `TrainState` + `Config` in `directory` (created on the first save).

    max_to_keep: number of most recent steps kept on disk. Saves are asynchronous; `wait` / `close`
    block until they are on disk. read_only: the directory must exist already (for loading).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory {self.directory}")
        # read_only only stops this object from creating the directory; orbax's own read-only mode warns
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=(STATE, CONFIG),
                item_handlers={STATE: ocp.StandardCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()})
        except Exception as e:  # orbax raises several kinds on an unreadable directory
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_one_line(e)}") from None

    # ------------------------------------------------------------------------------------- queries
    def latest_step(self) -> Optional[int]:
        """The newest saved step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # -------------------------------------------------------------------------------------- saving
    def save(self, state: TrainState, config: Config, *, force: bool = False) -> int:
        """Save `state` and `config` at step int(state.step) (asynchronously); returns the step.

        Raises CheckpointError, writing nothing, when any parameter or optimizer moment is non-finite,
        so a diverged run never overwrites its last good checkpoint.
        """
        step = int(state.step)
        if not bool(all_finite(state)):
            raise CheckpointError(f"refusing to save step {step}: the train state holds NaN or Inf")
        if step in self._manager.all_steps():
            if not force:
                return step
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config.to_dict())}))
        return step

    def wait(self) -> None:
        """Block until every asynchronous save has been written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------ restoring
    def _step(self, step: Optional[int]) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; steps: "
                                  + ", ".join(map(str, steps)))
        return step

    def restore_config(self, step: Optional[int] = None) -> Config:
        """The config saved with `step` (default latest)."""
        step = self._step(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
            return Config.from_dict(restored[CONFIG])
        except ConfigError as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} holds an invalid config: {e}") from None
        except Exception as e:
            raise CheckpointError(f"cannot read the config of checkpoint {step} in {self.directory}: "
                                  f"{_one_line(e)}") from None

    def _check_metadata(self, step: int, target: TrainState) -> None:
        """Paths, shapes and dtypes stored for `step` must be those of `target`."""
        try:
            stored = self._manager.item_metadata(step)[STATE]
            stored = {_path(p): m for p, m in jax.tree_util.tree_leaves_with_path(stored)}
        except Exception as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is corrupt (cannot read its metadata: "
                                  f"{_one_line(e, 120)})") from None
        wanted = {_path(p): t for p, t in jax.tree_util.tree_leaves_with_path(target)}
        for name in wanted:
            if name not in stored:
                raise CheckpointError(f"checkpoint {step} in {self.directory} was saved from another architecture: "
                                      f"it has no array {name}")
            if tuple(stored[name].shape) != tuple(wanted[name].shape) or \
                    np.dtype(stored[name].dtype) != np.dtype(wanted[name].dtype):
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} was saved from another architecture: {name} is "
                    f"{tuple(stored[name].shape)} {np.dtype(stored[name].dtype)} there, "
                    f"{tuple(wanted[name].shape)} {np.dtype(wanted[name].dtype)} here")
        extra = sorted(set(stored) - set(wanted))
        if extra:
            raise CheckpointError(f"checkpoint {step} in {self.directory} was saved from another architecture: "
                                  f"it has an extra array {extra[0]}")

    def restore(self, config: Optional[Config] = None, step: Optional[int] = None,
                sharding: Optional[Sharding] = None) -> tuple[TrainState, Config]:
        """(state, saved config) of `step` (default latest), restored against `abstract_state(config)`.

        config: the architecture to restore into (default: the saved config). A checkpoint whose arrays
        do not match it, a corrupt one, or one with non-finite values raises CheckpointError.
        """
        step = self._step(step)
        saved = self.restore_config(step)
        config = saved if config is None else config
        target = abstract_state(config, sharding)
        self._check_metadata(step, target)  # a clear message, before orbax starts reading arrays
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(target)}))
            state = restored[STATE]
        except Exception as e:  # shape / structure mismatch, missing or truncated files
            raise CheckpointError(f"cannot restore checkpoint {step} in {self.directory}: corrupt, or saved "
                                  f"from another architecture ({_one_line(e, 160)})") from None
        _check_matches(state, target, step, self.directory)
        if not bool(all_finite(state)):
            raise CheckpointError(f"checkpoint {step} in {self.directory} holds NaN or Inf")
        if int(state.step) != step:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is corrupt: it holds step {int(state.step)}")
        return state, saved


def _path(keypath) -> str:
    """'potential_params/params/ScalarMLP_0/Dense_0/kernel' for a JAX key path (dict, sequence or attribute
    keys, as orbax's metadata tree and the TrainState dataclass spell them)."""
    parts = []
    for k in keypath:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _check_matches(state: Any, target: Any, step: int, directory: str) -> None:
    """Restored leaves must have the target's structure, shapes and dtypes."""
    got, want = jax.tree_util.tree_structure(state), jax.tree_util.tree_structure(target)
    if got != want:
        raise CheckpointError(f"checkpoint {step} in {directory} has a different parameter structure")
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(target)):
        if tuple(np.shape(a)) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
            raise CheckpointError(f"checkpoint {step} in {directory} holds an array of shape {np.shape(a)} "
                                  f"{a.dtype} where this architecture has {b.shape} {b.dtype}")
