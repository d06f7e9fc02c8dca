"""Tests for w12_jax.metrics, path_metrics, classifier and image_metrics: closed forms, exact identities and
measured thresholds."""


import jax
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import norm

from w12_jax import intervals
from w12_jax import classifier as C
from w12_jax import image_metrics as IM
from w12_jax import metrics as M
from w12_jax import path_metrics as PM
from w12_jax.data import load_dataset


def _gauss(seed, n, d, mean=0.0):
    return (np.random.default_rng(seed).normal(size=(n, d)) + mean).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Energy distance and MMD
# ----------------------------------------------------------------------------------------------
def _energy_distance_1d(mu):
    """ED between N(0,1) and N(mu,1): 2 E|N(mu,2)| − 2 E|N(0,2)|, with E|N(m,s²)| = s√(2/π)e^{−m²/2s²} + m(1−2Φ(−m/s))."""
    s = np.sqrt(2.0)
    e_xy = s * np.sqrt(2 / np.pi) * np.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * norm.cdf(-mu / s))
    return 2 * e_xy - 2 * s * np.sqrt(2 / np.pi)


def test_energy_distance_zero_for_same_law_and_matches_1d_closed_form():
    # same law, n = 3000: measured std of the U-statistic over 10 seeds was 6e-4
    ed0 = float(M.energy_distance(_gauss(0, 3000, 2), _gauss(1, 3000, 2), chunk_size=700))
    assert abs(ed0) < 5e-3
    values = [ed0]
    for mu in (0.5, 1.0, 2.0):
        ed = float(M.energy_distance(_gauss(2, 3000, 1), _gauss(3, 3000, 1, mu), chunk_size=700))
        assert ed == pytest.approx(_energy_distance_1d(mu), abs=0.08)
        values.append(ed)
    assert np.all(np.diff(values) > 0)


def test_energy_distance_chunking_matches_direct_u_statistic():
    x, y = _gauss(4, 101, 3), _gauss(5, 77, 3, 0.3)
    dxy = np.linalg.norm(x[:, None] - y[None], axis=-1).mean()
    dxx = np.linalg.norm(x[:, None] - x[None], axis=-1).sum() / (101 * 100)
    dyy = np.linalg.norm(y[:, None] - y[None], axis=-1).sum() / (77 * 76)
    for chunk in (7, 64, 1024):
        assert float(M.energy_distance(x, y, chunk_size=chunk)) == pytest.approx(2 * dxy - dxx - dyy, abs=2e-4)


def _mmd_gauss(delta_sq, d, bandwidths):
    """MMD² of the sum-of-RBF kernel between N(μ1, I) and N(μ2, I), |μ1−μ2|² = delta_sq (closed form)."""
    total = 0.0
    for s in bandwidths:
        c = (s * s / (s * s + 2.0)) ** (d / 2)
        total += 2 * c * (1 - np.exp(-delta_sq / (2 * (s * s + 2.0))))
    return total


def test_mmd_rbf_zero_for_same_law_and_matches_gaussian_closed_form():
    bw = (0.5, 1.0, 2.0)
    m0 = float(M.mmd_rbf(_gauss(0, 3000, 2), _gauss(1, 3000, 2), bandwidths=bw, chunk_size=700))
    assert abs(m0) < 5e-3  # measured std over 10 seeds: 6e-4
    values = [m0]
    for shift in (0.5, 1.0, 2.0):
        mean = np.array([shift, 0.0], np.float32)
        mmd = float(M.mmd_rbf(_gauss(2, 3000, 2), _gauss(3, 3000, 2, mean), bandwidths=bw, chunk_size=700))
        expected = _mmd_gauss(shift**2, 2, bw)
        assert mmd == pytest.approx(expected, rel=0.1, abs=5e-3)
        values.append(mmd)
    assert np.all(np.diff(values) > 0)


