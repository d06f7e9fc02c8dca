"""One frozen configuration object naming every hyper-parameter of design.md §6.

The four cases of the paper are values of two switches, not code paths:

    case        use_w1 (gradient penalty)   use_w2 (kinetic term)
    none        False                       False
    w2          False                       True
    w1          True                        False
    w1w2        True                        True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

DIVERGENCES = ("kl", "reverse_kl", "alpha", "w1")
ARCHITECTURES = ("conv", "mlp")
ACTIVATIONS = ("relu", "tanh", "softplus", "silu", "elu")
REFERENCES = ("uniform", "gaussian")
LR_SCHEDULES = ("constant", "cosine")
MAX_EULER_STEPS = 16_384  # K = T/dt; also the default step limit of `w12_jax.sample.sample`
OBJECTIVES = ("mfg", "icfm", "otcfm")
VELOCITY_FIELDS = ("potential", "direct")
IDENTITY_PATHS = ("none", "scalar", "pixel", "endpoint")
ATOM_INITS = ("data", "normal")
PENALTY_WEIGHTS = ("hj_weight", "terminal_weight", "velocity_weight", "chord_weight")  # design.md §11
CASES = {"none": (False, False), "w2": (False, True), "w1": (True, False), "w1w2": (True, True)}
# the fields a resumed run may change: its schedule and logging (the "loop" group below), not the problem or
# the networks; data_dir only says where the same data lie
RESUMABLE_CHANGES = ("iterations", "log_every", "steps_per_call", "checkpoint_every", "sample_every",
                     "eval_samples", "data_dir")


# the keys a newcomer sets first (marked ★ in Config)
START_HERE = ("dataset", "T", "dt", "lam", "L", "divergence", "use_w1", "use_w2", "batch_size", "iterations")


class ConfigError(ValueError):
    """A configuration value or key that is not allowed; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of one run, flat and frozen; `override` and `--set key=value` change them.

    Start with the ten keys in START_HERE (marked ★ below): the data, the problem (T, h, lam, L, the
    divergence), the paper's case (use_w1, use_w2), the batch and the length of the run. The rest tune the
    method's extensions, the networks and the loop.

    Config() is the paper's MNIST W1⊕W2 run (design.md §6; preset `mnist-w1w2`, 5000 iterations of B = 200,
    n_D = 5). `w12 train` with no preset runs the main job, `presets.MAIN`: Config() with batch_size 100,
    n_critic 2, lr_potential and lr_discriminator 1e-3, gp_weight 5, velocity_weight 50,
    potential_activation silu, ema_decay 0.99, reference_block 2, iterations 1900, checkpoint_every and
    sample_every 600.
    """

    # data and reference distribution rho_0
    dataset: str = "mnist5k"  # ★ a name of data.DATASETS, or a .npy / .npz file or an image folder
    data_shape: tuple[int, ...] = (28, 28, 1)
    embed_dim: int = 0  # 0: no zero-padded embedding (low-dim sets only)
    data_dir: str = ""  # IDX directory for offline fashion_mnist / mnist; "" = default
    data_hash: str = ""  # own data (dataset = a .npy / .npz file or an image folder): its sha256, set on first use
    num_samples: int = 0  # synthetic sets: points generated; 0 = data set default
    reference: str = "uniform"
    reference_low: float = 0.0
    reference_high: float = 0.5
    reference_scale: float = 1.0  # std of the gaussian reference
    reference_block: int = 1  # b > 1: x0 drawn on the (H/b, W/b) grid and repeated over b×b blocks (images only;
    # vectors ignore it, own images it does not divide get 1)
    # M > 1: rho_0 is an equal mixture of M copies of that draw, copy m shifted by separation·s_m, s_m a fixed
    # ±1 pattern (on the blocks): separate components, so that a smooth one-step map can send each to its own
    # part of the data where one connected rho_0 needs a jump between modes (design.md §13)
    reference_components: int = 1
    reference_separation: float = 0.1
    # the problem: min_v D_f^{Gamma_L}(rho_T || pi) + lam * int E|v|^2/2 dt
    T: float = 5.0  # ★ the flow's time horizon
    dt: float = 1.0  # ★ Euler step h; K = T / h steps
    train_steps: tuple[int, ...] = ()  # each iteration trains on K Euler steps drawn from these; () = T / dt
    lam: float = 0.05  # ★ weight of the kinetic energy (W2 proximal)
    L: float = 1.0  # ★ Lipschitz bound of phi (W1 proximal)
    gp_weight: float = 0.1  # mu
    divergence: str = "kl"  # ★ f of D_f^{Gamma_L}: one of DIVERGENCES
    alpha: float = 2.0  # for divergence='alpha': > 1, or < 1 and ≠ 0 (mass-covering; 0 is the reverse KL)
    use_w1: bool = True  # ★ Lipschitz gradient penalty on phi
    use_w2: bool = True  # ★ kinetic-energy term in the potential loss
    # straightness penalties on the potential loss (design.md §11; 0 = off, the paper's objective)
    hj_weight: float = 0.0  # w_HJ · R_HJ, the HJ residual on the flowed particles
    terminal_weight: float = 0.0  # w_T · mean |∇U(x_K, T) − ∇phi(x_K)|, phi frozen
    velocity_weight: float = 0.0  # w_V · Σ_k h mean |∇U(x_{k+1}, t_{k+1}) − ∇U(x_k, t_k)|² / h²
    chord_weight: float = 0.0  # w_C · lam T mean ½|v(z, t) − (x_K − x0)/T|², z on the chord at t ~ U[0, T]
    # training objective (design.md §11): "mfg", the paper's adversarial W1⊕W2 problem above, or conditional
    # flow matching of the same network, "icfm" (independent pairs) or "otcfm" (exact minibatch OT pairs)
    objective: str = "mfg"
    velocity_field: str = "potential"  # v = −∇U/lam, or "direct": v(x, t) from the trunk with a d-dim head
    # warm start of the MFG objective: its first cfm_warmup iterations train U alone by OT-CFM (exact minibatch
    # OT pairs, Adam(0.9, 0.999) at lr cfm_warmup_lr, the flow-matching presets' optimizer); 0 = off
    cfm_warmup: int = 0
    cfm_warmup_lr: float = 5e-4
    # β > 0 keeps flow matching in the MFG objective: G + β·L_OT-CFM of the same network, on the potential
    # phase's x0 paired with the last data batch by exact minibatch OT (design.md §12); 0 = off
    cfm_weight: float = 0.0
    # optimisation
    n_critic: int = 5  # n_D (flow matching: 1 block of data per iteration, the last of n_critic)
    batch_size: int = 200  # ★ B, particles and data per update (global, over all devices)
    lr_potential: float = 5e-4
    lr_discriminator: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine": lr·½(1 + cos(π s/S)), S = the run's updates of that network
    beta1: float = 0.5
    beta2: float = 0.9
    ema_decay: float = 0.0  # d > 0: sample from an exponential moving average of U's parameters (0: off)
    iterations: int = 5000  # ★ outer iterations (n_D phi updates + one U update each)
    seed: int = 0
    # networks (design.md §6)
    architecture: str = "conv"  # of U, and of phi unless discriminator_architecture says otherwise
    discriminator_architecture: str = "same"  # "same" as `architecture`, or "conv" / "mlp"; reset to "same"
    # by `override` when only `architecture` is assigned (so `--set architecture=mlp` means MLPs for both)
    conv_channels: tuple[int, ...] = (8, 8)
    conv_kernel: int = 7
    conv_space_to_depth: bool = True  # first conv (≤ 3 input channels) via space-to-depth: same function, faster
    potential_hidden: tuple[int, ...] = (512, 512, 512)
    potential_activation: str = "relu"  # of U's MLP; the main job's silu makes U smooth (design.md §13)
    discriminator_hidden: tuple[int, ...] = (256, 256, 256)
    discriminator_activation: str = "relu"
    # identity path (design.md §13): U + ½ a(t)|x|² ("scalar"), ½ Σ a_p(t) x_p² ("pixel"), lam|x|²/(2(T − t))
    # ("endpoint"); a direct field v + a(t)x, or v = (D(x, t) − x)/(T − t) ("endpoint")
    identity_path: str = "none"
    # the flow network's MLP reads the flattened pixels beside the conv features, so that −∇U/lam (or v)
    # depends on every pixel of x0, not only on its pooled features (design.md §13)
    raw_pixels: bool = False
    # U's conv layers: activation and 2×2 pool ("max" or "avg"); the paper's relu and max make U piecewise linear
    potential_conv_channels: tuple[int, ...] = ()  # U's conv channels; () = conv_channels (shared with phi)
    potential_conv_activation: str = "relu"
    potential_conv_pool: str = "max"
    # how U's MLP sees t: appended to its input ("concat", the paper's), or also scaling and shifting each hidden
    # layer from sin/cos features of t/T ("film"), so that ∇U(·, 0), the one-step map, can differ from later times
    potential_time_conditioning: str = "concat"
    # U's MLP head: M scalar heads joined by a soft maximum, U = τ log Σ_k exp(u_k/τ) (M = 1: the paper's one
    # linear head), so that ∇U(·, 0), the one-step map, can switch between digits instead of blending them
    potential_heads: int = 1
    potential_head_temperature: float = 0.01  # τ, in units of U (|∇U| ≈ 0.1 in the main job)
    # K learned atoms y_k added to U as the value function of a terminal cost on them (0: none, the paper's U):
    # −∇/lam of that term runs straight to a soft choice of atom, so one Euler step lands where K steps do;
    # each atom's cost is set so that 1/K of the reference goes to it (equal masses). Not adopted: the flow
    # ends on the atoms, a K-point generator (with atoms from data: copies of training digits; few_step README)
    potential_atoms: int = 0
    potential_atom_temperature: float = 0.05  # τ of the choice, in units of |x − y|²/(2T)
    potential_atom_init: str = "data"  # the atoms start at K training samples, or "normal": N(0, 0.1²) pixels
    # loop: schedule and logging only, the fields a resumed run may change (RESUMABLE_CHANGES)
    log_every: int = 10
    # iterations that are not logged, saved or drawn run in blocks of steps_per_call per compiled call (lax.scan)
    steps_per_call: int = 1
    checkpoint_every: int = 500
    sample_every: int = 500
    eval_samples: int = 1000

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.type.startswith("tuple"):
                object.__setattr__(self, f.name, tuple(int(v) for v in getattr(self, f.name)))
        _validate(self)

    @property
    def num_steps(self) -> int:
        """K = T / h, the number of Euler steps of the training flow."""
        return int(round(self.T / self.dt))

    @property
    def case(self) -> str:
        """Name of the paper's case selected by (use_w1, use_w2)."""
        return {v: k for k, v in CASES.items()}[(self.use_w1, self.use_w2)]

    @property
    def method(self) -> str:
        """What trains the flow: the paper's case (w1w2, w1, w2, none) or the flow-matching objective, with
        "-direct" for a direct velocity network."""
        name = self.case if self.objective == "mfg" else self.objective
        return name + ("-direct" if self.velocity_field == "direct" else "")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        unknown = sorted(set(d) - set(FIELD_TYPES))
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0], tuple(FIELD_TYPES)))
        return cls(**{k: _coerce(k, v) for k, v in d.items()})


