"""NC analysis: feature extraction, the NC metrics of features and a classifier, the mean-logit
matrix Z and its column geometry (cosines, minority spread). No plotting."""
import sys

import numpy as np

from utils import UserError


def extract_features(model, x, batch_size=1024, train_mode=False):
    """(features, logits) of all inputs x, batched, without gradients, as float32 CPU tensors.

    Eval mode by default; train_mode=True collects with batch-norm batch statistics, as the mixup
    study did (the model's mode and running statistics are restored afterwards)."""
    import torch  # here, not at the top: opt_main.py never needs torch (1.3 s to import)
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()} if train_mode else {}
    model.train(train_mode)
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out, h = model(x[i:i + batch_size])
            feats.append(h.float().cpu())
            logits.append(out.float().cpu())
    model.train(was_training)
    if buffers:  # train-mode forward passes moved the batch-norm running statistics: put them back
        model.load_state_dict(buffers, strict=False)
    return torch.cat(feats), torch.cat(logits)


def _is_tensor(a):
    """Whether `a` is a torch tensor (none exists before torch is imported)."""
    return "torch" in sys.modules and isinstance(a, sys.modules["torch"].Tensor)


def _np64(a):
    if _is_tensor(a):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def class_means(H, y, K):
    """Class means (K x d) and the sample-weighted global mean h_G, in float64."""
    H, y = _np64(H), _labels(y, K)
    counts = np.bincount(y, minlength=K).astype(np.float64)
    onehot = np.zeros((K, len(y)))
    onehot[y, np.arange(len(y))] = 1.0
    means = (onehot @ H) / np.maximum(counts, 1)[:, None]   # one matrix product, no Python loop
    return means, counts @ means / counts.sum()


def _trace_within_over_between(R, centred, weights, K):
    """tr(Sigma_W Sigma_B^+) / K with Sigma_B = sum_k w_k c_k c_k^T, inverted on its K-1 leading
    directions only; R holds the within-class residuals, so Sigma_W = R^T R / N."""
    A = np.sqrt(weights)[:, None] * centred               # Sigma_B = A^T A
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    r = min(K - 1, int(np.sum(s > s[0] * 1e-10))) if s[0] > 0 else 0
    if r == 0:
        return float("inf")
    proj = R @ Vt[:r].T                                    # N x r
    return float(np.sum(proj**2 / s[:r] ** 2) / len(R) / K)


# Sigma_B has lost rank (sigma_b_rank < K - 1, nc1_rank_deficient = 1) when a singular value of the
# centred class means is below this times the largest, i.e. an eigenvalue of Sigma_B below 1e-6 of the
# largest: there Papyan's nc1, which divides by those eigenvalues, is dominated by them (minority collapse).
SIGMA_B_RANK_RTOL = 1e-3
NC4_TIE_RTOL = 1e-6   # nc4_ties: class means within this times the means' spread of the nearest tie