# ----------------------------------------------------------------------------------------------
# Sliced W2
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m_samples", [2000, 1500])
def test_sliced_w2_gaussian_shift_is_mean_sq_over_d(m_samples):
    # θ uniform on S^{d−1}: projections N(0,1) vs N(θ·m,1), W2² = (θ·m)², E(θ·m)² = |m|²/d = 6/4
    mean = np.array([1.0, -1.0, 2.0, 0.0], np.float32)
    x, y = _gauss(0, 2000, 4), _gauss(1, m_samples, 4, mean)
    sw = float(M.sliced_wasserstein2(x, y, jax.random.PRNGKey(0), num_projections=2000))
    assert sw == pytest.approx(1.5, rel=0.1)
    same = float(M.sliced_wasserstein2(x, _gauss(2, m_samples, 4), jax.random.PRNGKey(0), num_projections=2000))
    assert 0 <= same < 0.02


def test_sliced_w2_of_a_translate_is_exact_in_1d():
    x = _gauss(0, 500, 1)
    assert float(M.sliced_wasserstein2(x, x + 3.0, jax.random.PRNGKey(1), num_projections=8)) == pytest.approx(9.0, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Off-manifold mass
# ----------------------------------------------------------------------------------------------
def test_off_manifold_mass_zero_padding_and_shifted_padding():
    data2d = _gauss(0, 100, 2)
    padded = np.concatenate([data2d, np.zeros((100, 5), np.float32)], axis=1)
    assert float(M.off_manifold_mass(padded, manifold_dim=2)) == 0.0
    shifted = padded.copy()
    shifted[:, 3:] = 0.5  # four coordinates at 0.5: norm √(4·0.25) = 1, padding coordinate 2 stays 0
    assert float(M.off_manifold_mass(shifted, manifold_dim=2)) == pytest.approx(1.0, rel=1e-6)
    assert float(M.off_manifold_mass(shifted, manifold_dim=3)) == pytest.approx(1.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Flow diagnostics
# ----------------------------------------------------------------------------------------------
def _straight_path(x0, x1, fractions):
    s = np.asarray(fractions, np.float32).reshape(-1, *([1] * x0.ndim))
    return x0[None] + s * (x1 - x0)[None]


def test_straight_constant_speed_path_is_optimal():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(64, 3, 2)).astype(np.float32), rng.normal(size=(64, 3, 2)).astype(np.float32)
    path, T = _straight_path(x0, x1, np.linspace(0, 1, 9)), 2.0
    assert float(PM.straightness_deviation(path, T)) == pytest.approx(0.0, abs=1e-9)
    assert float(PM.straightness_ratio(path)) == pytest.approx(1.0, abs=1e-6)
    bound = float(PM.straight_line_bound(x0, x1, T))
    assert bound == pytest.approx(0.5 * np.mean(np.sum((x1 - x0) ** 2, axis=(1, 2))) / T, rel=1e-6)
    assert float(PM.path_kinetic_energy(path, T)) == pytest.approx(bound, rel=1e-5)


def test_bent_path_closed_form():
    # x: 0 → a → a+b with a ⟂ b unit, K=2, T=1: v = 2a, 2b; mean velocity a+b
    path = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]], np.float32)
    assert float(PM.straightness_deviation(path, 1.0)) == pytest.approx(2.0, rel=1e-6)  # |a−b|²/T
    assert float(PM.straightness_ratio(path)) == pytest.approx(np.sqrt(2) / 2, rel=1e-6)
    assert float(PM.path_kinetic_energy(path, 1.0)) == pytest.approx(2.0, rel=1e-6)
    assert float(PM.straight_line_bound(path[0], path[-1], 1.0)) == pytest.approx(1.0, rel=1e-6)


def test_straight_path_at_varying_speed_has_ratio_one_but_positive_deviation():
    # fractions 0, ½, ¾, 1 with h = 1/3: (Δs/h − 1)² = ¼, 1/16, 1/16 → Σ h·(...) = 1/8 times |x1−x0|²
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(32, 4)).astype(np.float32), rng.normal(size=(32, 4)).astype(np.float32)
    path = _straight_path(x0, x1, [0.0, 0.5, 0.75, 1.0])
    expected = 0.125 * np.mean(np.sum((x1 - x0) ** 2, axis=1))
    assert float(PM.straightness_deviation(path, 1.0)) == pytest.approx(expected, rel=1e-5)
    assert float(PM.straightness_ratio(path)) == pytest.approx(1.0, abs=1e-6)


