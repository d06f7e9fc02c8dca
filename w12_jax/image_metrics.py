"""Quality of generated 28×28×1 digits in [0, 1], built on the features of `w12_jax.classifier`.

``nearest_train_distances`` / ``nearest_train_distance`` (memorisation: distance to the nearest training
image, any sample shape), ``precision_recall`` / ``precision_recall_counts`` with k-NN manifolds
(Kynkäänniemi et al. 2019) in feature space, ``class_fractions`` and ``class_entropy`` of predicted classes,
and ``image_quality``, which gathers them with the Fréchet distance of features and sampling intervals.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from w12_jax import intervals
from w12_jax.classifier import NUM_CLASSES, as_images, classifier_apply
from w12_jax.intervals import BOOTSTRAP_RESAMPLES
from w12_jax.metrics import check_chunk, frechet_distance, pad_rows, sq_dists

Array = jax.Array


def nearest_train_distances(samples, train_images, chunk_size: int = 512) -> np.ndarray:
    """min_j |s_i − t_j| (L2 over all pixels) for every sample i: (n,) float32, the memorisation check.

    The nearest index is found with |s|² + |t|² − 2 s·t in chunks of ``chunk_size`` samples;
    the distance to it is then recomputed as |s_i − t_j| directly, so a sample that is a
    training image gives exactly 0. samples: (n, *shape), train_images: (m, *shape).
    """
    s = jnp.asarray(samples, dtype=jnp.float32)
    t = jnp.asarray(train_images, dtype=jnp.float32)
    if s.ndim < 2 or t.ndim < 2 or s.shape[1:] != t.shape[1:] or s.shape[0] < 1 or t.shape[0] < 1:
        raise ValueError(f"samples and train_images must have shapes (n, *shape), (m, *shape), got {s.shape} and {t.shape}")
    check_chunk(chunk_size)
    s = s.reshape(s.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    return np.asarray(_nearest(s, t, min(int(chunk_size), s.shape[0])))[: s.shape[0]]


def nearest_train_distance(samples, train_images, chunk_size: int = 512) -> float:
    """mean_i min_j |s_i − t_j|: the mean of `nearest_train_distances`."""
    d = nearest_train_distances(samples, train_images, chunk_size)
    return float(np.sum(d, dtype=np.float32) / np.float32(d.shape[0]))


@partial(jax.jit, static_argnums=2)
def _nearest(s: Array, t: Array, chunk: int) -> Array:
    chunks, mask = pad_rows(s, chunk)

    def body(args):
        s_c, m_c = args
        j = jnp.argmin(sq_dists(s_c, t), axis=1)
        return jnp.where(m_c, jnp.linalg.norm(s_c - t[j], axis=1), 0.0)

    return jax.lax.map(body, (chunks, mask)).reshape(-1)


PRECISION_RECALL_NEIGHBOURS = 3  # k of Kynkäänniemi et al. (2019)


def _kth_neighbour_radii(a: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of every row of a (n, f) to its k-th nearest other row: (n,)."""
    out = np.empty(a.shape[0])
    for i in range(0, a.shape[0], chunk):
        d = _np_sq_dists(a[i:i + chunk], a)
        d[np.arange(d.shape[0]), np.arange(i, i + d.shape[0])] = np.inf  # not its own neighbour
        out[i:i + chunk] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


def _np_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(n,) bool: point i lies in some ball |x − centre_j| <= radius_j."""
    out = np.empty(points.shape[0], bool)
    r2 = radii[None, :] ** 2
    for i in range(0, points.shape[0], chunk):
        out[i:i + chunk] = np.any(_np_sq_dists(points[i:i + chunk], centres) <= r2 * (1 + 1e-9), axis=1)
    return out


def precision_recall_counts(real_features, fake_features, k: int = PRECISION_RECALL_NEIGHBOURS
                            ) -> tuple[int, int]:
    """(#fake inside the real manifold, #real inside the fake manifold), k-NN manifolds (Kynkäänniemi et al.
    2019): the manifold of a set is the union of balls around its points, each of radius the distance to its
    k-th nearest neighbour in the set. real: (n, f), fake: (m, f), n, m > k."""
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must have shapes (n, f), (m, f), got {real.shape} and {fake.shape}")
    if int(k) < 1 or min(real.shape[0], fake.shape[0]) <= int(k):
        raise ValueError(f"need k >= 1 and more than k points in each set, got k={k}, {real.shape[0]} and "
                         f"{fake.shape[0]} points")
    precise = _inside(fake, real, _kth_neighbour_radii(real, int(k)))
    recalled = _inside(real, fake, _kth_neighbour_radii(fake, int(k)))
    return int(precise.sum()), int(recalled.sum())


def precision_recall(real_features, fake_features, k: int = PRECISION_RECALL_NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) = (fraction of fake points inside the real k-NN manifold, fraction of real points
    inside the fake one): `precision_recall_counts` over the set sizes. 1 and 1 for a set against itself."""
    precise, recalled = precision_recall_counts(real_features, fake_features, k)
    return precise / np.shape(fake_features)[0], recalled / np.shape(real_features)[0]