def _labels(y, K):
    import torch
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.size and not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y)):
        raise UserError(f"labels: must be integers 0..{K - 1}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= K):
        bad = sorted(set(y[(y < 0) | (y >= K)].tolist()))[:5]
        raise UserError(f"labels: {bad} outside 0..{K - 1} (the classifier has K = {K} rows)")
    return y


def nc_metrics(H, y, W, b=None, tie_rtol=NC4_TIE_RTOL):
    """Every NC metric of theory.md section 3, in float64 (numpy or torch inputs).

    H: N x d features, y: labels in 0..K-1 (a UserError otherwise), W: K x d classifier, b: K bias
    (None for bias-free). A class without samples has no mean: every metric that needs the class
    means is then NaN (nc2_equinorm_classifier, from W alone, is still given)."""
    H, W = _np64(H), _np64(W)
    K = W.shape[0]
    y = _labels(y, K)
    b = np.zeros(K) if b is None else _np64(b)
    means, h_G = class_means(H, y, K)
    counts = np.bincount(y, minlength=K).astype(np.float64)
    norms_w = np.linalg.norm(W, axis=1)
    if np.any(counts == 0):
        return metrics_without_a_class(norms_w)
    R = H - means[y]
    mu = means.mean(0)
    w_size = counts / counts.sum()
    out = {
        "nc1_weighted": _trace_within_over_between(R, means - h_G, w_size, K),
        "nc1": _trace_within_over_between(R, means - mu, np.full(K, 1.0 / K), K),
    }
    # trace ratios tr(Sigma_W) / tr(Sigma_B): continuous through minority collapse
    tr_w = float(np.sum(R * R)) / len(R)
    tr_b = float(np.sum((means - mu) ** 2)) / K
    tr_bw = float(w_size @ np.sum((means - h_G) ** 2, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["nc1_trace"] = float(np.divide(tr_w, tr_b)) if tr_b > 0 else (0.0 if tr_w == 0 else float("inf"))
        out["nc1_trace_weighted"] = float(tr_w / tr_bw) if tr_bw > 0 else (0.0 if tr_w == 0 else float("inf"))
    M = means - mu                                         # centred means as rows
    out.update(sigma_b_rank_of(M))
    norms_m = np.linalg.norm(M, axis=1)
    out["nc2_equinorm_means"] = float(norms_m.std() / norms_m.mean())
    out["nc2_equinorm_classifier"] = float(norms_w.std() / norms_w.mean())
    cos = (M @ M.T) / np.outer(norms_m, norms_m)
    off = ~np.eye(K, dtype=bool)
    out["nc2_equiangle"] = float(np.abs(cos[off] + 1.0 / (K - 1)).mean())
    G = M @ M.T
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    out["nc2_etf_distance"] = float(np.linalg.norm(G / np.linalg.norm(G) - etf))
    out["nc3"] = float(np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2)
    pred = np.argmax(H @ W.T + b, axis=1)
    Hc = H - mu                                            # centred: less cancellation in the distances
    sq_dist = (Hc**2).sum(1)[:, None] - 2 * Hc @ M.T + (M**2).sum(1)[None, :]
    out["nc4"] = float(np.mean(pred == np.argmin(sq_dist, axis=1)))
    # nc4_ties: the prediction agrees when its class mean is as near as the nearest one up to
    # tie_rtol times the spread of the class means (coinciding means, e.g. after minority collapse)
    dist = np.sqrt(np.maximum(sq_dist, 0.0))
    slack = tie_rtol * float(norms_m.max())
    out["nc4_ties"] = float(np.mean(dist[np.arange(len(y)), pred] <= dist.min(axis=1) + slack))
    return out


def metrics_without_a_class(norms_w):
    """nc_metrics where a class has no samples: NaN for every metric that needs the class means, the
    classifier's equinorm from the row norms `norms_w` of W."""
    out = dict.fromkeys(("nc1_weighted", "nc1", "nc1_trace", "nc1_trace_weighted", "nc2_equinorm_means",
                         "nc2_equiangle", "nc2_etf_distance", "nc3", "nc4", "nc4_ties", "sigma_b_rank",
                         "nc1_rank_deficient"), float("nan"))
    out["nc2_equinorm_classifier"] = float(norms_w.std() / norms_w.mean())
    return out


def sigma_b_rank_of(M, rtol=SIGMA_B_RANK_RTOL):
    """sigma_b_rank: the numerical rank of Sigma_B from the centred class means M (K rows), counting
    singular values above rtol times the largest; nc1_rank_deficient: 1 when it is below K - 1 (then
    nc1 and nc1_weighted, through the pseudo-inverse, blow up; the trace ratios stay defined), else 0.
    Numbers rather than booleans so that they survive the CSV and average over seeds."""
    s = np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)
    rank = int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0
    return {"sigma_b_rank": rank, "nc1_rank_deficient": int(rank < len(M) - 1)}


def mean_logit_matrix(H, y, W, K=None):
    """Z (K x K, classes as columns): column k is W times the mean feature of class k (no bias)."""
    W = _np64(W)
    means, _ = class_means(H, y, K or W.shape[0])
    return W @ means.T


def cosines_from_gram(G):
    """Pairwise cosines from a Gram matrix (nan where a vector is zero)."""
    d = np.sqrt(np.diag(G))
    with np.errstate(invalid="ignore", divide="ignore"):
        return G / np.outer(d, d)


def column_cosines(Z):
    """K x K cosines between the columns of Z (nan where a column is zero)."""
    Z = _np64(Z)
    return cosines_from_gram(Z.T @ Z)


def cluster_cosines(Z, clusters):
    """Mean cosine between columns of Z within each cluster, and across clusters.

    clusters: list of lists of class indices. Returns {'within': [per cluster, nan for a single
    class], 'across': mean over all pairs in different clusters}."""
    C = column_cosines(Z)
    within = []
    for c in clusters:
        sub = C[np.ix_(c, c)][~np.eye(len(c), dtype=bool)]
        within.append(float(sub.mean()) if sub.size else float("nan"))
    label = np.empty(Z.shape[1], dtype=np.int64)
    for i, c in enumerate(clusters):
        label[c] = i
    across = label[:, None] != label[None, :]
    return {"within": within, "across": float(C[across].mean()) if across.any() else float("nan")}


def minority_spread(Z, minority):
    """Largest distance between two columns of Z among the given (minority) classes, from the Gram of
    the columns less their mean (memory m x m for m classes, not K x m x m). Exact to rounding: each
    squared distance's error is ~eps max|a|^2 (a: a column less the mean), and the largest distance is
    >= max|a| (the mean lies in the columns' hull), so collapsed columns (spread ~1e-15) stay exact."""
    A = _np64(Z)[:, list(minority)]
    A = A - A.mean(axis=1, keepdims=True)
    G = A.T @ A
    sq = np.diag(G)
    return float(np.sqrt(max(float((sq[:, None] + sq[None, :] - 2.0 * G).max()), 0.0)))
