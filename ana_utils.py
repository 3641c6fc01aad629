"""Analysis: feature extraction, NC metrics, the UFM convex program and its solvers,
theory formulas, and the mixup geometry."""
import numpy as np
import torch

# ======================================================================================
# Feature extraction and NC metrics  (foundation)
# ======================================================================================


@torch.no_grad()
def extract_features(model, x, batch_size=1024, train_mode=False):
    """(features, logits) of all inputs x, batched, without gradients, as float32 CPU tensors.

    Eval mode by default; train_mode=True collects with batch-norm batch statistics, as the mixup
    study did (the model's mode is restored afterwards)."""
    was_training = model.training
    model.train(train_mode)
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        out, h = model(x[i:i + batch_size])
        feats.append(h.float().cpu())
        logits.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(logits)


def _np64(a):
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def class_means(H, y, K):
    """Class means (K x d) and the sample-weighted global mean h_G, in float64."""
    H, y = _np64(H), np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
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


def nc_metrics(H, y, W, b=None):
    """Every NC metric of theory.md section 3, in float64 (numpy or torch inputs).

    H: N x d features, y: labels, W: K x d classifier, b: K bias (None for bias-free)."""
    H, W = _np64(H), _np64(W)
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
    K = W.shape[0]
    b = np.zeros(K) if b is None else _np64(b)
    means, h_G = class_means(H, y, K)
    counts = np.bincount(y, minlength=K).astype(np.float64)
    R = H - means[y]
    mu = means.mean(0)
    out = {
        "nc1_weighted": _trace_within_over_between(R, means - h_G, counts / counts.sum(), K),
        "nc1": _trace_within_over_between(R, means - mu, np.full(K, 1.0 / K), K),
    }
    M = means - mu                                         # centred means as rows
    norms_m, norms_w = np.linalg.norm(M, axis=1), np.linalg.norm(W, axis=1)
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
    sq_dist = (H**2).sum(1)[:, None] - 2 * H @ means.T + (means**2).sum(1)[None, :]
    out["nc4"] = float(np.mean(pred == np.argmin(sq_dist, axis=1)))
    return out


def mean_logit_matrix(H, y, W, K=None):
    """Z (K x K, classes as columns): column k is W times the mean feature of class k (no bias)."""
    W = _np64(W)
    means, _ = class_means(H, y, K or W.shape[0])
    return W @ means.T


def column_cosines(Z):
    """K x K cosines between the columns of Z (nan where a column is zero)."""
    Z = _np64(Z)
    norms = np.linalg.norm(Z, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (Z.T @ Z) / np.outer(norms, norms)


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
    """Largest distance between two columns of Z among the given (minority) classes."""
    cols = _np64(Z)[:, list(minority)]
    diff = cols[:, :, None] - cols[:, None, :]
    return float(np.sqrt((diff**2).sum(0)).max())


# ======================================================================================
# UFM convex program: cvxpy and fast solvers, thresholds, geometry from Z  (theory engine)
# ======================================================================================


# ======================================================================================
# Mixup geometry: projection, free-feature optimum, summaries  (mixup)
# ======================================================================================
