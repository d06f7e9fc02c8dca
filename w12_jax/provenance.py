"""Where a number comes from: the package versions and the git revision of this process.

    package_versions()   # {"python": "3.11.7", "jax": "0.10.2", ...}: in run_info.json and every results file
    git_revision()       # "9df9481...-dirty" or None
    cpu_info()           # {"model name": "AMD EPYC", "flags": "fpu vme ...", ...} of the first CPU
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Optional

PACKAGES = ("jax", "jaxlib", "flax", "optax", "diffrax", "orbax-checkpoint", "ott-jax", "numpy", "scipy")


def package_versions() -> dict:
    """{"python": version, package: version or None} for Python and PACKAGES."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> Optional[str]:
    """`git rev-parse HEAD` of the checkout holding this package (+ '-dirty'), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "") if rev else None


def cpu_info() -> dict:
    """The first processor's entries of /proc/cpuinfo (model name, flags, ...); {} where there is none."""
    if not os.path.exists("/proc/cpuinfo"):
        return {}
    with open("/proc/cpuinfo") as f:
        first = f.read().split("\n\n")[0]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}


def cpu_model() -> str:
    """The processor's model name ("AMD EPYC"), or "" where /proc/cpuinfo does not say."""
    return cpu_info().get("model name", "")