def _one_of(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}")


def _positive(cfg, *names):
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")


def blocks_tile(block: int, image_shape: tuple[int, ...]) -> bool:
    """True iff block×block pixel blocks tile an image of shape (H, W, C): block divides H and W."""
    return not any(n % block for n in image_shape[:2])


def _validate(cfg: Config) -> None:
    _one_of("divergence", cfg.divergence, DIVERGENCES)
    _one_of("architecture", cfg.architecture, ARCHITECTURES)
    _one_of("discriminator_architecture", cfg.discriminator_architecture, ("same",) + ARCHITECTURES)
    _one_of("potential_activation", cfg.potential_activation, ACTIVATIONS)
    _one_of("potential_conv_activation", cfg.potential_conv_activation, ACTIVATIONS)
    _one_of("potential_conv_pool", cfg.potential_conv_pool, ("max", "avg"))
    _one_of("potential_time_conditioning", cfg.potential_time_conditioning, ("concat", "film"))
    _one_of("discriminator_activation", cfg.discriminator_activation, ACTIVATIONS)
    _one_of("reference", cfg.reference, REFERENCES)
    _one_of("objective", cfg.objective, OBJECTIVES)
    _one_of("velocity_field", cfg.velocity_field, VELOCITY_FIELDS)
    _one_of("identity_path", cfg.identity_path, IDENTITY_PATHS)
    if cfg.velocity_field == "direct" and cfg.objective == "mfg" and cfg.hj_weight:
        raise ConfigError("hj_weight needs the potential U (velocity_field='potential'): the HJ residual "
                          "∂tU − |∇U|²/(2 lam) has no counterpart for a direct velocity field")
    if cfg.potential_heads < 1 or not cfg.potential_head_temperature > 0:
        raise ConfigError(f"potential_heads must be >= 1 and potential_head_temperature > 0, got "
                          f"{cfg.potential_heads} and {cfg.potential_head_temperature}")
    if cfg.potential_heads > 1 and cfg.velocity_field == "direct":
        raise ConfigError("potential_heads joins scalar heads of the potential U; the direct velocity field "
                          "(velocity_field='direct') has one d-dimensional head")
    if cfg.potential_atoms < 0 or not cfg.potential_atom_temperature > 0:
        raise ConfigError(f"potential_atoms must be >= 0 and potential_atom_temperature > 0, got "
                          f"{cfg.potential_atoms} and {cfg.potential_atom_temperature}")
    _one_of("potential_atom_init", cfg.potential_atom_init, ATOM_INITS)
    if cfg.potential_atoms and cfg.velocity_field == "direct":
        raise ConfigError("potential_atoms adds a term to the potential U; the direct velocity field "
                          "(velocity_field='direct') has no U")
    if cfg.potential_time_conditioning == "film" and cfg.velocity_field == "direct":
        raise ConfigError("potential_time_conditioning='film' conditions the potential U's MLP; the direct "
                          "velocity field (velocity_field='direct') reads t by concatenation only")
    if cfg.reference_components < 1 or not cfg.reference_separation > 0:
        raise ConfigError(f"reference_components must be >= 1 and reference_separation > 0, got "
                          f"{cfg.reference_components} and {cfg.reference_separation}")
    if cfg.reference_block < 1 or (len(cfg.data_shape) == 3 and not blocks_tile(cfg.reference_block,
                                                                               cfg.data_shape)):
        raise ConfigError(f"reference_block must be >= 1 and divide the image's height and width, got "
                          f"{cfg.reference_block} for data_shape={cfg.data_shape}")
    if cfg.raw_pixels and cfg.architecture != "conv":
        raise ConfigError("raw_pixels adds the pixels to the conv features; the mlp architecture reads them already")
    _one_of("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    _positive(cfg, "T", "dt", "lam", "L", "batch_size", "n_critic", "lr_potential", "lr_discriminator",
              "iterations", "log_every", "steps_per_call", "checkpoint_every", "sample_every", "eval_samples",
              "conv_kernel", "reference_scale", "cfm_warmup_lr")
    if cfg.cfm_weight and cfg.objective != "mfg":
        raise ConfigError(f"cfm_weight adds OT-CFM to the MFG objective; objective={cfg.objective!r} is flow "
                          "matching throughout")
    for name in ("gp_weight", "cfm_weight") + PENALTY_WEIGHTS:
        v = getattr(cfg, name)
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
    k = cfg.T / cfg.dt
    if abs(k - round(k)) > 1e-6 * max(1.0, k) or round(k) < 1:
        raise ConfigError(f"dt={cfg.dt} must divide T={cfg.T} into a whole number of steps (got T/dt={k:g})")
    if round(k) > MAX_EULER_STEPS:
        raise ConfigError(f"T={cfg.T:g} and dt={cfg.dt:g} give T/dt={k:g} Euler steps, "
                          f"more than {MAX_EULER_STEPS}; raise dt or lower T")
    if any(k < 1 or k > MAX_EULER_STEPS for k in cfg.train_steps):
        raise ConfigError(f"train_steps must be step counts in 1..{MAX_EULER_STEPS}, got {cfg.train_steps}")
    if cfg.cfm_warmup < 0:
        raise ConfigError(f"cfm_warmup must be >= 0, got {cfg.cfm_warmup}")
    if cfg.cfm_warmup and cfg.objective != "mfg":
        raise ConfigError(f"cfm_warmup warm-starts the MFG objective by OT-CFM; objective={cfg.objective!r} "
                          "is flow matching throughout")
    if cfg.cfm_warmup >= cfg.iterations:
        raise ConfigError(f"cfm_warmup={cfg.cfm_warmup} leaves none of the {cfg.iterations} iterations to the "
                          "MFG objective; raise iterations or lower cfm_warmup")
    if cfg.train_steps and cfg.objective != "mfg":
        raise ConfigError("train_steps draws the Euler grid of the MFG objective's flow; flow matching "
                          f"(objective={cfg.objective!r}) integrates no flow in training")
    for name in ("beta1", "beta2", "ema_decay"):
        v = getattr(cfg, name)
        if not 0 <= v < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
    if cfg.divergence == "alpha" and cfg.alpha in (0, 1):
        raise ConfigError(f"alpha must be > 1, or < 1 and ≠ 0, for the alpha-divergence (its limits 1 and 0 are "
                          f"divergence='kl' and 'reverse_kl'), got {cfg.alpha!r}")
    if not cfg.reference_low < cfg.reference_high:
        raise ConfigError(f"reference_low must be < reference_high, got {cfg.reference_low} >= {cfg.reference_high}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if cfg.embed_dim < 0 or cfg.num_samples < 0:
        raise ConfigError("embed_dim and num_samples must be >= 0")
    if not cfg.data_shape or any(s < 1 for s in cfg.data_shape):
        raise ConfigError(f"data_shape must be positive sizes, got {cfg.data_shape}")
    if any(s < 1 for s in cfg.potential_hidden + cfg.discriminator_hidden + cfg.conv_channels
           + cfg.potential_conv_channels):
        raise ConfigError("layer sizes must be >= 1")
    for name in ("architecture", "discriminator_architecture"):
        if getattr(cfg, name) == "conv" and len(cfg.data_shape) != 3:
            raise ConfigError(f"{name}='conv' needs image data (H, W, C), got data_shape={cfg.data_shape}")
    for f in dataclasses.fields(cfg):  # every float, alpha too when divergence is not 'alpha', is a finite number
        v = getattr(cfg, f.name)
        if f.type == "float" and not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ConfigError(f"{f.name} must be a finite number, got {v!r}")


FIELD_TYPES: dict[str, str] = {f.name: f.type for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any) -> Any:
    """Convert `value` (a string from the command line, or a JSON value) to the type of field `key`."""
    typ = FIELD_TYPES[key]
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ == "int":
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if typ.startswith("tuple"):
            items = value.replace("(", "").replace(")", "").split(",") if isinstance(value, str) else value
            return tuple(_coerce_int(v) for v in items if str(v).strip() != "")
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key}={value!r} is not a valid {typ}")


