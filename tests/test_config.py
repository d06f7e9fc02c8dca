"""Config validation and parsing: every value is either accepted (and round-trips) or rejected in one line."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from w12_jax.config import CASES, FIELD_TYPES, Config, ConfigError, override, parse_assignment, with_case

BASE = Config()


@pytest.mark.parametrize("key, value, needle", [
    ("lam", "0", "lam must be a finite number > 0"), ("T", "-1", "T must be"), ("dt", "0", "dt must be"),
    ("L", "-2", "L must be"), ("batch_size", "0", "batch_size must be"), ("dt", "0.3", "must divide T"),
    ("divergence", "js", "choose one of kl, reverse_kl, alpha, w1"), ("batch_size", "2.5", "not a valid int"),
    ("lam", "abc", "not a valid float"), ("use_w1", "maybe", "not a valid bool"), ("gp_weight", "-1", ">= 0"),
    ("beta1", "1", "[0, 1)"), ("architecture", "resnet", "conv, mlp"), ("lam", "nan", "finite"),
    ("alpha", "nan", "alpha must be a finite number"), ("alpha", "inf", "alpha must be a finite number"),
    ("reference_high", "-1", "reference_low must be < reference_high"),
    ("discriminator_architecture", "resnet", "choose one of same, conv, mlp"),
])
def test_bad_values_rejected_in_one_line(key, value, needle):
    with pytest.raises(ConfigError) as e:
        override(BASE, {key: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_alpha_divergence_takes_both_sides_of_one_but_not_its_limits():
    alpha_base = dataclasses.replace(BASE, divergence="alpha")
    for limit in ("0", "1"):  # the reverse KL and the KL, named by their own divergence values
        with pytest.raises(ConfigError, match="alpha must be > 1, or < 1 and ≠ 0"):
            override(alpha_base, {"alpha": limit})
    assert override(alpha_base, {"alpha": "-1"}).alpha == -1.0 and override(alpha_base, {"alpha": "3"}).alpha == 3.0


def test_unknown_key_and_case_names():
    with pytest.raises(ConfigError, match="unknown config key 'lambda'; did you mean lam"):
        override(BASE, {"lambda": "1"})
    with pytest.raises(ConfigError, match="unknown config key 'xyz'; valid keys: case, dataset"):
        override(BASE, {"xyz": "1"})
    with pytest.raises(ValueError, match="none, w2, w1, w1w2"):
        with_case(BASE, "w3")
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignment("lam")


def test_cases_are_switches_of_one_config():
    for name, (w1, w2) in CASES.items():
        cfg = override(BASE, {"case": name})
        assert (cfg.use_w1, cfg.use_w2, cfg.case) == (w1, w2, name)
        assert dataclasses.replace(cfg, use_w1=True, use_w2=True) == BASE


def test_num_steps_is_T_over_dt():
    assert override(BASE, {"T": "1", "dt": "0.2", "architecture": "mlp"}).num_steps == 5
    assert BASE.num_steps == 5


def _text(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


values = st.one_of(st.integers(-5, 600), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.booleans(), st.text(max_size=8), st.sampled_from(["kl", "w1", "mlp", "relu", "8,8", "1e-3"]))


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.sampled_from(sorted(FIELD_TYPES)), st.text(min_size=1, max_size=10)), value=values)
def test_random_assignments_round_trip_or_fail_in_one_line(key, value):
    try:
        cfg = override(BASE, {key: _text(value)})
    except ConfigError as e:
        # one line, no longer than the list of valid keys plus a bounded preamble (key cut to 40 chars)
        assert "\n" not in str(e) and len(str(e)) < len(", ".join(("case", *FIELD_TYPES))) + 100
        return
    # accepted: the JSON form (what a checkpoint stores) restores the same config
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert key in FIELD_TYPES or key == "case"


def test_assigning_architecture_alone_sets_both_networks():
    mixed = override(BASE, {"architecture": "mlp", "discriminator_architecture": "conv"})
    assert (mixed.architecture, mixed.discriminator_architecture) == ("mlp", "conv")
    both = override(mixed, {"architecture": "mlp"})
    assert both.discriminator_architecture == "same"
    assert override(mixed, {"lam": "0.1"}).discriminator_architecture == "conv"
    with pytest.raises(ConfigError, match="raw_pixels adds the pixels to the conv features"):
        override(BASE, {"architecture": "mlp", "raw_pixels": "1"})


def test_config_docstring_names_the_runs_its_defaults_are():
    """Config() is the paper's MNIST run (preset mnist-w1w2); the main job changes exactly the fields that
    Config's docstring lists, and START_HERE names fields that the docstring's ★ marks in the source."""
    import dataclasses
    import inspect

    from w12_jax.config import START_HERE
    from w12_jax.presets import MAIN, get_preset

    assert Config() == get_preset("mnist-w1w2")
    changed = {f.name for f in dataclasses.fields(Config) if getattr(MAIN, f.name) != getattr(Config(), f.name)}
    doc = " ".join(Config.__doc__.split())
    listed = doc[doc.index("`presets.MAIN`:"):]
    assert changed and all(name in listed for name in changed)
    assert changed == {"batch_size", "n_critic", "lr_potential", "lr_discriminator", "gp_weight",
                       "velocity_weight", "potential_activation", "ema_decay", "reference_block", "iterations",
                       "checkpoint_every", "sample_every"}
    starred = {line.split(":")[0].strip() for line in inspect.getsource(Config).splitlines() if "# ★" in line}
    assert starred == set(START_HERE) and len(START_HERE) == 10
