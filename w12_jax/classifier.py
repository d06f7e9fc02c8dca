"""The digit classifier: a small conv net trained on the bundled MNIST digits (the mnist5k train split).

``DigitClassifier`` is the feature map of the Fréchet distance and gives the predicted classes behind the
class fractions of `w12_jax.image_metrics`. Inputs: digits ``(n, 28, 28, 1)`` or ``(n, 784)``, float in
[0, 1]; outputs of ``classifier_apply``: logits ``(n, 10)`` or, with ``features=True``, the dense layer's
ReLU features ``(n, 128)``. ``train_digit_classifier`` trains it (deterministic given the seed);
``load_or_train_classifier`` reads the parameters from ``classifier_cache_path`` or trains and caches them.
"""

from __future__ import annotations

import os
import zipfile
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

Array = jax.Array

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """Small CNN for 28×28×1 digits in [0, 1]: conv 3×3 stride 2 ReLU, twice (28→14→7) → dense → logits.

    ``__call__(x)`` returns logits (B, 10); ``__call__(x, features=True)`` returns the
    ``feature_dim`` ReLU features of the dense layer (B, feature_dim), used for Fréchet distances.
    """

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 128

    @nn.compact
    def __call__(self, x: Array, features: bool = False) -> Array:
        x = x.reshape((x.shape[0],) + IMAGE_SHAPE)
        for c in self.channels:
            # Stride-2 convolutions instead of conv + pool: 4× cheaper on CPU, same 7×7 grid.
            x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2))(x))
        x = x.reshape((x.shape[0], -1))
        f = nn.relu(nn.Dense(self.feature_dim)(x))
        if features:
            return f
        return nn.Dense(NUM_CLASSES)(f)


def as_images(name: str, images) -> np.ndarray:
    """``images`` as float32 (n, 28, 28, 1); ValueError (naming ``name``) for any other size."""
    a = np.asarray(images, dtype=np.float32)
    if a.ndim < 2 or a.shape[0] < 1 or int(np.prod(a.shape[1:])) != 28 * 28:
        raise ValueError(f"{name} must have shape (n, 28, 28, 1) or (n, 784), got {a.shape}")
    return a.reshape((a.shape[0],) + IMAGE_SHAPE)


def _as_labels(name: str, labels, n: int) -> np.ndarray:
    lab = np.asarray(labels).astype(np.int32)
    if lab.shape != (n,) or lab.min() < 0 or lab.max() >= NUM_CLASSES:
        raise ValueError(f"{name} must have shape ({n},) with values in 0..9, got {lab.shape}")
    return lab


def classifier_apply(params, images, *, features: bool = False, batch_size: int = 1000) -> np.ndarray:
    """Logits (n, 10) or features (n, 128) of ``DigitClassifier`` on images (n, 28, 28, 1), in batches."""
    imgs = as_images("images", images)
    outs = [
        np.asarray(_classifier_apply(params, jnp.asarray(imgs[i:i + batch_size]), features))
        for i in range(0, imgs.shape[0], batch_size)
    ]
    return np.concatenate(outs, axis=0)


@partial(jax.jit, static_argnums=2)
def _classifier_apply(params, x: Array, features: bool) -> Array:
    return DigitClassifier().apply({"params": params}, x, features=features)


