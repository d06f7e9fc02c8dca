"""Presets carry the hyper-parameters of design.md §6; the four cases differ only in the two switches."""

import dataclasses

import pytest

from w12_jax.cli import main
from w12_jax.config import CASES, ConfigError
from w12_jax.data import load_dataset
from w12_jax.presets import DEFAULT_PRESET, LOWDIM_DATASETS, PRESETS, get_preset

SWITCHES = {"use_w1", "use_w2"}
SCHEDULE = {"iterations", "checkpoint_every", "sample_every"}


def differing(a, b):
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_mnist_presets_are_the_paper_run():
    c = get_preset("mnist-w1w2")
    assert (c.dataset, c.data_shape) == ("mnist5k", (28, 28, 1))
    assert (c.T, c.dt, c.lam, c.L, c.gp_weight) == (5.0, 1.0, 0.05, 1.0, 0.1)
    assert (c.batch_size, c.n_critic, c.lr_discriminator, c.lr_potential, c.iterations) == (200, 5, 1e-4, 5e-4, 5000)
    assert (c.architecture, c.conv_channels, c.conv_kernel) == ("conv", (8, 8), 7)
    assert (c.reference, c.reference_low, c.reference_high) == ("uniform", 0.0, 0.5)
    assert (c.potential_hidden, c.discriminator_hidden) == ((512,) * 3, (256,) * 3)
    for case, switches in CASES.items():
        p = get_preset(f"mnist-{case}")
        assert (p.use_w1, p.use_w2) == switches and p.case == case
        assert differing(p, c) <= SWITCHES | SCHEDULE
        assert p.iterations == (5000 if p.use_w1 else 200)  # the diverging cases run 200 iterations
    assert get_preset(DEFAULT_PRESET).dataset == "mnist5k"


@pytest.mark.parametrize("dim", [2, 7, 12])
def test_lowdim_presets(dim):
    for dataset in LOWDIM_DATASETS:
        stem = dataset if dim == 2 else f"{dataset}{dim}d"
        base = get_preset(f"{stem}-w1w2")
        assert (base.T, base.dt, base.L, base.batch_size, base.iterations) == (1.0, 0.2, 1.0, 200, 25000)
        assert (base.lam, base.gp_weight) == ((0.5, 0.1) if dim == 2 else (0.1, 0.01))
        assert (base.lr_discriminator, base.lr_potential) == (2e-5, 1e-4)
        assert (base.potential_hidden, base.potential_activation) == ((64,) * 5, "tanh")
        assert (base.discriminator_hidden, base.discriminator_activation) == ((64,) * 3, "relu")
        assert base.data_shape == (dim,) and base.architecture == "mlp" and base.reference == "gaussian"
        ds = load_dataset(base.dataset, seed=base.seed, embed_dim=base.embed_dim or None, num_samples=100)
        assert ds.sample_shape == base.data_shape
        for case, switches in CASES.items():
            p = get_preset(f"{stem}-{case}")
            assert (p.use_w1, p.use_w2) == switches and differing(p, base) <= SWITCHES


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError, match="unknown preset 'mnist-w3'; valid presets: mnist5k, mnist-w1w2"):
        get_preset("mnist-w3")


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert len(PRESETS) == 1 + 4 + 2 + len(LOWDIM_DATASETS) * 3 * (4 + 2)


def test_preset_table_matches_the_presets():
    """Every preset has a row in docs/presets.md whose lam, gp_weight (— without a critic's penalty) and
    iterations are the preset's."""
    import re
    from pathlib import Path

    from w12_jax.presets import PRESETS

    root = Path(__file__).resolve().parents[1]
    for doc, names in [("docs/presets.md", list(PRESETS))]:
        text = (root / doc).read_text()
        rows = {m[0]: m[1:] for m in re.findall(
            r"^\| `([\w-]+)` \| [^|]+ \| ([\d.e-]+) \| ([\d.e-]+|—) \| (\d+) \|$", text, flags=re.M)}
        assert set(names) <= set(rows), (doc, sorted(set(names) - set(rows))[:3])
        for name in names:
            cfg = PRESETS[name].config
            lam, gp, iterations = rows[name]
            assert float(lam) == cfg.lam and int(iterations) == cfg.iterations, (doc, name)
            penalised = cfg.use_w1 and cfg.objective == "mfg"
            assert (gp == "—") == (not penalised), (doc, name)
            if penalised:
                assert float(gp) == cfg.gp_weight, (doc, name)
