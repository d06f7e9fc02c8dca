"""Shared plumbing of the experiments: run a config into a workdir, record divergence, write markdown."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Callable, Sequence

import jax

from w12_jax.checkpoint import CheckpointError, Checkpointer
from w12_jax.config import Config
from w12_jax.evaluation import DOPRI5, measure_samplers
from w12_jax.loop import TrainingDiverged, train_and_evaluate
from w12_jax.presets import get_preset
from w12_jax.workdir import previous_sessions

RESULTS = os.path.join(os.path.dirname(__file__), "results")
QUICK_SAMPLERS = [(f"euler {k}", {"solver": "euler", "num_steps": k}) for k in (1, 2, 5)]  # the screens' samplers
QUICK_REFERENCE = DOPRI5  # and the screens' reference solve
RUNS = os.environ.get("W12_EXPERIMENT_RUNS", os.path.join("runs", "experiments"))


def train_or_diverge(config: Config, workdir: str):
    """(state or None, message): trains (resuming a finished or partial run in workdir); None if it diverged."""
    resume = os.path.isdir(os.path.join(workdir, "checkpoints"))
    try:
        return train_and_evaluate(config, workdir, resume=resume, progress=True), "trained"
    except TrainingDiverged as e:
        return None, str(e)


def restore_digit_run(workdir: str, experiment: str, step=None):
    """(state, config) of checkpoint `step` (default the latest) in workdir/checkpoints; SystemExit naming the
    problem when there is none or the run's samples are not images (`experiment` scores digits)."""
    try:
        with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
            state, cfg = ckpt.restore(step=step)
    except CheckpointError as e:
        raise SystemExit(f"--workdir: {e}") from None
    if len(cfg.data_shape) != 3:
        raise SystemExit(f"{workdir}: the {experiment} experiment scores digits; this run's samples have shape "
                         f"{tuple(cfg.data_shape)}")
    return state, cfg


def versions() -> dict:
    """Python, the packages the numbers depend on and the git revision: recorded in every results file."""
    from w12_jax.provenance import git_revision, package_versions

    return {**package_versions(), "git_revision": git_revision()}


def machine() -> str:
    """One line naming the machine the numbers come from."""
    dev = jax.devices()[0]
    from w12_jax.provenance import cpu_model

    model = f" {cpu_model()}" if cpu_model() else ""
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores{model}, JAX {jax.__version__} on "
            f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s))")


def digit_rows_figure(grids: dict, row_labels: Sequence[str], path: str) -> str:
    """One panel per key of `grids` (its title), one row of digits per entry of its list (labelled by
    row_labels); grids[name][i]: images (n, 28, 28, 1) shown in [0, 1]. Writes `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(grids)
    fig, axes = plt.subplots(len(row_labels), len(names), figsize=(5 * len(names), 0.75 * len(row_labels) + 0.5),
                             squeeze=False)
    for j, name in enumerate(names):
        for i, label in enumerate(row_labels):
            strip = np.concatenate(list(np.clip(np.asarray(grids[name][i])[..., 0], 0, 1)), axis=1)
            axes[i, j].imshow(strip, cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(label, rotation=0, ha="right", fontsize=8)
        axes[0, j].set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def digit_quality(classifier, accuracy, dataset):
    """quality(x_T) -> `image_metrics.image_quality` of digits x_T (clipped to [0, 1]) against the data set's
    held-out and training digits: Fréchet distance, precision, recall, class entropy, nearest training digit,
    each with its 95 % sampling interval."""
    import numpy as np

    from w12_jax import image_metrics

    def quality(x_T):
        return image_metrics.image_quality(np.clip(x_T, 0, 1), classifier, accuracy, dataset.heldout, dataset.train)

    return quality


def lowdim_config(dataset: str, dim: int, case: str, full: bool = False, iterations: int = 2000) -> Config:
    """The low-dimensional preset `dataset` in R^dim (case or flow-matching suffix), or with full=False its CPU
    schedule: `iterations` iterations at 10x the paper's learning rates on 20000 points."""
    cfg = get_preset(f"{dataset}{'' if dim == 2 else f'{dim}d'}-{case}")
    if full:
        return cfg
    return dataclasses.replace(cfg, iterations=iterations, lr_potential=10 * cfg.lr_potential,
                               lr_discriminator=10 * cfg.lr_discriminator, num_samples=20_000,
                               checkpoint_every=iterations, sample_every=iterations,
                               log_every=50, eval_samples=2000)


