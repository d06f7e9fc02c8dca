"""Conditional flow matching of the same flow network (design.md §11): I-CFM and OT-CFM.

    x_t = x0 + (t/T)(y − x0),   t ~ U[0, T],   loss = mean_i |v(x_t^i, t_i) − (y^i − x0^i)/T|²

I-CFM pairs x0 ~ rho_0 and y ~ pi independently; OT-CFM pairs them by the exact optimal-transport plan of
the two minibatches under the cost |x0 − y|² (a permutation for equal sizes and uniform weights), solved
by the Hungarian algorithm of ott-jax (`ott.tools.unreg.hungarian`). The population minimiser is the
marginal velocity E[(y − x0)/T | x_t].
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from w12_jax.mfg import chord_points

Velocity = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B, *shape), t (B,)) -> (B, *shape)


def ot_permutation(x0, y):
    """perm (B,) such that (x0_i, y_perm[i]) is the exact OT pairing of x0 and y (B, *shape) for |x0 − y|²."""
    from ott.geometry import pointcloud  # imported here: ott takes seconds to import, and only OT-CFM needs it
    from ott.tools import unreg

    b = x0.shape[0]
    geom = pointcloud.PointCloud(x0.reshape(b, -1), y.reshape(b, -1))  # squared Euclidean cost
    _, out = unreg.hungarian(geom)
    rows, cols = out.paired_indices
    return jnp.zeros((b,), jnp.int32).at[rows].set(cols.astype(jnp.int32))


def interpolate(x0, y, t, T: float):
    """(x_t, target): x_t = x0 + (t/T)(y − x0) on the straight line (`mfg.chord_points`), target = (y − x0)/T;
    t (B,)."""
    return chord_points(x0, y, t, T), (y - x0) / T


def cfm_loss(v: Velocity, x0, y, t, T: float):
    """(mean_i |v(x_t^i, t_i) − (y^i − x0^i)/T|² (squared norm over the sample's axes), v(x_t, t))."""
    x_t, target = interpolate(x0, y, t, T)
    v_t = v(x_t, t)
    err = (v_t - target).reshape(x0.shape[0], -1)
    return jnp.mean(jnp.sum(err ** 2, axis=-1)), v_t
