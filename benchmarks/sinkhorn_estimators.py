"""The authors' Sinkhorn estimator: `metrics.eps_scaling_sinkhorn_divergence` against geomloss itself.

    pip install -c requirements.lock -e '.[bench]'     # torch 2.13.0 (CPU) and geomloss
    python -m benchmarks.sinkhorn_estimators --out benchmarks/results/sinkhorn_estimators.json

On three pairs of 2000-point pinwheel sets (training against held-out points, against a scaled and shifted
copy, against itself) it writes geomloss's SamplesLoss("sinkhorn", p=2, blur=0.05) (tensorized), ours, and
`metrics.sinkhorn_divergence` (ott-jax solved to convergence at the same eps) beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from w12_jax import metrics
from w12_jax.data import load_dataset
from w12_jax.provenance import package_versions


def pairs(n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = load_dataset("pinwheel", num_samples=100_000)
    x, y = ds.train[:n], ds.heldout[:n]
    shifted = (ds.heldout[n:2 * n] * 1.1 + 0.2).astype(np.float32)
    return {"train vs held-out": (x, y), "train vs 1.1·held-out + 0.2": (x, shifted), "train vs itself": (x, x)}


def main(argv=None):
    import geomloss
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", default="benchmarks/results/sinkhorn_estimators.json")
    args = parser.parse_args(argv)
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=metrics.AUTHORS_BLUR, scaling=metrics.AUTHORS_SCALING,
                                backend="tensorized")
    rows = {}
    for name, (x, y) in pairs(args.n).items():
        rows[name] = {"geomloss": float(loss(torch.tensor(x), torch.tensor(y))),
                      "eps_scaling_sinkhorn_divergence": float(metrics.eps_scaling_sinkhorn_divergence(x, y)),
                      "sinkhorn_divergence (converged)": float(metrics.sinkhorn_divergence(x, y))}
        print(name, rows[name], flush=True)
    result = {"n": args.n, "geomloss": geomloss.__version__, "torch": torch.__version__, "pairs": rows,
              "versions": package_versions()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