def test_deviation_is_twice_kinetic_energy_excess_on_random_image_paths():
    # Σ_k h|v_k − v̄|² = Σ_k h|v_k|² − T|v̄|² per particle, so deviation = 2(KE − bound)
    path = np.random.default_rng(2).normal(size=(5, 7, 4, 4, 1)).astype(np.float32)
    T = 1.5
    dev = float(PM.straightness_deviation(path, T))
    excess = float(PM.path_kinetic_energy(path, T)) - float(PM.straight_line_bound(path[0], path[-1], T))
    assert dev > 1.0
    assert dev == pytest.approx(2 * excess, rel=1e-5)
    ratio = float(PM.straightness_ratio(path))
    flat = path.reshape(5, 7, -1)
    chord = np.linalg.norm(flat[-1] - flat[0], axis=-1).mean()
    length = np.linalg.norm(np.diff(flat, axis=0), axis=-1).sum(axis=0).mean()
    assert ratio == pytest.approx(chord / length, rel=1e-5) and 0 < ratio < 1


def test_discretization_deviation_zero_identical_and_one_for_independent():
    x = _gauss(0, 2000, 50)
    assert float(PM.discretization_deviation(x, x)) == 0.0
    assert float(PM.discretization_deviation(_gauss(1, 2000, 50), x)) == pytest.approx(1.0, abs=0.03)
    # a common shift s: numerator |s| exactly
    s = np.full((1, 50), 0.1, np.float32)
    den = np.linalg.norm(x - np.roll(x, 1, axis=0), axis=1).mean()
    assert float(PM.discretization_deviation(x + s, x)) == pytest.approx(np.linalg.norm(s) / den, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------
def test_gaussian_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.gaussian_frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # non-commuting full covariances against scipy.linalg.sqrtm
    p, q = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = p @ p.T + 0.1 * np.eye(6), q @ q.T + 0.1 * np.eye(6)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert M.gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    # rank-deficient identical covariance: still real and 0
    low = rng.normal(size=(6, 2))
    assert M.gaussian_frechet_distance(mu1, low @ low.T, mu1, low @ low.T) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_of_features_uses_sample_moments():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 5))
    z = z - z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample mean 0, cov I exactly
    scale, shift = np.array([0.5, 1.0, 2.0, 3.0, 0.1]), np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    expected = np.sum(shift**2) + np.sum((1 - scale) ** 2)
    assert M.frechet_distance(z, z * scale + shift) == pytest.approx(expected, rel=1e-8)
    assert M.frechet_distance(z, z) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Nearest training image, class entropy
# ----------------------------------------------------------------------------------------------
def test_nearest_train_distance_exact_on_well_separated_points():
    rng = np.random.default_rng(0)
    train = (20.0 * rng.normal(size=(10, 16))).astype(np.float32)  # pairwise distances ≫ 1
    noise = rng.normal(size=(10, 16))
    noise = (0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32)
    assert IM.nearest_train_distance(train[::-1], train, chunk_size=3) == 0.0
    assert IM.nearest_train_distance(train + noise, train, chunk_size=3) == pytest.approx(0.5, rel=1e-4)


def test_class_entropy_closed_forms():
    assert IM.class_entropy(np.arange(1000) % 10) == pytest.approx(np.log(10), rel=1e-12)
    assert IM.class_entropy(np.full(50, 3)) == 0.0
    assert IM.class_entropy(np.array([0, 0, 1, 1])) == pytest.approx(np.log(2), rel=1e-12)
    np.testing.assert_array_equal(IM.class_fractions(np.array([0, 0, 1, 9])), [0.5, 0.25] + [0.0] * 7 + [0.25])