def train_digit_classifier(
    train_images,
    train_labels,
    heldout_images,
    heldout_labels,
    *,
    seed: int = 0,
    epochs: int = 6,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_shift: int = 2,
):
    """Train ``DigitClassifier`` by softmax cross-entropy with optax Adam; returns (params, heldout accuracy).

    Images (n, 28, 28, 1) or (n, 784) in [0, 1], labels (n,) int in 0..9. Each epoch is one
    compiled ``lax.scan`` over shuffled mini-batches (a trailing partial batch is dropped), each
    image shifted at random by up to ``max_shift`` pixels; the learning rate follows a cosine
    decay. Deterministic given ``seed``.
    """
    x_tr = as_images("train_images", train_images)
    y_tr = _as_labels("train_labels", train_labels, x_tr.shape[0])
    x_ho = as_images("heldout_images", heldout_images)
    y_ho = _as_labels("heldout_labels", heldout_labels, x_ho.shape[0])
    epochs, batch_size, max_shift = int(epochs), int(batch_size), int(max_shift)
    if epochs < 1 or batch_size < 1 or x_tr.shape[0] < batch_size or max_shift < 0:
        raise ValueError(
            f"need epochs >= 1, 1 <= batch_size <= n_train, max_shift >= 0; got {epochs}, {batch_size}, {max_shift}"
        )

    model = DigitClassifier()
    key = jax.random.PRNGKey(seed)
    init_key, shuffle_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))["params"]
    steps_per_epoch = x_tr.shape[0] // batch_size
    schedule = optax.cosine_decay_schedule(learning_rate, steps_per_epoch * int(epochs))
    tx = optax.adam(schedule)
    opt_state = tx.init(params)
    x_all, y_all = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    def shift(img, k):
        # Random translation by up to max_shift pixels (zero fill): cheap augmentation.
        dy, dx = jax.random.randint(k, (2,), 0, 2 * max_shift + 1)
        padded = jnp.pad(img, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
        return jax.lax.dynamic_slice(padded, (dy, dx, 0), IMAGE_SHAPE)

    def step(carry, inp):
        p, s = carry
        idx, k = inp
        xb = x_all[idx]
        if max_shift > 0:
            xb = jax.vmap(shift)(xb, jax.random.split(k, batch_size))
        grads = jax.grad(loss_fn)(p, xb, y_all[idx])
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    @jax.jit
    def epoch(p, s, k):
        k_perm, k_aug = jax.random.split(k)
        perm = jax.random.permutation(k_perm, x_all.shape[0])[: steps_per_epoch * batch_size]
        keys = jax.random.split(k_aug, steps_per_epoch)
        (p, s), _ = jax.lax.scan(step, (p, s), (perm.reshape(steps_per_epoch, batch_size), keys))
        return p, s

    for e in range(int(epochs)):
        params, opt_state = epoch(params, opt_state, jax.random.fold_in(shuffle_key, e))

    pred = np.argmax(classifier_apply(params, x_ho), axis=1)
    accuracy = float(np.mean(pred == y_ho))
    return params, accuracy


def classifier_cache_path(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Path of the cached classifier: ``cache_dir``, else ``$W12_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/w12_jax``, else ``~/.cache/w12_jax``; file ``digit_classifier_seed{seed}.npz``."""
    if cache_dir is None:
        if os.environ.get("W12_CACHE_DIR"):
            cache_dir = os.environ["W12_CACHE_DIR"]
        elif os.environ.get("XDG_CACHE_HOME"):
            cache_dir = os.path.join(os.environ["XDG_CACHE_HOME"], "w12_jax")
        else:
            cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "w12_jax")
    return Path(cache_dir) / f"digit_classifier_seed{int(seed)}.npz"


_ACC_KEY = "__heldout_accuracy__"


def _save_classifier(path: Path, params, accuracy: float) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {k: np.asarray(v) for k, v in flat.items()}
    arrays[_ACC_KEY] = np.asarray(accuracy, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written file


def _load_classifier(path: Path):
    """(params, accuracy) from ``path``, or None when it is missing, unreadable or of another architecture."""
    if not path.is_file():
        return None
    template = jax.eval_shape(
        lambda: DigitClassifier().init(jax.random.PRNGKey(0), jnp.zeros((1,) + IMAGE_SHAPE))["params"]
    )
    expected = traverse_util.flatten_dict(template, sep="/")
    try:
        with np.load(path) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if _ACC_KEY not in stored or set(stored) - {_ACC_KEY} != set(expected):
        return None
    for k, spec in expected.items():
        if stored[k].shape != spec.shape:
            return None
    flat = {k: jnp.asarray(stored[k], dtype=expected[k].dtype) for k in expected}
    return traverse_util.unflatten_dict(flat, sep="/"), float(stored[_ACC_KEY])


def load_or_train_classifier(cache_dir: str | os.PathLike | None = None, seed: int = 0):
    """(params, heldout_accuracy) of ``DigitClassifier`` trained on the mnist5k train split.

    Reads ``classifier_cache_path(cache_dir, seed)`` when it holds parameters of the current
    architecture; otherwise (missing, corrupt or mismatched file) trains with
    ``train_digit_classifier`` on ``load_dataset("mnist5k", seed=seed)`` and (re)writes the cache.
    """
    path = classifier_cache_path(cache_dir, seed)
    cached = _load_classifier(path)
    if cached is not None:
        return cached
    from w12_jax.data import load_dataset  # deferred: classifier stays importable on its own

    ds = load_dataset("mnist5k", seed=seed)
    params, accuracy = train_digit_classifier(
        ds.train, ds.train_labels, ds.heldout, ds.heldout_labels, seed=seed
    )
    _save_classifier(path, params, accuracy)
    return params, accuracy
