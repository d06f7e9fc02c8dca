"""experiments.segments: the segments of x0 and the statistics that say whether a map blends or jumps."""

import numpy as np

from experiments.segments import segment_points, segment_statistics
from w12_jax.presets import get_preset


def test_segment_points_run_from_a_to_b_inside_the_block_reference():
    cfg = get_preset("mnist5k")  # x0 ~ U[0, 0.5] on 2×2 blocks
    x = segment_points(cfg, pairs=3, points=5, seed=0)
    assert x.shape == (3, 5, 28, 28, 1)
    np.testing.assert_allclose(x[:, 2], 0.5 * (x[:, 0] + x[:, 4]), atol=1e-6)  # s = 1/2 is the midpoint
    assert not np.allclose(x[:, 0], x[:, 4])
    assert x.min() >= cfg.reference_low and x.max() <= cfg.reference_high
    np.testing.assert_array_equal(x[..., ::2, ::2, :], x[..., 1::2, 1::2, :])  # still constant on each block


def test_an_even_change_has_concentration_one_and_a_single_jump_points_minus_one():
    points, pairs = 9, 2
    s = np.linspace(0.0, 1.0, points)
    even = np.stack([s[:, None] * np.ones((points, 4))] * pairs)  # (pairs, points, 4): changes by equal steps
    jump = np.stack([(s >= 0.5)[:, None] * np.ones((points, 4))] * pairs).astype(float)
    classes = np.zeros((pairs, points), int)
    classes[:, points // 2:] = 1
    confidence = np.full((pairs, points), 0.9)
    confidence[:, 0] = 0.4
    stats_even = segment_statistics(even, classes, confidence)
    stats_jump = segment_statistics(jump, classes, confidence)
    assert abs(stats_even["jump_concentration"] - 1.0) < 1e-9
    assert abs(stats_jump["jump_concentration"] - (points - 1)) < 1e-9
    assert stats_jump["class_changes"] == 1.0 and stats_jump["endpoint_class_differs"] == 1.0
    assert abs(stats_jump["blend_share"] - 1 / points) < 1e-9