# ----------------------------------------------------------------------------------------------
# Digit classifier and image quality
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k", seed=0, heldout_fraction=0.1)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    cache = tmp_path_factory.mktemp("w12_cache")
    params, acc = C.load_or_train_classifier(cache_dir=cache, seed=0)
    return {"params": params, "accuracy": acc, "cache": cache}


def test_classifier_heldout_accuracy(classifier, mnist):
    assert classifier["accuracy"] >= 0.95
    pred = np.argmax(C.classifier_apply(classifier["params"], mnist.heldout), axis=1)
    assert np.mean(pred == mnist.heldout_labels) == pytest.approx(classifier["accuracy"], abs=1e-12)


def test_classifier_cache_reload_is_read_from_file(classifier, mnist):
    path = C.classifier_cache_path(classifier["cache"], seed=0)
    assert path.is_file()
    params, acc = C.load_or_train_classifier(cache_dir=classifier["cache"], seed=0)
    assert acc == classifier["accuracy"]
    x = mnist.heldout[:200]
    np.testing.assert_array_equal(C.classifier_apply(params, x), C.classifier_apply(classifier["params"], x))
    # the accuracy comes from the file: rewrite it and read it back
    with np.load(path) as f:
        stored = dict(f)
    stored["__heldout_accuracy__"] = np.asarray(0.125)
    with open(path, "wb") as f:
        np.savez(f, **stored)
    assert C.load_or_train_classifier(cache_dir=classifier["cache"], seed=0)[1] == 0.125


def test_classifier_cache_of_another_architecture_is_retrained(classifier, tmp_path, mnist):
    path = C.classifier_cache_path(tmp_path, seed=0)
    np.savez(path, **{"Conv_0/kernel": np.zeros((5, 5, 1, 4)), "__heldout_accuracy__": np.asarray(0.5)})
    params, acc = C.load_or_train_classifier(cache_dir=tmp_path, seed=0)
    assert acc == classifier["accuracy"]  # deterministic retraining with the same seed
    x = mnist.heldout[:100]
    np.testing.assert_allclose(C.classifier_apply(params, x), C.classifier_apply(classifier["params"], x), atol=1e-4)
    with np.load(path) as f:
        assert f["Conv_0/kernel"].shape == (3, 3, 1, 16)


