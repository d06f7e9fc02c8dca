"""Own data: `dataset=PATH` (a .npy / .npz array or a folder of images), inferred, fingerprinted, checked."""

import os

import numpy as np
import pytest
from PIL import Image

from w12_jax.cli import main
from w12_jax.config import Config
from w12_jax.data import configure_own_data, load_dataset
from w12_jax.data_files import DataError, read_user_data


def test_vectors_from_npy_are_inferred_and_split(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "v.npy", x)
    cfg, summary = configure_own_data(Config(dataset=str(tmp_path / "v.npy")))
    assert (cfg.data_shape, cfg.architecture, cfg.reference) == ((3,), "mlp", "gaussian")
    assert "50 vectors in R^3" in summary and "45 training and 5 held-out" in summary
    ds = load_dataset(cfg.dataset, seed=cfg.seed)
    both = np.concatenate([ds.train, ds.heldout])
    np.testing.assert_allclose(np.sort(both, axis=0), np.sort(x.astype(np.float32), axis=0))  # a split of x


def test_images_from_a_folder_and_from_an_npz_are_scaled_to_unit_range(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 6, 5), dtype=np.uint8)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p, mode="L").save(folder / f"{i}.png")
    x, kind = read_user_data(folder)
    assert kind == "images" and x.shape == (4, 6, 5, 1)
    np.testing.assert_allclose(x[..., 0], pixels / 255.0, atol=1e-7)
    cfg, summary = configure_own_data(Config(dataset=str(folder)))
    assert (cfg.data_shape, cfg.architecture, cfg.reference) == ((6, 5, 1), "conv", "uniform")
    assert "images 6×5×1 scaled to [0, 1]" in summary
    np.savez(tmp_path / "rgb.npz", x=np.stack([pixels] * 3, axis=-1), labels=np.arange(4))
    x, kind = read_user_data(tmp_path / "rgb.npz")
    assert kind == "images" and x.shape == (4, 6, 5, 3) and float(x.max()) <= 1.0


@pytest.mark.parametrize("case, needle", [
    ("mixed", "all images must have one size"), ("nan", "NaN/Inf values (first in sample 2)"),
    ("one", "at least 2 are needed"), ("garbled", "not a readable .npy"), ("flat", "array of shape (10,)"),
    ("broken_png", "not a readable image"), ("two_arrays", "name the data 'x'"),
])
def test_bad_own_data_fails_in_one_line_naming_the_file(tmp_path, case, needle):
    path = tmp_path / {"mixed": "imgs", "broken_png": "imgs"}.get(case, f"{case}.npy" if case != "two_arrays"
                                                                   else "two.npz")
    if case in ("mixed", "broken_png"):
        path.mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path / "a.png")
        if case == "mixed":
            Image.fromarray(np.zeros((5, 4), np.uint8)).save(path / "b.png")
        else:
            (path / "b.png").write_bytes(b"not a png")
    elif case == "nan":
        x = np.zeros((5, 2))
        x[2, 1] = np.nan
        np.save(path, x)
    elif case == "one":
        np.save(path, np.zeros((1, 2)))
    elif case == "garbled":
        path.write_bytes(b"\x93NUMPY garbage")
    elif case == "flat":
        np.save(path, np.zeros(10))
    else:
        np.savez(path, a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(DataError) as e:
        read_user_data(path)
    message = str(e.value)
    assert needle in message and "\n" not in message, message
    assert str(path) in message or str(path / "b.png") in message, message


def test_resume_on_changed_data_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    data = tmp_path / "pts.npy"
    np.save(data, np.random.default_rng(2).normal(size=(40, 2)))
    tiny = ["--set", f"dataset={data}", "potential_hidden=8", "discriminator_hidden=8", "batch_size=8",
            "n_critic=1", "T=1", "dt=0.5", "iterations=2", "log_every=1", "checkpoint_every=1", "sample_every=100",
            "eval_samples=8"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", *tiny, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data {data}: 40 vectors in R^2") and os.path.isdir(tmp_path / "runs" / "pts")
    np.save(data, np.random.default_rng(3).normal(size=(40, 2)))  # the file changes
    assert main(["train", "--workdir", "runs/pts", "--resume", "--set", "iterations=4", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"data {data} changed since this run was configured" in err[0], err
