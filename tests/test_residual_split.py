"""residual_split: the mixed-feature residual split into the classifier's row space and its
orthogonal complement, on features built with a known offset in each."""
import numpy as np
import pytest

import mixup_geometry
import residual_split


def _snapshot(row_offset, orth_offset, n=40, seed=0):
    """Three classes, d = 6, W = the first three unit vectors (and a fourth class row): same-class
    features at 2 e_c, different-class ones on the chord plus the given offsets (row space: along
    e_0 + e_1 + e_2; orthogonal: along e_5)."""
    rng = np.random.default_rng(seed)
    W = np.eye(6)[:4]
    ya, yb = rng.integers(0, 3, n), rng.integers(0, 3, n)
    mix = rng.uniform(0.05, 0.95, n)
    H = 2 * (mix[:, None] * np.eye(6)[ya] + (1 - mix[:, None]) * np.eye(6)[yb])
    diff = ya != yb
    H[diff] += row_offset * np.array([1, 1, 1, 0, 0, 0]) / np.sqrt(3) + orth_offset * np.eye(6)[5]
    return dict(features=H, logits=H @ W.T, W=W, b=np.zeros(4), mix=mix, y_a=ya, y_b=yb, classes=np.arange(3)), diff


@pytest.mark.parametrize("row, orth", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.4), (0.2, 0.5)])
def test_split_recovers_known_offsets_and_adds_up(row, orth):
    snap, diff = _snapshot(row, orth)
    norms = np.linalg.norm(snap["features"][diff], axis=1)
    got_row, got_orth = residual_split.residual_split(snap)
    assert got_row == pytest.approx(np.mean(row / norms), abs=1e-12)
    assert got_orth == pytest.approx(np.mean(orth / norms), abs=1e-12)
    # every pair has the same offset, so the parts' norms add in squares to the summary's residual
    total = mixup_geometry.mixup_geometry_summary(snap)["diff_convex_residual_mean"]
    assert total == pytest.approx(np.mean(np.hypot(row, orth) / norms), abs=1e-12)


def test_split_is_nan_without_different_class_pairs():
    snap, _ = _snapshot(0.1, 0.1)
    snap["y_b"] = snap["y_a"]
    assert all(np.isnan(residual_split.residual_split(snap)))