def measured(workdir: str, cfg: Config, state, x0, quality, samplers: list, reference: tuple, key: dict,
             filename: str, path_points: int = 65) -> tuple[dict, dict]:
    """(flow, samplers) of `evaluation.measure_samplers` for the trained `state` (its EMA parameters) from x0,
    cached in workdir/filename while `key` (with the checkpoint step and n) is the same."""
    report = cached(workdir, {"step": int(state.step), "n": len(x0), **key},
                    lambda: measure_samplers(cfg, state.potential_ema, x0, samplers, reference, quality,
                                             path_points), filename)
    return report["flow"], report["samplers"]


def training_seconds(workdir: str) -> float:
    """The training seconds of every session of the run in `workdir` (its run_info.json)."""
    return sum(s.get("train_seconds", 0.0) for s in previous_sessions(os.path.join(workdir, "run_info.json")))


def cached(workdir: str, key: dict, compute: Callable[[], dict], filename: str = "few_step.json") -> dict:
    """compute(), stored in workdir/filename and reused while `key` (checkpoint step, n, ...) is the same."""
    path = os.path.join(workdir, filename)
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    with open(path, "w") as f:
        json.dump({"key": key, "value": value}, f)
    return value


DIGIT_HEADER = ["Fréchet", "precision", "recall", "class entropy", "min class", "nearest train"]


def interval_cell(value: float, interval, digits: int = 3) -> str:
    """'v [lo, hi]': a figure with its 95 % interval ('v' alone when it has none)."""
    if not interval:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{interval[0]:.{digits}g}, {interval[1]:.{digits}g}]"


# the image_metrics figures summarised over training seeds (Fréchet distance first)
SEED_FIGURES = ("frechet_distance", "precision", "recall", "class_entropy", "min_class_fraction",
                "nearest_train_distance")


def seeds_cell(s: dict | None, digits: int = 3, interval: bool = True) -> str:
    """'mean ± sd [lo, hi]' of an `intervals.seed_summary` (the Student-t interval of the mean), '–' for None."""
    if s is None:
        return "–"
    if s["sd"] is None:
        return f"{s['mean']:.{digits}g} (1 seed)"
    lo, hi = s["interval"]
    return f"{s['mean']:.{digits}g} ± {s['sd']:.2g}" + (f" [{lo:.{digits}g}, {hi:.{digits}g}]" if interval else "")


def digit_cells(q: dict) -> list:
    """The DIGIT_HEADER cells of an `image_metrics.image_quality` dict, each figure with its 95 % interval."""
    return ([interval_cell(q[k], q.get(k + "_interval")) for k in ("frechet_distance", "precision", "recall",
                                                                     "class_entropy")]
            + [f"{q['min_class_fraction']:.3f}" if "min_class_fraction" in q else "–",
               interval_cell(q["nearest_train_distance"], q.get("nearest_train_distance_interval"))])


def digit_floor_text(config: Config, dataset, n: int) -> tuple[dict, str]:
    """(floor, markdown): `evaluation.quality_floor` of n training digits against the held-out digits, the
    figures exact samples of the data score at this sample size, as one table row."""
    from w12_jax.evaluation import quality_floor

    floor = quality_floor(config, dataset, n)
    text = (f"The floor: {n} training digits scored the same way against the same {len(dataset.heldout[:n])} "
            f"held-out digits (nearest train: the held-out digits' own distance to the training set).\n\n"
            + markdown_table(["", *DIGIT_HEADER], [["training digits", *digit_cells(floor)]]))
    return floor, text


def write_results(out: str, results: dict, text: str, stem: str = "") -> None:
    """out/results<stem>.json (with the package `versions`) and out/README<stem>.md, and the markdown on
    stdout."""
    results = {**results, "versions": versions()}
    with open(os.path.join(out, f"results{stem}.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, f"README{stem}.md"), "w") as f:
        f.write(text)
    print(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces a results file."""
    return " ".join(["python -m", module, *argv])