def class_fractions(predicted_classes) -> np.ndarray:
    """(NUM_CLASSES,) predicted-class histogram  p_c = #{i: ŷ_i = c}/n."""
    c = np.asarray(predicted_classes)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ValueError(f"predicted_classes must have shape (n,), got {c.shape}")
    return np.bincount(c.astype(np.int64), minlength=NUM_CLASSES) / c.shape[0]


def class_entropy(predicted_classes) -> float:
    """Entropy (nats) of the predicted-class histogram:  −Σ_c p_c log p_c,  p_c = #{i: ŷ_i = c}/n.

    log 10 ≈ 2.303 when all ten classes are equally frequent, 0 when one class takes all.
    """
    p = class_fractions(predicted_classes)
    p = p[p > 0]
    return float(np.sum(p * np.log(1.0 / p)))


def image_quality(samples, classifier_params, classifier_accuracy, reference_images, train_images, *,
                  seed: int = 0, num_resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Quality of generated digits (n, 28, 28, 1) in [0, 1] through a trained ``DigitClassifier``.

    Returns a dict; each figure ``key`` that has one comes with ``key_interval`` = [lo, hi], its 95 %
    sampling interval (`w12_jax.intervals`):
      frechet_distance        Fréchet distance of classifier features, samples vs reference_images
                              (normal bootstrap interval, samples and reference resampled)
      precision, recall       k-NN precision and recall in the same features, k = PRECISION_RECALL_NEIGHBOURS
                              (Wilson intervals, given the two manifolds)
      class_entropy           entropy (nats) of the predicted-class histogram (log 10 = full coverage; bootstrap)
      class_fractions         the predicted-class histogram p_0 … p_9, as a list (sums to 1)
      min_class_fraction      min_c p_c: the rarest digit's share
      confidence              mean_i max_c softmax(logits_i)_c
      nearest_train_distance  mean_i min_j |s_i − train_j| (memorisation; normal interval of a mean)
      classifier_accuracy     held-out accuracy of the classifier used, passed through
    """
    s = as_images("samples", samples)
    ref = as_images("reference_images", reference_images)
    tr = as_images("train_images", train_images)
    if s.shape[0] <= PRECISION_RECALL_NEIGHBOURS or ref.shape[0] <= PRECISION_RECALL_NEIGHBOURS:
        raise ValueError(f"need more than {PRECISION_RECALL_NEIGHBOURS} samples and reference images, got "
                         f"{s.shape[0]} and {ref.shape[0]}")
    logits = classifier_apply(classifier_params, s)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=1))
    predicted = np.argmax(logits, axis=1)
    feat_s = classifier_apply(classifier_params, s, features=True)
    feat_ref = classifier_apply(classifier_params, ref, features=True)
    fd, fd_interval = intervals.bootstrap_interval(frechet_distance, (feat_s, feat_ref), seed=seed,
                                                   num_resamples=num_resamples)
    entropy, entropy_interval = intervals.bootstrap_interval(class_entropy, (predicted,), seed=seed,
                                                             num_resamples=num_resamples)
    precise, recalled = precision_recall_counts(feat_ref, feat_s)
    nearest, nearest_interval = intervals.mean_interval(nearest_train_distances(s, tr))
    fractions = class_fractions(predicted)
    return {
        "frechet_distance": fd, "frechet_distance_interval": list(fd_interval),
        "precision": precise / s.shape[0], "precision_interval": list(intervals.wilson_interval(precise, s.shape[0])),
        "recall": recalled / ref.shape[0], "recall_interval": list(intervals.wilson_interval(recalled, ref.shape[0])),
        "class_entropy": entropy, "class_entropy_interval": list(entropy_interval),
        "class_fractions": [round(float(p), 6) for p in fractions],
        "min_class_fraction": float(fractions.min()),
        "confidence": float(np.mean(np.max(probs, axis=1))),
        "nearest_train_distance": nearest, "nearest_train_distance_interval": list(nearest_interval),
        "classifier_accuracy": float(classifier_accuracy),
    }
