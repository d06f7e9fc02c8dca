"""Reading data files (design.md §10): the IDX format of MNIST-style files, and the user's own data.

`read_idx` / `load_idx_dir` read gzipped or plain IDX files (the four files of mnist / fashion_mnist);
`read_user_data` reads a .npy / .npz array or a folder of PNG / JPEG images of one size, and
`data_fingerprint` hashes them. `DataError` is the error of every bad data request (here and in `data`);
its message is one line, naming the file when a file is at fault. Only numpy is imported here; Pillow
is imported inside the image reader.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A bad data request; the message is always one line."""


def one_line(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, cut to `limit` characters."""
    text = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scale_images(x: np.ndarray, maximum: float) -> np.ndarray:
    """x / maximum as float32 (computed in float64): pixel values scaled to [0, 1]."""
    return (np.asarray(x, dtype=np.float64) / maximum).astype(np.float32)


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
        raise DataError(f"cannot read IDX file {path}: {one_line(e)}") from None
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
        out += [scale_images(images[..., None], 255.0), labels.astype(np.int32)]
    return tuple(out)


# ------------------------------------------------------------------------------------ own data


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
            raise DataError(f"{path}: not a readable image ({one_line(e)})") from None
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
        raise DataError(f"{path}: not a readable .npy / .npz file ({one_line(e)})") from None


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
