"""Sampling: integrate dx/dt = −∇U(x, t)/lam from t = 0 to T with any diffrax solver (design.md §7).

    res = sample(potential, params, x0, T=5.0, lam=0.05, solver="heun", num_steps=8)
    res = sample(potential, params, x0, T=5.0, lam=0.05, solver=diffrax.Dopri5(), rtol=1e-4, atol=1e-4)

Fixed steps step exactly onto the grid t_k = k·T/K (diffrax.StepTo), so solver="euler" reproduces the
training integrator. Tolerances select an adaptive PID controller.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from w12_jax.config import MAX_EULER_STEPS, Config
from w12_jax.flow import velocity
from w12_jax.networks import make_flow_network
from w12_jax.reference import sample_reference

SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
}


class SampleResult(NamedTuple):
    """x_T (B, *shape); nfe: evaluations of ∇U (each on the whole batch); num_steps: accepted+rejected steps;
    ts (S,) and path (S, B, *shape) when `save_points` was given, else None."""

    x_T: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    ts: Optional[jax.Array]
    path: Optional[jax.Array]


def get_solver(solver: Union[str, diffrax.AbstractSolver]) -> diffrax.AbstractSolver:
    """A diffrax solver from its name (SOLVERS) or the solver itself."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    if not isinstance(solver, str) or solver.lower() not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} or pass a diffrax solver")
    return SOLVERS[solver.lower()]()


def evaluations_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(vector-field evaluations per step, extra evaluations once at the start) for explicit solvers.

    Runge–Kutta: s stages per step, or s − 1 plus one initial evaluation when first-same-as-last.
    """
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return 1, 0  # Euler and other one-evaluation methods
    stages = len(tableau.c) + 1
    return (stages - 1, 1) if tableau.fsal else (stages, 0)


@eqx.filter_jit
def sample(network, params, x0, *, T: float, lam: float,
           solver: Union[str, diffrax.AbstractSolver] = "euler", dt: Optional[float] = None,
           num_steps: Optional[int] = None, rtol: Optional[float] = None, atol: Optional[float] = None,
           save_points: Optional[int] = None, max_steps: int = MAX_EULER_STEPS,
           ts: Optional[tuple[float, ...]] = None) -> SampleResult:
    """x_T from x0 (B, *shape) under dx/dt = v(x, t), jit-compiled; v = −∇U(x, t)/lam for a potential
    `network` (`networks.make_flow_network`), its output for a direct `VelocityField`.

    Give exactly one of `dt` (fixed step, must divide T), `num_steps` (h = T/num_steps), `ts` (a fixed grid
    0 = t_0 < t_1 < … < t_K = T, as a tuple), or `rtol`/`atol` (adaptive PID control; `dt`, if given too, is the
    first step). `save_points`: number of equally spaced times in [0, T] at which to also return the path.
    """
    solver = get_solver(solver)
    adaptive = rtol is not None or atol is not None
    if ts is not None:
        if adaptive or dt is not None or num_steps is not None:
            raise ValueError("give ts alone: it is the whole fixed grid (no dt, num_steps, rtol or atol)")
        grid = np.asarray(ts, np.float64)
        if len(grid) < 2 or grid[0] != 0.0 or abs(grid[-1] - T) > 1e-6 * T or not np.all(np.diff(grid) > 0):
            raise ValueError(f"ts must increase from 0 to T={T}, got {tuple(ts)}")
        controller, dt0 = diffrax.StepTo(ts=jnp.asarray(grid, jnp.float32).at[-1].set(T)), None
    elif not adaptive:
        if (dt is None) == (num_steps is None):
            raise ValueError("give exactly one of dt or num_steps (fixed steps), or rtol/atol (adaptive)")
        if num_steps is None:
            if not dt > 0:
                raise ValueError(f"dt must be > 0, got {dt}")
            num_steps = int(round(T / dt))
            if num_steps < 1 or abs(num_steps * dt - T) > 1e-6 * T:
                raise ValueError(f"dt={dt} must divide T={T} into a whole number of steps")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        controller = diffrax.StepTo(ts=jnp.linspace(0.0, T, num_steps + 1))
        dt0 = None
    else:
        controller = diffrax.PIDController(rtol=1e-3 if rtol is None else rtol,
                                           atol=1e-3 if atol is None else atol)
        dt0 = T / 8 if dt is None else dt

    v = velocity(network, params, lam)
    saveat = (diffrax.SaveAt(t1=True) if save_points is None
              else diffrax.SaveAt(ts=jnp.linspace(0.0, T, save_points)))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, x, args: v(x, t)), solver, t0=0.0, t1=T, dt0=dt0, y0=x0,
                              saveat=saveat, stepsize_controller=controller, max_steps=max_steps)
    per_step, extra = evaluations_per_step(solver)
    steps = sol.stats["num_steps"]
    nfe = per_step * steps + extra
    if save_points is None:
        return SampleResult(sol.ys[-1], nfe, steps, None, None)
    return SampleResult(sol.ys[-1], nfe, steps, sol.ts, sol.ys)


# ------------------------------------------------------------------------ samples of a run
SAMPLE_KEY = 0x5A3  # fold_in tag of the fixed x0 of `generate` (the sample figures, `w12 sample`, evaluation)


def reference_draw(config: Config, n: int, seed: int = 0) -> jax.Array:
    """x0 (n, *shape) ~ rho_0 from PRNGKey(seed): the x0 of `generate` at that seed."""
    return sample_reference(config, jax.random.fold_in(jax.random.PRNGKey(seed), SAMPLE_KEY), (n,))


def generate(config: Config, params, n: int, *, seed: int = 0, solver="euler", dt: Optional[float] = None,
             num_steps: Optional[int] = None, rtol: Optional[float] = None,
             save_points: Optional[int] = None) -> tuple[np.ndarray, SampleResult]:
    """(x0, result): n samples from the trained flow; x0 ~ rho_0 drawn from PRNGKey(seed).

    Defaults to the training integrator (Euler with step config.dt); rtol: adaptive steps with
    rtol = atol. save_points: number of equally spaced times in [0, T] at which the path is also returned.
    """
    if dt is None and num_steps is None and rtol is None:
        dt = config.dt
    x0 = reference_draw(config, n, seed)
    res = sample(make_flow_network(config), params, x0, T=config.T, lam=config.lam, solver=solver, dt=dt,
                 num_steps=num_steps, rtol=rtol, atol=rtol, save_points=save_points)
    return np.asarray(x0), res


def write_samples_figure(config: Config, params, path: str, data: Optional[np.ndarray] = None,
                         title: str = "", seed: int = 0) -> str:
    """Image grid of 64 samples, or a 2-D scatter of up to 2000 samples with their Euler paths.

    Runs on this process alone: replicated parameters are first taken from a local device.
    """
    from w12_jax.plots import image_grid, scatter_with_trajectories  # matplotlib: only when drawing

    params = jax.tree_util.tree_map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, params)
    if len(config.data_shape) == 3:
        _, res = generate(config, params, 64, seed=seed)
        return image_grid(np.asarray(res.x_T), path, title)
    n = min(config.eval_samples, 2000)
    _, res = generate(config, params, n, seed=seed, save_points=config.num_steps + 1)
    return scatter_with_trajectories(np.asarray(res.x_T), path, data=data,
                                           trajectories=np.asarray(res.path), title=title)
