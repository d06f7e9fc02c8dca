"""Figures written into a run's workdir (matplotlib, Agg backend, no display needed).

- `image_grid`: generated images on a square grid;
- `scatter_with_trajectories`: generated 2-D points (first two coordinates) over data, with a few paths;
- `training_curves`: the paper's Figure 2 — divergence estimate, kinetic energy, HJ residual and terminal
  residual against the iteration, four panels on one figure.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVES = (("divergence", "divergence estimate"), ("kinetic_energy", "kinetic energy"),
          ("hj_residual", "HJ residual"), ("terminal_residual", "terminal residual"))
CFM_CURVES = (("cfm_loss", "flow-matching loss"), ("kinetic_energy", "kinetic energy"),
              ("straight_line_bound", "straight-line bound"))  # runs with objective icfm / otcfm


def _save(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)  # a reader never sees a half-written picture
    return path


def image_grid(images, path: str | os.PathLike, title: str = "", max_images: int = 64) -> str:
    """Write up to `max_images` images (n, H, W, C), C in {1, 3}, values clipped to [0, 1], as one grid."""
    x = np.clip(np.asarray(images, np.float32)[:max_images], 0.0, 1.0)
    n, h, w, c = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(max(3.0, cols * 0.6), max(3.0, rows * 0.6)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def scatter_with_trajectories(samples, path: str | os.PathLike, data=None, trajectories=None,
                              title: str = "", max_points: int = 5000, max_paths: int = 50) -> str:
    """Scatter the first two coordinates of `samples` (n, D) over `data` (m, D), with `trajectories`
    (S, n, D) drawn for the first `max_paths` particles (start marked, end at the sample)."""
    s = np.asarray(samples, np.float32).reshape(len(samples), -1)[:max_points]
    fig, ax = plt.subplots(figsize=(5, 5))
    if data is not None:
        d = np.asarray(data, np.float32).reshape(len(data), -1)[:max_points]
        ax.scatter(d[:, 0], d[:, 1], s=2, c="tab:gray", alpha=0.3, label="data")
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", alpha=0.6, label="generated")
    if trajectories is not None:
        p = np.asarray(trajectories, np.float32)
        p = p.reshape(p.shape[0], p.shape[1], -1)[:, :max_paths]
        for i in range(p.shape[1]):
            ax.plot(p[:, i, 0], p[:, i, 1], c="tab:red", lw=0.6, alpha=0.7)
        ax.scatter(p[0, :, 0], p[0, :, 1], s=6, c="tab:red", marker="x", label="start")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def training_curves(records: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "") -> str:
    """One panel per entry of CURVES (CFM_CURVES for a flow-matching run) against `records[i]["iteration"]`;
    non-finite values are left out."""
    it = np.array([r["iteration"] for r in records], np.float64)
    curves = CFM_CURVES if any("cfm_loss" in r for r in records) else CURVES
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4))
    for ax, (key, label) in zip(axes, curves):
        y = np.array([r.get(key, np.nan) for r in records], np.float64)
        ok = np.isfinite(y)
        ax.plot(it[ok], y[ok], lw=1.0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def samples_figure(samples, path: str | os.PathLike, data=None, trajectories=None, title: str = "") -> str:
    """An image grid for image-shaped samples (n, H, W, C), else a scatter with trajectories."""
    x = np.asarray(samples)
    if x.ndim == 4:
        return image_grid(x, path, title)
    return scatter_with_trajectories(x, path, data=data, trajectories=trajectories, title=title)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl file (empty list when missing); a truncated last line is skipped."""
    out: list[dict] = []
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
