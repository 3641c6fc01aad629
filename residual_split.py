"""The mixed-feature residual from the chord split in two: its part in the classifier's row space
(the directions the logits, hence the loss, see) and its part orthogonal to it (seen only by weight
decay). A network's features have the second part, the free-feature model's optimum has none; the
mixup study reports both to tell which one separates CE from MSE (docs/mixup_study.md)."""
import numpy as np


def residual_split(snap):
    """(row-space, orthogonal) mean relative residuals of the different-class mixed features of a
    snapshot (as mixup_geometry.collect_mixup_features writes it): for each, with r = h - (mix
    hbar_c + (1 - mix) hbar_c') as mixup_geometry.mixup_geometry_summary defines it (features centred
    by feature_mean, hbar_c the mean same-class mixed feature), ||P r|| / ||h|| and ||(I - P) r|| /
    ||h||, P the orthogonal projector onto the span of the classifier rows W (all K). The squares
    of the two add up to the square of the residual. NaN where no different-class pair is usable."""
    H = np.asarray(snap["features"], dtype=np.float64)
    if snap.get("feature_mean") is not None:
        H = H - np.asarray(snap["feature_mean"], dtype=np.float64)
    W = np.asarray(snap["W"], dtype=np.float64)
    mix, ya, yb = np.asarray(snap["mix"], dtype=np.float64), np.asarray(snap["y_a"]), np.asarray(snap["y_b"])
    same = ya == yb
    means = {int(c): H[same & (ya == c)].mean(0) for c in np.unique(ya[same])}
    ok = (ya != yb) & (mix > 0) & (mix < 1) & np.array([int(a) in means and int(b) in means for a, b in zip(ya, yb)],
                                                        dtype=bool) & (np.linalg.norm(H, axis=1) > 0)
    if not ok.any():
        return float("nan"), float("nan")
    target = (mix[ok, None] * np.stack([means[int(a)] for a in ya[ok]])
              + (1 - mix[ok, None]) * np.stack([means[int(b)] for b in yb[ok]]))
    r = H[ok] - target
    U, s, _ = np.linalg.svd(W.T, full_matrices=False)
    basis = U[:, s > s.max() * max(W.shape) * np.finfo(float).eps]  # orthonormal basis of the row space
    r_row = (r @ basis) @ basis.T
    norm = np.linalg.norm(H[ok], axis=1)
    return (float(np.mean(np.linalg.norm(r_row, axis=1) / norm)),
            float(np.mean(np.linalg.norm(r - r_row, axis=1) / norm)))