def test_classifier_cache_path_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("W12_CACHE_DIR", str(tmp_path / "w12"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.classifier_cache_path(seed=3) == tmp_path / "w12" / "digit_classifier_seed3.npz"
    assert C.classifier_cache_path(tmp_path / "explicit").parent == tmp_path / "explicit"
    monkeypatch.delenv("W12_CACHE_DIR")
    assert C.classifier_cache_path().parent == tmp_path / "xdg" / "w12_jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert C.classifier_cache_path().parent == tmp_path / "home" / ".cache" / "w12_jax"


def test_image_quality_on_real_digits_single_digit_and_training_copies(classifier, mnist):
    params, acc = classifier["params"], classifier["accuracy"]
    real = IM.image_quality(mnist.heldout, params, acc, mnist.train, mnist.train)
    figures = ("frechet_distance", "precision", "recall", "class_entropy", "nearest_train_distance")
    assert set(real) == {*figures, *(f + "_interval" for f in figures), "class_fractions", "min_class_fraction",
                         "confidence", "classifier_accuracy"}
    for f in figures:  # every figure inside its own interval
        assert real[f + "_interval"][0] <= real[f] <= real[f + "_interval"][1], f
    assert real["class_entropy"] > 2.2
    assert real["precision"] > 0.6 and real["recall"] > 0.6  # held-out digits lie on the training digits' manifold
    p = np.asarray(real["class_fractions"])
    assert p.shape == (10,) and abs(p.sum() - 1.0) < 1e-5 and p.min() > 0.05  # mnist5k is balanced
    assert real["class_entropy"] == pytest.approx(-np.sum(p * np.log(p)), abs=1e-5)
    assert real["confidence"] > 0.9
    assert real["nearest_train_distance"] > 1.0
    assert real["classifier_accuracy"] == acc

    noise = np.random.default_rng(0).uniform(0, 0.5, size=(500, 28, 28, 1)).astype(np.float32)
    fake = IM.image_quality(noise, params, acc, mnist.train, mnist.train)
    assert real["frechet_distance"] < 0.1 * fake["frechet_distance"]

    copies = np.repeat(mnist.heldout[:1], 200, axis=0)
    single = IM.image_quality(copies, params, acc, mnist.train, mnist.train)
    assert single["class_entropy"] < 0.1
    assert max(single["class_fractions"]) > 0.98
    assert single["frechet_distance"] > real["frechet_distance"]
    assert single["recall"] < 0.05 and single["min_class_fraction"] == 0.0  # one digit covers nothing else

    memorised = IM.image_quality(mnist.train[:300], params, acc, mnist.train, mnist.train)
    assert memorised["nearest_train_distance"] == 0.0


# ----------------------------------------------------------------------------------------------
# Precision and recall (k-NN manifolds), sampling intervals
# ----------------------------------------------------------------------------------------------
def test_precision_recall_of_a_set_against_itself_a_half_and_a_shift():
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert IM.precision_recall(x, x) == (1.0, 1.0)
    half = x[:200]
    assert IM.precision_recall(x, half)[0] == 1.0  # every point of the half is a real point
    assert IM.precision_recall(half, x)[1] == 1.0  # every real point is a generated point
    assert IM.precision_recall(x, x + 100.0) == (0.0, 0.0)  # far beyond every k-NN radius


def test_precision_recall_on_a_shifted_grid_closed_form():
    """Real points 0..N−1 on a line, k = 1: every ball has radius 1. Generated points i + 2.5: those up to N − 0.5
    lie within 0.5 of a real point, N + 0.5 and N + 1.5 lie 1.5 and 2.5 from N − 1; and real points j >= 2 lie
    within 1 of a generated one: precision = recall = (N − 2)/N."""
    n = 20
    real = np.stack([np.arange(n, dtype=float), np.zeros(n)], 1)
    fake = real + np.array([2.5, 0.0])
    assert IM.precision_recall(real, fake, k=1) == ((n - 2) / n, (n - 2) / n)
    assert IM.precision_recall(real, real + np.array([0.4, 0.0]), k=1) == (1.0, 1.0)
    with pytest.raises(ValueError):
        IM.precision_recall(real[:3], fake, k=3)


def test_wilson_interval_closed_form_and_bounds():
    lo, hi = intervals.wilson_interval(50, 100)  # p = ½: symmetric, z = 1.95996
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert intervals.wilson_interval(0, 30)[0] == 0.0 and intervals.wilson_interval(30, 30)[1] == 1.0
    assert 0 < intervals.wilson_interval(0, 30)[1] < 0.12


def test_bootstrap_interval_of_a_mean_matches_the_standard_error():
    """For the mean of n draws the bootstrap sd is the standard error sd/√n (to a few %)."""
    v = np.random.default_rng(1).normal(3.0, 2.0, size=2000)
    estimate, (lo, hi) = intervals.bootstrap_interval(np.mean, (v,), num_resamples=400)
    mean, (m_lo, m_hi) = intervals.mean_interval(v)
    assert estimate == mean and (hi - lo) == pytest.approx(m_hi - m_lo, rel=0.1)
    assert (m_hi - m_lo) / 2 == pytest.approx(1.959964 * v.std(ddof=1) / np.sqrt(2000), rel=1e-6)


def test_seed_summary_is_the_student_t_interval():
    s = intervals.seed_summary([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975, 2} = 4.3027
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["n"] == 3
    assert s["interval"] == pytest.approx([2 - 4.3027 / np.sqrt(3), 2 + 4.3027 / np.sqrt(3)], abs=1e-4)
    assert intervals.seed_summary([5.0])["interval"] is None
    assert intervals.separated([0, 1], [1.5, 2]) and not intervals.separated([0, 1], [0.5, 2])


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: M.energy_distance(np.zeros((5, 2)), np.zeros((5, 3))),
        lambda: M.energy_distance(np.zeros((1, 2)), np.zeros((5, 2))),
        lambda: M.mmd_rbf(np.zeros((5, 2)), np.zeros((5, 2)), bandwidths=(1.0, -1.0)),
        lambda: M.sliced_wasserstein2(np.zeros(5), np.zeros(5), jax.random.PRNGKey(0)),
        lambda: M.off_manifold_mass(np.zeros((5, 2)), manifold_dim=3),
        lambda: PM.straightness_deviation(np.zeros((1, 4, 2)), 1.0),
        lambda: PM.path_kinetic_energy(np.zeros((3, 4, 2)), 0.0),
        lambda: PM.discretization_deviation(np.zeros((4, 2)), np.zeros((5, 2))),
        lambda: M.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4))),
        lambda: IM.image_quality(np.zeros((4, 10, 10, 1)), {}, 1.0, np.zeros((4, 28, 28, 1)), np.zeros((4, 28, 28, 1))),
        lambda: C.train_digit_classifier(np.zeros((8, 28, 28, 1)), np.full(8, 12), np.zeros((2, 28, 28, 1)), np.zeros(2)),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_eps_scaling_sinkhorn_is_zero_on_itself_and_half_w2_squared_on_a_monotone_pair():
    """The authors' estimator: 0 for a set against itself; for the quantile grid of N(0, 1) and m + s·x on a
    line the optimal plan is monotone, so S → ½W2² = ½ mean((m + (s − 1)x)²) as blur → 0."""
    q = norm.ppf((np.arange(300) + 0.5) / 300)
    x = np.stack([q, np.zeros_like(q)], 1)
    assert abs(float(M.eps_scaling_sinkhorn_divergence(x, x))) < 1e-7
    for m, s in ((1.0, 0.5), (0.5, 2.0)):
        y = np.stack([m + s * q, np.zeros_like(q)], 1)
        half_w2 = 0.5 * np.mean((m + (s - 1) * q) ** 2)
        assert float(M.eps_scaling_sinkhorn_divergence(x, y)) == pytest.approx(half_w2, rel=1e-4)
    with pytest.raises(ValueError):
        M.eps_scaling_sinkhorn_divergence(x, x, scaling=1.0)


