"""The post-2022 NC metrics from class statistics (theory.md, "Streaming and modern NC metrics"): CDNV,
hyperspherical uniformity, uniform duality, the classifier's equinorm, equiangularity and distance to a
simplex ETF, self-duality.

Pure numpy on class means, sizes, per-class variances and the classifier (no torch, no project module
but utils), so the statistics may come from memory or from nc_stream's two passes over a loader. The
centre is the sample-weighted global mean h_G (the unweighted mean of class means is wrong under
imbalance); a centred mean of norm zero has no direction, and what needs it is NaN."""
import numpy as np

from utils import UserError

KERNELS = ("log", "riesz")


def _pairs(K):
    return np.triu_indices(K, k=1)


def _unit_rows(A):
    """Rows scaled to norm 1; a zero row gives NaN (no direction)."""
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, A / norms, np.nan)


def global_mean(means, counts):
    """h_G = sum_k n_k h_k / N, the sample-weighted mean."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts @ np.asarray(means, dtype=np.float64) / counts.sum()


def cdnv(means, variances, dist_exp=1.0):
    """Class-distance-normalised variance (Galanti et al. 2022), averaged over pairs k < k':
    (Var_k + Var_k') / (2 ||h_k - h_k'||^(2 dist_exp)), Var_k = mean over class k of ||h - h_k||^2.
    Coinciding means give inf (0/0, no variance and no distance, is NaN)."""
    means, variances = np.asarray(means, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    i, j = _pairs(len(means))
    dist_sq = np.sum((means[i] - means[j]) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean((variances[i] + variances[j]) / (2 * dist_sq ** dist_exp)))


def kernel_values(means, centre, kernel="log", s=None):
    """The kernel over pairs k < k' of the centred, normalised means u_k = (h_k - centre)/||h_k - centre||:
    log: log(1 / ||u_k - u_k'||); riesz: sign(s) ||u_k - u_k'||^(-s), s = d - 2 by default (Liu et al.
    2023), and the log kernel at s = 0 (the Riesz energy's limit). Coinciding directions give inf."""
    if kernel not in KERNELS:
        raise UserError(f"kernel: must be one of {', '.join(KERNELS)}, got {kernel!r}")
    U = _unit_rows(np.asarray(means, dtype=np.float64) - centre)
    i, j = _pairs(len(U))
    dist = np.linalg.norm(U[i] - U[j], axis=1)
    s = U.shape[1] - 2 if s is None else float(s)
    with np.errstate(divide="ignore"):
        if kernel == "log" or s == 0:
            return -np.log(dist)
        return np.sign(s) * dist ** (-s)


def hyperspherical_uniformity(means, centre, kernel="log", s=None):
    """(mean, variance) of kernel_values over the pairs; the variance (over pairs, not n - 1) is NaN when
    a value is infinite."""
    values = kernel_values(means, centre, kernel, s)
    mean = float(values.mean())
    if not np.all(np.isfinite(values)):
        return mean, float("nan")
    return mean, float(np.mean((values - mean) ** 2))


def uniform_duality(W, means, centre):
    """Variance over classes (not n - 1) of cos(w_k, h_k - centre) (Liu et al. 2023): 0 when every
    classifier row makes the same angle with its centred class mean."""
    cos = np.sum(_unit_rows(np.asarray(W, dtype=np.float64)) * _unit_rows(np.asarray(means) - centre), axis=1)
    return float(np.var(cos))


def _etf_gap(A, B):
    """||B A^T / ||B A^T||_F - (I - J/K)/sqrt(K - 1)||_F (Kothapalli 2023's structure error)."""
    K = len(A)
    G = np.asarray(B, dtype=np.float64) @ np.asarray(A, dtype=np.float64).T
    norm = np.linalg.norm(G)
    if norm == 0:
        return float("nan")
    return float(np.linalg.norm(G / norm - (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)))


def classifier_geometry(W):
    """Equinorm (std/mean of ||w_k||), equiangularity (mean over k != k' of |cos(w_k, w_k') + 1/(K-1)|,
    and the std of those cosines, Papyan et al. 2020) and the distance of W W^T to a simplex ETF."""
    W = np.asarray(W, dtype=np.float64)
    K = len(W)
    norms = np.linalg.norm(W, axis=1)
    U = _unit_rows(W)
    i, j = _pairs(K)
    cos = np.sum(U[i] * U[j], axis=1)
    return {"w_equinorm": float(norms.std() / norms.mean()),
            "w_equiangle": float(np.mean(np.abs(cos + 1.0 / (K - 1)))),
            "w_angle_std": float(np.std(cos)),
            "w_etf_distance": _etf_gap(W, W)}


def modern_metrics(W, means, counts, variances):
    """Every metric of theory.md "Streaming and modern NC metrics" from class means (K x d), sizes,
    per-class variances and W."""
    means = np.asarray(means, dtype=np.float64)
    if np.any(np.asarray(counts) == 0):
        nan = float("nan")
        out = {k: nan for k in ("cdnv", "uniformity_log", "uniformity_log_var", "uniformity_riesz",
                                "uniformity_riesz_var", "uniform_duality", "self_duality_distance")}
        out.update(classifier_geometry(W))
        return out
    h_G = global_mean(means, counts)
    out = {"cdnv": cdnv(means, variances)}
    out["uniformity_log"], out["uniformity_log_var"] = hyperspherical_uniformity(means, h_G, "log")
    out["uniformity_riesz"], out["uniformity_riesz_var"] = hyperspherical_uniformity(means, h_G, "riesz")
    out["uniform_duality"] = uniform_duality(W, means, h_G)
    out["self_duality_distance"] = _etf_gap(means - h_G, W)
    out.update(classifier_geometry(W))
    return out