def _coerce_int(v):
    f = float(v)
    if not f.is_integer() or isinstance(v, bool):
        raise ValueError
    return int(f)


def override(cfg: Config, assignments: Mapping[str, Any]) -> Config:
    """Return `cfg` with `key=value` assignments applied (strings are parsed to the field's type).

    The key `case` is accepted as a shorthand for (use_w1, use_w2), see `with_case`. Assigning
    `architecture` alone sets both networks' type (discriminator_architecture becomes "same").
    """
    assignments = dict(assignments)
    if "architecture" in assignments and "discriminator_architecture" not in assignments:
        assignments["discriminator_architecture"] = "same"
    if "case" in assignments:
        cfg = with_case(cfg, str(assignments.pop("case")))
    unknown = sorted(set(assignments) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(_unknown_key_message(unknown[0], ("case", *FIELD_TYPES)))
    return dataclasses.replace(cfg, **{k: _coerce(k, v) for k, v in assignments.items()})


def _unknown_key_message(key: str, valid: tuple[str, ...]) -> str:
    """One line: the key (its repr cut to 40 characters), close matches if any, else every valid key."""
    shown = repr(key) if len(repr(key)) <= 40 else repr(key)[:37] + "..."
    close = difflib.get_close_matches(key, valid, n=3)
    if close:
        return f"unknown config key {shown}; did you mean {' or '.join(close)}?"
    return f"unknown config key {shown}; valid keys: {', '.join(valid)}"


def with_case(cfg: Config, case: str) -> Config:
    """Select one of the paper's four cases: 'none', 'w2', 'w1', 'w1w2' (design.md §4)."""
    _one_of("case", case, tuple(CASES))
    use_w1, use_w2 = CASES[case]
    return dataclasses.replace(cfg, use_w1=use_w1, use_w2=use_w2)


def parse_assignment(text: str) -> tuple[str, str]:
    """'key=value' -> ('key', 'value')."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


assert all(t in ("str", "int", "float", "bool", "tuple[int, ...]") for t in FIELD_TYPES.values()), FIELD_TYPES