def test_sinkhorn_sd_matches_the_spread_of_independent_draws():
    """The first-order sd of the Sinkhorn divergence (debiased potentials) is the spread of the estimate over
    independent draws of x ~ N(0, I) and y ~ N((1, 0), I)."""
    rng = np.random.default_rng(0)
    values, sds = [], []
    for _ in range(24):
        x, y = rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + np.array([1.0, 0.0])
        value, sd = M.sinkhorn_divergence_and_sd(x, y, epsilon=0.1)
        values.append(float(value))
        sds.append(float(sd))
    assert np.std(values, ddof=1) == pytest.approx(np.mean(sds), rel=0.25), (np.std(values, ddof=1), np.mean(sds))


def test_sinkhorn_divergence_is_zero_on_itself_and_tends_to_half_w2_squared():
    """Cost ½|x − y|²: for the quantile grid of N(0, 1) and its image m + s·x (both on a line in R^2) the
    empirical optimal plan is monotone, so ½W2² = ½ mean((m + (s − 1)x)²) exactly; S_eps approaches it."""
    sinkhorn_divergence = M.sinkhorn_divergence
    q = norm.ppf((np.arange(300) + 0.5) / 300)
    x = np.stack([q, np.zeros_like(q)], 1)
    assert abs(float(sinkhorn_divergence(x, x))) < 1e-5
    for m, s in ((1.0, 0.5), (0.5, 2.0)):
        y = np.stack([m + s * q, np.zeros_like(q)], 1)
        half_w2 = 0.5 * np.mean((m + (s - 1) * q) ** 2)
        errors = [abs(float(sinkhorn_divergence(x, y, eps)) - half_w2) / half_w2 for eps in (0.1, 0.01)]
        assert errors[1] < 1e-4 and errors[0] < 5e-3, errors
        assert abs(half_w2 - 0.5 * (m**2 + (1 - s) ** 2)) < 0.01 * half_w2  # the population ½W2²
