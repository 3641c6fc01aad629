"""Analysis: feature extraction, NC metrics, the UFM convex program and its solvers,
theory formulas, and the mixup geometry."""
import contextlib
import sys
import time

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.special
import scipy.stats
import torch

import utils
from utils import UserError

# ======================================================================================
# Feature extraction and NC metrics  (foundation)
# ======================================================================================


@torch.no_grad()
def extract_features(model, x, batch_size=1024, train_mode=False):
    """(features, logits) of all inputs x, batched, without gradients, as float32 CPU tensors.

    Eval mode by default; train_mode=True collects with batch-norm batch statistics, as the mixup
    study did (the model's mode and running statistics are restored afterwards)."""
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()} if train_mode else {}
    model.train(train_mode)
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        out, h = model(x[i:i + batch_size])
        feats.append(h.float().cpu())
        logits.append(out.float().cpu())
    model.train(was_training)
    if buffers:  # train-mode forward passes moved the batch-norm running statistics: put them back
        model.load_state_dict(buffers, strict=False)
    return torch.cat(feats), torch.cat(logits)


def _np64(a):
    if isinstance(a, torch.Tensor):
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


NC4_TIE_RTOL = 1e-6   # nc4_ties: class means within this times the means' spread of the nearest tie


def _labels(y, K):
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
        nan = float("nan")
        out = {k: nan for k in ("nc1_weighted", "nc1", "nc1_trace", "nc1_trace_weighted", "nc2_equinorm_means",
                                "nc2_equiangle", "nc2_etf_distance", "nc3", "nc4", "nc4_ties")}
        out["nc2_equinorm_classifier"] = float(norms_w.std() / norms_w.mean())
        return out
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


def mean_logit_matrix(H, y, W, K=None):
    """Z (K x K, classes as columns): column k is W times the mean feature of class k (no bias)."""
    W = _np64(W)
    means, _ = class_means(H, y, K or W.shape[0])
    return W @ means.T


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
    """Largest distance between two columns of Z among the given (minority) classes."""
    cols = _np64(Z)[:, list(minority)]
    diff = cols[:, :, None] - cols[:, None, :]
    return float(np.sqrt((diff**2).sum(0)).max())


# ======================================================================================
# UFM convex program: cvxpy and fast solvers, thresholds, geometry from Z  (theory engine)
# ======================================================================================

# Z is K x K with classes as columns. Internally the solvers use the scaled variable
# X = Z diag(sqrt(rho)), rho = n / N, in which the same objective reads
#     sum_k rho_k CE(x_k / sqrt(rho_k) + b, k) + (lam sqrt(N)) ||X||_* + lam_b ||b||^2,
# so everything is O(1) and (lam, N) enter only through lam * sqrt(N).

# solve_ufm(solver='auto'): cvxpy up to this K, the fast solver above. Clarabel's cost grows
# steeply (K = 20: ~2 s, K = 40: ~20 s and 0.7 GB; K = 100 would need ~25 GB).
AUTO_CVXPY_MAX_K = 20
# Clarabel's default tolerances (1e-8) leave ~1e-4 relative error in Z near thresholds;
# these make it agree with the fast solver to ~1e-9 (K = 10: ~0.5 s instead of ~0.15 s).
CLARABEL_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10)


def _check_ufm_args(n, lam, lam_b):
    n = np.asarray(n, dtype=float).ravel()
    if n.size < 2:
        raise UserError(f"class sizes: {n.size} class given; the UFM needs at least two classes")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise UserError(f"class sizes: {n.tolist()} not allowed; sizes must be positive numbers")
    if not np.isfinite(lam) or lam <= 0:       # at lam = 0 the infimum is not attained (Z -> inf)
        raise UserError(f"--reg_z (lambda): {lam} is not allowed; it must be a number > 0")
    if not np.isfinite(lam_b) or lam_b < 0:
        raise UserError(f"--reg_b (lambda_b): {lam_b} is not allowed; it must be a number >= 0")
    return n


def _blas_threads(k):
    """Context limiting BLAS threads to k (None: leave alone). On a shared 2-core machine
    multi-threaded OpenBLAS on small matrices can be 100x slower than one thread."""
    if k is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                      # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=k, user_api="blas")


def _ce_columns(V):
    """Cross-entropy of every column of V (column k has label k), without cancellation:
    CE_k = log(1 + sum_{j != k} exp(v_j - v_k)), computed as log1p where that sum is small.
    Returns (CE (K,), off-diagonal softmax probabilities with a zero diagonal (K x K),
    r = 1 - p_kk (K,), computed as a sum of the other probabilities, not as a difference)."""
    D = V - np.diag(V)[None, :]                    # D[j, k] = v_j - v_k
    np.fill_diagonal(D, -np.inf)
    a = np.maximum(D.max(axis=0), 0.0)
    E = np.exp(D - a)                               # diagonal: exp(-inf) = 0
    S = E.sum(axis=0)
    tot = np.exp(-a) + S
    ce = np.where(a > 0, a + np.log(tot), np.log1p(S))
    E /= tot
    return ce, E, S / tot


def _ufm_smooth(X, b, rho, q, lam_b):
    """Smooth part in scaled variables: sum_k rho_k CE(x_k/q_k + b, k) + lam_b |b|^2.
    Returns (value, gradient in X, gradient in b). The CE and the gradient's diagonal
    (p_kk - 1 = -(sum of the other probabilities)) are computed without cancellation, so the
    objective keeps its relative accuracy when the CE is tiny (lam sqrt(N) -> 0)."""
    ce, E, r = _ce_columns(X / q + b[:, None])
    f = float(rho @ ce + lam_b * (b @ b))
    E[np.diag_indices_from(E)] = -r                 # softmax - onehot, per column
    return f, E * q, E @ rho + 2.0 * lam_b * b


def _entropy_columns(Poff, r):
    """Entropy of each column distribution given by its off-diagonal entries Poff (zero diagonal)
    and r = 1 - (diagonal entry), accurately for r -> 0."""
    return -scipy.special.xlogy(Poff, Poff).sum(axis=0) - (1.0 - r) * np.log1p(-np.minimum(r, 1.0))


def _spectral_norm(A):
    """Largest singular value of A from the top eigenvalue of A^T A (LAPACK, deterministic),
    rounded up by a relative 1e-13 to cover its rounding error."""
    if not np.any(A):
        return 0.0
    top = scipy.linalg.eigh(A.T @ A, eigvals_only=True, check_finite=False, driver="evd")[-1]
    return float(np.sqrt(max(top, 0.0))) * (1.0 + 1e-13)


def _ufm_dual_point(X, b, rho, q, L, lam_b):
    """A feasible point of the dual of the convex program, built from the primal point (X, b).

    Dual (theory.md section 2, "Accuracy certificate"): maximise over P (columns p_k in the simplex)
        D(P) = sum_k rho_k H(p_k) - |(P - I) rho|^2 / (4 lam_b)   subject to ||(P - I) diag(q)||_2 <= L
    (for lam_b = 0 the second term becomes the constraint (P - I) rho = 0). P starts as the softmax
    of the logits, G = (P - I) diag(q) being the gradient of the CE term in X. Two feasible points
    are made from it and the better one is kept: (a) P pulled towards I until the spectral
    constraint holds; (b) the singular values of G above L clipped to L (negative entries this
    leaves, of the size of the clipped part, set to 0 and each column's diagonal entry recomputed so
    that it sums to 1), then pulled towards I as in (a). For lam_b = 0 the marginal (P - I) rho = 0
    is restored exactly first (column k moves by d_k (rho - e_k), d >= 0).
    Returns (D, Poff, r) of that point (off-diagonal entries, 1 - diagonal)."""
    ce, Poff, r = _ce_columns(X / q + b[:, None])
    G = Poff * q
    G[np.diag_indices_from(G)] = -r * q
    cands = [(Poff, r)]
    ev, Vv = scipy.linalg.eigh(G.T @ G, check_finite=False, driver="evd")
    above = ev > L * L
    ev, Vv = ev[above], Vv[:, above]
    if ev.size:
        s = np.sqrt(ev)
        G2 = G - ((G @ Vv) * (1.0 - L / s)) @ Vv.T
        P2 = np.maximum(G2 / q, 0.0)
        np.fill_diagonal(P2, 0.0)
        r2 = P2.sum(axis=0)
        if np.all(r2 <= 1.0):
            cands.append((P2, r2))
    best = (-np.inf, Poff, r)
    for Pc, rc in cands:
        if lam_b == 0:
            c = Pc @ rho - rc * rho                         # (P - I) rho
            d = c / rho
            d = d + max(0.0, -d.min())
            if np.any(rc + d * (1.0 - rho) > 1.0):         # cannot keep the simplex
                continue
            Pc = Pc + rho[:, None] * d[None, :]
            np.fill_diagonal(Pc, 0.0)
            rc = rc + d * (1.0 - rho)
        Gc = Pc * q
        Gc[np.diag_indices_from(Gc)] = -rc * q
        sn = _spectral_norm(Gc)
        t = 1.0 if sn <= L else L / sn
        Pc, rc = t * Pc, t * rc
        dual = float(rho @ _entropy_columns(Pc, rc))
        if lam_b > 0:
            c = Pc @ rho - rc * rho
            dual -= float(c @ c) / (4.0 * lam_b)
        if dual > best[0]:
            best = (dual, Pc, rc)
    return best


def _ufm_accuracy(primal, dual):
    """Relative objective suboptimality bound (primal - dual) / primal, floored at the rounding
    level of the two values (the objective is > 0: the CE term is)."""
    if not np.isfinite(dual):
        return float("inf")
    return max(primal - dual, 0.0) / primal + 4e-16 * np.sqrt(primal ** 2 + dual ** 2) / primal


def ufm_certificate(Z, b, n, lam, lam_b):
    """Accuracy certificate of any answer (Z, b) of the convex program, whichever solver gave it.

    Returns dict(objective, dual, gap, accuracy): the objective at (Z, b), the value of a feasible
    point of the dual (so dual <= optimum <= objective), gap = objective - dual, and
    accuracy = gap / objective, a bound on the relative suboptimality of the answer's objective."""
    n = _check_ufm_args(n, lam, lam_b)
    N = n.sum()
    rho, q = n / N, np.sqrt(n / N)
    X = np.asarray(Z, dtype=float) * q
    b = np.asarray(b, dtype=float).ravel()
    L = float(lam) * np.sqrt(N)
    primal = _ufm_smooth(X, b, rho, q, lam_b)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())
    dual = _ufm_dual_point(X, b, rho, q, L, lam_b)[0]
    return dict(objective=primal, dual=dual, gap=primal - dual, accuracy=_ufm_accuracy(primal, dual))


def _kl_small_side_bounds(s, kappa, iters=80):
    """For entries s in [0, 1/2] and budgets kappa >= 0: the interval [lo, hi] of x with the binary
    KL divergence kl(s, x) = s log(s/x) + (1-s) log((1-s)/(1-x)) <= kappa (bisection; rounded outward)."""
    s = np.asarray(s, dtype=float)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=float), s.shape)

    def kl(x):
        return scipy.special.xlogy(s, s) - scipy.special.xlogy(s, x) + (1 - s) * (np.log1p(-s) - np.log1p(-x))
    # lower end, bisection on log x in (log s - 800, log s)
    lo_l, hi_l = np.log(np.maximum(s, 1e-300)) - 800.0, np.log(np.maximum(s, 1e-300))
    for _ in range(iters):
        mid = 0.5 * (lo_l + hi_l)
        inside = kl(np.exp(mid)) <= kappa
        hi_l, lo_l = np.where(inside, mid, hi_l), np.where(inside, lo_l, mid)
    lo = np.where(s > 0, np.exp(lo_l) * (1 - 1e-12), 0.0)
    # upper end, bisection on x in (s, 1)
    a, z = s.copy(), np.ones_like(s)
    for _ in range(iters):
        mid = 0.5 * (a + z)
        inside = kl(mid) <= kappa
        a, z = np.where(inside, mid, a), np.where(inside, z, mid)
    return lo, np.minimum(z * (1 + 1e-12), 1.0)


def ufm_spread_bounds(Z, b, n, lam, lam_b, classes):
    """Certified interval [lower, upper] for the optimum's spread max_{j,k in classes} |z*_j - z*_k|
    (classes of one size), from the dual point of the answer (Z, b) and its duality gap.

    The dual is strongly concave: sum_k rho_k KL(p_k || p*_k) <= gap for the dual point P built from
    (Z, b), so every entry of p*_k lies in a binary-KL ball around p_k; within a class size
    z*_j - z*_k = (I - J/K)(log p*_j - log p*_k) (columns sum to 0 at the optimum), which turns
    those balls into the interval."""
    n = _check_ufm_args(n, lam, lam_b)
    classes = list(classes)
    if len(classes) < 2:
        return 0.0, 0.0
    if np.ptp(n[classes]) > 0:
        raise ValueError("ufm_spread_bounds: the classes must have one size")
    N = n.sum()
    rho, q = n / N, np.sqrt(n / N)
    X = np.asarray(Z, dtype=float) * q
    b = np.asarray(b, dtype=float).ravel()
    L = float(lam) * np.sqrt(N)
    primal = _ufm_smooth(X, b, rho, q, lam_b)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())
    dual, Poff, r = _ufm_dual_point(X, b, rho, q, L, lam_b)
    if not np.isfinite(dual):
        return 0.0, float("inf")
    gap = max(primal - dual, 0.0) + 4e-16 * (abs(primal) + abs(dual))
    idx = np.array(classes)
    P = Poff[:, idx].copy()
    Pc = 1.0 - P                                           # complements (exact enough off the diagonal)
    P[idx, np.arange(len(idx))] = 1.0 - r[idx]
    Pc[idx, np.arange(len(idx))] = r[idx]
    small = np.minimum(P, Pc)
    lo, hi = _kl_small_side_bounds(np.minimum(small, 0.5), gap / rho[idx][None, :])
    flip = P > Pc                                          # the entry is the large side: x = 1 - (small side)
    with np.errstate(divide="ignore"):
        log_lo = np.where(flip, np.log1p(-np.minimum(hi, 1.0)), np.log(lo))
        log_hi = np.where(flip, np.log1p(-lo), np.log(hi))
    lower = upper = 0.0
    if not (np.all(np.isfinite(log_lo)) and np.all(np.isfinite(log_hi))):
        return lower, float("inf")
    for a in range(len(idx) - 1):      # z*_j - z*_k = v*_j - v*_k = (I - J/K)(log p*_j - log p*_k)
        w_lo, w_hi = log_lo[:, a:a + 1] - log_hi[:, a + 1:], log_hi[:, a:a + 1] - log_lo[:, a + 1:]
        mid, rad = 0.5 * (w_lo + w_hi), 0.5 * (w_hi - w_lo)
        centre = np.linalg.norm(mid - mid.mean(axis=0), axis=0)
        e = np.linalg.norm(rad, axis=0)
        lower, upper = max(lower, float(np.max(centre - e))), max(upper, float(np.max(centre + e)))
    return lower, upper


def _eig_gram(A):
    """Eigen-decomposition of A^T A: (singular values of A, right singular vectors).
    eigh of the Gram is ~3x cheaper than an SVD; its errors are harmless for soft-thresholding,
    which is a Lipschitz function of A^T A away from 0 and exactly 0 near it."""
    ev, V = scipy.linalg.eigh(A.T @ A, overwrite_a=True, check_finite=False, driver="evd")
    return np.sqrt(np.maximum(ev, 0.0)), V


def _svt(A, tau):
    """Singular-value soft-thresholding: (prox of tau ||.||_* at A, its nuclear norm)."""
    sig, V = _eig_gram(A)
    keep = sig > tau
    if not keep.any():
        return np.zeros_like(A), 0.0
    Vk = V[:, keep]
    return ((A @ Vk) * (1.0 - tau / sig[keep])) @ Vk.T, float(np.sum(sig[keep] - tau))


def _lbfgs(fg, x, max_iter, gtol, m=10):
    """Plain L-BFGS (two-loop recursion, Armijo backtracking). Returns (x, f, iterations)."""
    axpy = scipy.linalg.blas.daxpy
    f, g = fg(x)
    S = np.empty((m, x.size))
    Y = np.empty((m, x.size))
    RH = np.zeros(m)
    k = 0                                   # pairs stored so far; newest at (k - 1) % m
    it = 0
    for it in range(1, max_iter + 1):
        if np.max(np.abs(g)) <= gtol:
            break
        d = -g
        order = [(k - 1 - j) % m for j in range(min(k, m))]          # newest first
        alphas = []
        for i in order:
            a = RH[i] * (S[i] @ d)
            alphas.append(a)
            axpy(Y[i], d, a=-a)
        if k:
            d *= 1.0 / (RH[order[0]] * (Y[order[0]] @ Y[order[0]]))
        for i, a in zip(reversed(order), reversed(alphas)):
            axpy(S[i], d, a=a - RH[i] * (Y[i] @ d))
        gd = g @ d
        if gd >= 0:                           # not a descent direction: reset memory
            d, gd, k = -g, -(g @ g), 0
        step = 1.0 if k else min(1.0, 1.0 / max(np.max(np.abs(g)), 1e-300))
        for _ in range(40):
            xn = x + step * d
            fn, gn = fg(xn)
            if fn <= f + 1e-4 * step * gd + 1e-15 * abs(f):
                break
            step *= 0.5
        else:
            break                             # no decrease possible at this precision
        i = k % m
        np.subtract(xn, x, out=S[i])
        np.subtract(gn, g, out=Y[i])
        sy = S[i] @ Y[i]
        if sy > 1e-16 * np.sqrt((S[i] @ S[i]) * (Y[i] @ Y[i])):
            RH[i] = 1.0 / sy
            k += 1
        x, f, g = xn, fn, gn
    return x, f, it


def ufm_objective(Z, b, n, lam, lam_b):
    """Objective of the convex program at any (Z, b) (numpy, float64)."""
    n = np.asarray(n, dtype=float).ravel()
    Z = np.asarray(Z, dtype=float)
    b = np.asarray(b, dtype=float).ravel()
    N = n.sum()
    rho, q = n / N, np.sqrt(n / N)
    f = _ufm_smooth(Z * q, b, rho, q, lam_b)[0]
    return f + lam * float(np.linalg.svd(Z * np.sqrt(n), compute_uv=False).sum())


def solve_ufm_cvxpy(n, lam, lam_b, solver="CLARABEL", tol=1e-9, **solver_opts):
    """Solve the convex program with cvxpy: Clarabel (interior point) with tight tolerances by
    default; SCS is only ~1e-4 accurate near thresholds. solver_opts go to the solver.
    Returns dict(Z, b, objective, status, accuracy, solver_status, solve_time, solver); objective is
    re-evaluated in numpy; accuracy is ufm_certificate's bound, and status is 'optimal' only when
    accuracy <= tol ('inaccurate' otherwise), whatever cvxpy's own status (solver_status) says."""
    import cvxpy as cp          # imported here: ~1 s to import, and only this function needs it
    n = _check_ufm_args(n, lam, lam_b)
    K, N = n.size, n.sum()
    rho = n / N
    q = np.sqrt(rho)
    X = cp.Variable((K, K))                    # X = Z diag(sqrt(rho)): well scaled for the solver
    b = cp.Variable(K)
    logits = X @ np.diag(1.0 / q) + cp.reshape(b, (K, 1), order="F") @ np.ones((1, K))
    ce = rho @ cp.log_sum_exp(logits, axis=0) - rho @ (cp.diag(X) / q + b)
    obj = ce + lam * np.sqrt(N) * cp.normNuc(X) + lam_b * cp.sum_squares(b)
    prob = cp.Problem(cp.Minimize(obj))
    if solver == "CLARABEL" and not solver_opts:
        solver_opts = dict(CLARABEL_TIGHT)
    t0 = time.perf_counter()
    try:
        prob.solve(solver=solver, **solver_opts)
    except cp.error.SolverError as e:
        raise RuntimeError(f"cvxpy solver {solver} failed: {e}") from e
    t = time.perf_counter() - t0
    if X.value is None:
        raise RuntimeError(f"cvxpy solver {solver} returned no solution (status {prob.status})")
    Z = X.value / q
    bv = np.asarray(b.value, dtype=float)
    cert = ufm_certificate(Z, bv, n, lam, lam_b)
    return dict(Z=Z, b=bv, objective=cert["objective"], accuracy=cert["accuracy"],
                status="optimal" if cert["accuracy"] <= tol else "inaccurate", solver_status=prob.status,
                solve_time=t, solver=f"cvxpy/{solver}")


def solve_ufm_fast(n, lam, lam_b, tol=1e-9, max_iter=5000, Z0=None, b0=None,
                   warm_start=True, bm_iter=3000, blas_threads=1):
    """Solve the convex program with a first-order method; general (no structure assumed).

    1. Warm start: L-BFGS on the Burer-Monteiro form X = W H, ||X||_* = min (|W|^2 + |H|^2)/2,
       r = K (no rank assumption), started from one proximal-gradient step at X = 0 (or Z0).
       Cheap iterations (matrix products only); it lands very close to the optimum.
    2. Certify and finish with FISTA on X (singular-value soft-thresholding, joint b step,
       adaptive step with backtracking, gradient restart). Stops when the certified accuracy
       (ufm_certificate: relative duality gap, a bound on the relative suboptimality of the
       objective) is <= tol; scale-free. Soft-thresholding makes collapsed columns coincide
       exactly near thresholds.
    Returns dict(Z, b, objective, status, accuracy, solve_time, solver, iterations, bm_iterations,
    residual): status 'optimal' when accuracy <= tol, else 'inaccurate'; residual is the last
    relative proximal step |(Z, b)_new - (Z, b)_y| / |(Z, b)_new|.
    """
    n = _check_ufm_args(n, lam, lam_b)
    t0 = time.perf_counter()
    K, N = n.size, n.sum()
    rho = n / N
    q = np.sqrt(rho)
    L = float(lam) * np.sqrt(N)                 # nuclear-norm weight in scaled variables
    with _blas_threads(blas_threads):
        if Z0 is not None:
            X = np.asarray(Z0, dtype=float) * q
            b = np.zeros(K) if b0 is None else np.asarray(b0, dtype=float).ravel().copy()
            U, sig, Vt = np.linalg.svd(X)
            W, H = U * np.sqrt(sig), np.sqrt(sig)[:, None] * Vt
        else:
            b = np.log(rho) - np.log(rho).mean()          # best b for Z = 0 when lam_b -> 0
            A = -_ufm_smooth(np.zeros((K, K)), b, rho, q, lam_b)[1]
            sig, V = _eig_gram(A)                          # prox step (unit step) from X = 0
            keep = sig > L
            X = ((A @ V[:, keep]) * (1.0 - L / sig[keep])) @ V[:, keep].T
            # balanced factors of that step; directions below the threshold get a small weight
            sv = np.maximum(sig - L, 1e-3 * max(sig.max() - L, 1e-3))
            ok = sig > 1e-6 * sig.max()
            U = np.where(ok, A @ V / np.where(ok, sig, 1.0), V)
            W, H = U * np.sqrt(sv), np.sqrt(sv)[:, None] * V.T
        bm_its = 0
        if warm_start:
            KK = K * K

            def fg(x):
                W, H, bb = x[:KK].reshape(K, K), x[KK:2 * KK].reshape(K, K), x[2 * KK:]
                f, gX, gb = _ufm_smooth(W @ H, bb, rho, q, lam_b)
                f += 0.5 * L * (np.sum(W * W) + np.sum(H * H))
                return f, np.concatenate([(gX @ H.T + L * W).ravel(), (W.T @ gX + L * H).ravel(), gb])

            x, _, bm_its = _lbfgs(fg, np.concatenate([W.ravel(), H.ravel(), b]), bm_iter, gtol=1e-11)
            X = x[:KK].reshape(K, K) @ x[KK:2 * KK].reshape(K, K)
            b = x[2 * KK:].copy()
        # FISTA in the metric c * diag(1 on X, 1 + 2 lam_b on b); c = 1 is a global Lipschitz
        # bound (softmax Hessian <= 1/2), backtracking finds the local one.
        Lb = 1.0 + 2.0 * lam_b
        F = np.inf
        Xy, by = X, b
        fy, gX, gb = _ufm_smooth(Xy, by, rho, q, lam_b)
        tk, c, res, it = 1.0, 0.5, np.inf, 0
        best = (np.inf, None, None, None, None, None)   # (accuracy, X, b, F, res, iteration)
        for it in range(1, max_iter + 1):
            while True:
                Xn, nucn = _svt(Xy - gX / c, L / c)
                bn = by - gb / (c * Lb)
                fn, gXn, gbn = _ufm_smooth(Xn, bn, rho, q, lam_b)
                dX, db = Xn - Xy, bn - by
                quad = fy + np.sum(gX * dX) + gb @ db + 0.5 * c * (np.sum(dX * dX) + Lb * (db @ db))
                if fn <= quad + 1e-14 * abs(fy):
                    break
                c *= 2.0
            Fn = fn + L * nucn
            # scale-free step size: relative to the size of the answer (Z, b)
            size = np.sqrt(np.sum((Xn / q) ** 2) + bn @ bn)
            res = np.sqrt(np.sum((dX / q) ** 2) + db @ db) / size if size > 0 else 0.0
            if np.sum(dX * (Xn - X)) + Lb * (db @ (bn - b)) > 0 or Fn > F:     # restart
                tk = 1.0
                Xy, by, fy, gX, gb = Xn, bn, fn, gXn, gbn
            else:
                tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tk * tk))
                beta = (tk - 1.0) / tn
                tk = tn
                Xy, by = Xn + beta * (Xn - X), bn + beta * (bn - b)
                fy, gX, gb = _ufm_smooth(Xy, by, rho, q, lam_b)
            X, b, F = Xn, bn, Fn
            c *= 0.9                                # let the step grow again
            # the stopping rule is the certificate itself (relative duality gap), checked when the
            # step has become small and every 25 iterations; the best certified iterate is kept
            # (at the rounding floor the iterates wander without changing the objective)
            if res < 1e-6 or it % 25 == 0 or it == max_iter:
                acc = _ufm_accuracy(F, _ufm_dual_point(X, b, rho, q, L, lam_b)[0])
                if acc < best[0]:
                    best = (acc, X, b, F, res, it)
                if acc <= tol:
                    break
        if best[1] is None or (best[5] != it and not res < 1e-6 and it % 25):
            acc = _ufm_accuracy(F, _ufm_dual_point(X, b, rho, q, L, lam_b)[0])
            if acc < best[0] or best[1] is None:
                best = (acc, X, b, F, res, it)
        acc, X, b, F, res, _ = best
    return dict(Z=X / q, b=b, objective=float(F), status="optimal" if acc <= tol else "inaccurate",
                accuracy=float(acc), solve_time=time.perf_counter() - t0, solver="fast", iterations=it,
                bm_iterations=bm_its, residual=float(res))


def solve_ufm(n, lam, lam_b, solver="auto", tol=1e-9):
    """The convex program by `solver`: 'cvxpy', 'fast', or 'auto' (up to AUTO_CVXPY_MAX_K both cvxpy
    and the fast solver, keeping the answer with the better certified accuracy; the fast solver
    alone above). Every answer carries `accuracy` (ufm_certificate) and its status rests on it:
    'optimal' when accuracy <= tol, otherwise 'inaccurate' (reported, not hidden)."""
    if solver not in ("auto", "cvxpy", "fast"):
        raise UserError(f"--solver {solver}: allowed are auto, cvxpy, fast")
    if solver == "fast" or (solver == "auto" and len(n) > AUTO_CVXPY_MAX_K):
        return solve_ufm_fast(n, lam, lam_b, tol=tol)
    try:
        sol = solve_ufm_cvxpy(n, lam, lam_b, tol=tol)
    except RuntimeError as e:  # the interior-point solver occasionally fails numerically
        if solver == "cvxpy":
            raise UserError(f"--solver cvxpy: {e}; try --solver fast") from e
        sol = None
        print(f"note: cvxpy failed ({e}); using the fast solver's answer", file=sys.stderr)
    if solver == "auto":
        fast = solve_ufm_fast(n, lam, lam_b, tol=tol)
        if sol is None or (fast["accuracy"], fast["objective"]) < (sol["accuracy"], sol["objective"]):
            sol = fast
    return sol


def lam_from_script(lam_h, lam_w):
    """lambda of the convex program from the scripts' feature and classifier weights: 2 sqrt(lam_W lam_H)."""
    return 2.0 * np.sqrt(lam_w * lam_h)


def script_weights(lam):
    """The figure scripts' split of lambda into feature and classifier weights, lam_H = lambda / 20
    and lam_W = 5 lambda (so lam_from_script gives lambda back), as the original code did."""
    return {"lam_h": lam / 20, "lam_w": 5 * lam}


def collapse_threshold(n_c, N):
    """A cluster of >= 2 classes with n_c samples each collapses iff lambda >= sqrt(n_c) / N."""
    return np.sqrt(n_c) / N


def expand_clusters(cluster_s, sample_s):
    """Per-class sizes and the class-index clusters from classes per cluster and samples per class."""
    n, clusters = [], []
    for k, m in zip(cluster_s, sample_s):
        clusters.append(list(range(len(n), len(n) + int(k))))
        n += [int(m)] * int(k)
    return n, clusters


def cluster_thresholds(cluster_s, sample_s):
    """Collapse threshold of each cluster (None for a single-class cluster, which cannot collapse)."""
    N = float(np.dot(cluster_s, sample_s))
    return [collapse_threshold(m, N) if k >= 2 else None for k, m in zip(cluster_s, sample_s)]


def two_cluster_lambda_star(k_A, n_A, k_B, n_B):
    """Minority collapse threshold of k_A classes of n_A and k_B of n_B (n_A > n_B)."""
    return collapse_threshold(n_B, k_A * n_A + k_B * n_B)


def two_cluster_nA_star(lam, k_A, k_B, n_B):
    """The majority size above which the minority collapses at fixed lambda."""
    return (np.sqrt(n_B) / lam - k_B * n_B) / k_A


def gram_from_Z(Z, n):
    """Classifier Gram (prop. to (M M^T)^{1/2}) and class-mean Gram (prop. to
    D^{-1/2} (M^T M)^{1/2} D^{-1/2}) at the optimum, from M = Z D^{1/2}."""
    sq = np.sqrt(np.asarray(n, np.float64))
    U, s, Vt = np.linalg.svd(np.asarray(Z, np.float64) * sq)
    return (U * s) @ U.T, (Vt.T * s) @ Vt / np.outer(sq, sq)


def cosines_from_gram(G):
    """Pairwise cosines from a Gram matrix (nan where a vector is zero)."""
    d = np.sqrt(np.diag(G))
    with np.errstate(invalid="ignore", divide="ignore"):
        return G / np.outer(d, d)



# ======================================================================================
# Mixup geometry: projection, free-feature optimum, summaries  (mixup)
# ======================================================================================


def simplex_etf(K, d, omega=1.0, seed=0):
    """K x d simplex ETF: rows of norm omega, summing to zero, pairwise cosine -1/(K-1), placed
    in a random (K-1)-dimensional subspace of R^d (needs d >= K - 1)."""
    if d < K - 1:
        raise utils.UserError(f"--fixed_etf: a {K}-class simplex ETF needs feature dim >= {K - 1}, got {d}")
    centred_basis = np.linalg.eigh(np.eye(K) - 1.0 / K)[1][:, 1:]          # K x (K-1), E E^T = I - J/K
    rot = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, K - 1)))[0].T  # orthonormal rows
    return omega * np.sqrt(K / (K - 1)) * centred_basis @ rot


# The 2-D layout of theory.md section 5: an exact 3-class ETF lands on an equilateral triangle
# with class k at vertex k.
_TRIANGLE = np.sqrt(2) * np.array([[0.5, -0.5, 0.0], [0.0, 0.0, np.sqrt(0.75)]]) @ (np.eye(3) - 1.0 / 3)


def mixup_projection(W, classes):
    """(P, centre) with P = A Q (2 x d): Q the polar factor of the centred classifier rows of
    the three `classes`; a feature h maps to P (h - centre)."""
    W3 = np.asarray(W, dtype=np.float64)[list(classes)]
    centre = W3.mean(0)
    U, _, Vt = np.linalg.svd(W3 - centre, full_matrices=False)
    return _TRIANGLE @ (U[:, :2] @ Vt[:2]), centre


def project(H, P, centre):
    """n x 2 projected coordinates of the rows of H."""
    return (np.asarray(H, dtype=np.float64) - centre) @ P.T


def expected_calibration_error(logits, y, n_bins=15):
    """ECE with equal-width confidence bins: sum over bins of (bin share) * |accuracy - confidence|."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    conf, pred = torch.softmax(logits, 1).max(1)
    correct = (pred == torch.as_tensor(y)).double()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        m = bins == k
        if m.any():
            ece += m.double().mean().item() * abs(correct[m].mean().item() - conf[m].mean().item())
    return ece


def collect_mixup_features(model, x, y, classes, n, alpha, rng, train_mode=True, batch_size=500):
    """Last-layer features of n mixed-up examples whose two parents are drawn from `classes`
    (lam ~ Beta(alpha, alpha) per example). Train mode, as in the paper, lets BatchNorm use batch
    statistics; the model's buffers and mode are restored afterwards. Returns numpy arrays
    features, logits, lam, y_a, y_b, W, b, classes, and feature_mean: the global mean of the
    clean training features (all classes, same mode), by which the geometry summary centres."""
    pool = np.flatnonzero(np.isin(np.asarray(y), list(classes)))
    ia, ib = rng.choice(pool, n), rng.choice(pool, n)
    lam = rng.beta(alpha, alpha, size=n)
    device = next(model.parameters()).device
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train(train_mode)
    feats, logits = [], []
    with torch.no_grad():  # near-equal chunks, so batch norm never sees a batch of one
        for rows in np.array_split(np.arange(n), -(-n // batch_size)):
            lam_b = torch.as_tensor(lam[rows], dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
            xm = lam_b * x[ia[rows]] + (1 - lam_b) * x[ib[rows]]
            z, h = model(xm.to(device))
            feats.append(h.float().cpu())
            logits.append(z.float().cpu())
        feature_sum = sum(model(x[rows].to(device))[1].double().sum(0).cpu()
                          for rows in np.array_split(np.arange(len(x)), -(-len(x) // batch_size)))
    model.load_state_dict(saved)
    model.train(was_training)
    lin = model.classifier
    bias = lin.bias.detach().cpu().numpy() if lin.bias is not None else np.zeros(lin.out_features)
    return {"features": torch.cat(feats).numpy(), "logits": torch.cat(logits).numpy(),
            "lam": lam, "y_a": np.asarray(y)[ia], "y_b": np.asarray(y)[ib],
            "W": lin.weight.detach().float().cpu().numpy(), "b": bias, "classes": np.asarray(classes),
            "feature_mean": (feature_sum / len(x)).numpy()}


def _spearman(u, v):
    """Spearman rank correlation, or None where it is undefined (too few or constant values,
    constant up to rounding)."""
    if len(u) < 3 or np.ptp(u) < 1e-9 or np.ptp(v) < 1e-9:
        return None
    return float(scipy.stats.spearmanr(u, v)[0])


def _stats(v):
    return (None, None) if len(v) == 0 else (float(np.mean(v)), float(np.median(v)))


def mixup_geometry_summary(snap):
    """Numbers for the mixup geometry of one snapshot (a dict as from collect_mixup_features):
    same-class angle between h and w_c (feature space and projected) and its rank correlation
    with |lam - 1/2|; rank correlation of z_c - z_c' with log(lam/(1-lam)); and the residual
    ||h - (lam hbar_c + (1-lam) hbar_c')|| / ||h|| for different-class pairs, hbar_c being the
    mean same-class mixed feature. CE and MSE differ in the residual (theory.md section 5); since a
    network that has not collapsed adds within-class noise to it, the relative within-class spread
    of the same-class features (same_spread) and the residual of (pair, lam-bin) means are reported too.
    Features are centred by the snapshot's feature_mean when it has one (a network's features carry a
    global mean, e.g. after a ReLU, that the classifier ignores); the free-feature optimum has none."""
    H = np.asarray(snap["features"], dtype=np.float64)
    Z = np.asarray(snap["logits"], dtype=np.float64)
    W = np.asarray(snap["W"], dtype=np.float64)
    lam, ya, yb = np.asarray(snap["lam"], dtype=np.float64), np.asarray(snap["y_a"]), np.asarray(snap["y_b"])
    classes = [int(c) for c in snap["classes"]]
    P, centre = mixup_projection(W, classes)
    Hp, Wp = project(H, P, centre), project(W[classes], P, centre)
    if snap.get("feature_mean") is not None:  # angles and residuals of centred features, as NC measures them
        H = H - np.asarray(snap["feature_mean"], dtype=np.float64)
    same, diff = ya == yb, ya != yb
    wa = W[ya[same]]
    # angle from atan2(|h x w|, h.w): exact to rounding near 0 (arccos of a cosine is not: a rounding
    # error of 1e-16 in the cosine reads as 1e-6 degrees, which made undefined correlations numbers)
    hs = H[same]
    dots = (hs * wa).sum(1)
    wn2 = (wa * wa).sum(1)
    perp = np.linalg.norm(hs - (dots / np.where(wn2 > 0, wn2, 1.0))[:, None] * wa, axis=1)
    ang = np.degrees(np.arctan2(perp * np.sqrt(wn2), dots))
    vert = Wp[[classes.index(c) for c in ya[same]]]
    hp = Hp[same]
    pang = np.degrees(np.abs(np.arctan2(vert[:, 0] * hp[:, 1] - vert[:, 1] * hp[:, 0], (vert * hp).sum(1))))
    means = {c: H[same & (ya == c)].mean(0) for c in classes if (same & (ya == c)).any()}
    # relative quantities are undefined (left out; None when nothing is left) where the norm is 0
    spread = [np.mean(np.linalg.norm(H[same & (ya == c)] - m, axis=1)) / np.linalg.norm(m)
              for c, m in means.items() if np.linalg.norm(m) > 0]
    ok = diff & np.array([a in means and b in means for a, b in zip(ya, yb)]) & (lam > 0) & (lam < 1) \
        & (np.linalg.norm(H, axis=1) > 0)
    target = lam[ok, None] * np.array([means[a] for a in ya[ok]]).reshape(-1, H.shape[1]) + \
        (1 - lam[ok, None]) * np.array([means[b] for b in yb[ok]]).reshape(-1, H.shape[1])
    resid = np.linalg.norm(H[ok] - target, axis=1) / np.linalg.norm(H[ok], axis=1)
    # the same residual for bin means (pair, tenth of lam): noise within a class averages out
    lo, hi = np.minimum(ya[ok], yb[ok]), np.maximum(ya[ok], yb[ok])
    lam_lo = np.where(ya[ok] == lo, lam[ok], 1 - lam[ok])
    cell = (lo * 1000 + hi) * 10 + np.minimum((lam_lo * 10).astype(int), 9)
    binned, weights = [], []
    for key in np.unique(cell):
        m = cell == key
        h_bar = H[ok][m].mean(0)
        if m.sum() >= 2 and np.linalg.norm(h_bar) > 0:
            binned.append(np.linalg.norm(h_bar - target[m].mean(0)) / (np.linalg.norm(h_bar) + 1e-30))
            weights.append(m.sum())
    rows = np.flatnonzero(diff & (lam > 0) & (lam < 1))
    gap = Z[rows, ya[rows]] - Z[rows, yb[rows]]
    log_odds = np.log(lam[rows] / (1 - lam[rows]))
    same_mean, same_median = _stats(ang)
    resid_mean, resid_median = _stats(resid)
    return {"n_same": int(same.sum()), "n_diff": int(diff.sum()),
            "same_angle_deg_mean": same_mean, "same_angle_deg_median": same_median,
            "same_proj_angle_deg_mean": _stats(pang)[0],
            "same_angle_vs_abs_lam_spearman": _spearman(ang, np.abs(lam[same] - 0.5)),
            "diff_logit_gap_vs_log_odds_spearman": _spearman(gap, log_odds),
            "same_spread": float(np.mean(spread)) if spread else None,
            "diff_convex_residual_mean": resid_mean, "diff_convex_residual_median": resid_median,
            "diff_convex_residual_binned": float(np.average(binned, weights=weights)) if binned else None}


# --- Free-feature (UFM) mixup optimum, theory.md section 5 ---------------------------------
# A mixed example (classes c, c', coefficient lam) has a free feature h minimising
# lam l(Wh, c) + (1 - lam) l(Wh, c') + (gamma/2)||h||^2. With a fixed ETF classifier of row norm
# omega, h* = s W^T z with s = (K-1)/(K omega^2), and the logits z solve a problem in beta = gamma s.

def ufm_same_class_logit(K, beta):
    """Root a > 0 of beta a (1 + (K-1) e^{-aK/(K-1)}) = (K-1) e^{-aK/(K-1)}: the same-class CE
    optimum has logits (a, -a/(K-1), ...), whatever lam."""
    e = lambda a: np.exp(-a * K / (K - 1))
    return scipy.optimize.brentq(lambda a: beta * a * (1 + (K - 1) * e(a)) - (K - 1) * e(a),
                                 0.0, (K - 1) / beta, xtol=1e-14, rtol=1e-14)


def ufm_pair_logits(lam, K, beta):
    """(a, b, t) minimising the strictly convex F(a, b) = -lam a - (1-lam) b
    + log(e^a + e^b + (K-2) e^t) + (beta/2)(a^2 + b^2 + (K-2) t^2), t = -(a+b)/(K-2):
    the different-class CE optimum (logit of c, of c', of every other class)."""
    def F(v):
        a, b = v
        t = -(a + b) / (K - 2)
        m = max(a, b, t)
        S = np.exp(a - m) + np.exp(b - m) + (K - 2) * np.exp(t - m)
        pa, pb, pt = np.exp(a - m) / S, np.exp(b - m) / S, np.exp(t - m) / S
        f = -lam * a - (1 - lam) * b + m + np.log(S) + beta / 2 * (a * a + b * b + (K - 2) * t * t)
        return f, np.array([-lam + pa - pt + beta * (a - t), -(1 - lam) + pb - pt + beta * (b - t)])
    res = scipy.optimize.minimize(F, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-12})
    a, b = res.x
    return a, b, -(a + b) / (K - 2)


def ufm_closed_form_logits(loss, K, beta, y_a, y_b, lam, mse_scale=1.0):
    """n x K optimal logits of the fixed-ETF UFM for each mixed example (closed forms of
    theory.md section 5; loss 'cross_entropy' or 'mse' with target scale mse_scale)."""
    if K < 3:
        raise utils.UserError(f"--num_classes: the mixup UFM needs K >= 3, got {K}")
    y_a, y_b, lam = np.asarray(y_a), np.asarray(y_b), np.asarray(lam, dtype=np.float64)
    Y = np.zeros((len(lam), K))
    Y[np.arange(len(lam)), y_a] += lam
    Y[np.arange(len(lam)), y_b] += 1 - lam
    if loss == "mse":                       # min 0.5||z - kappa y||^2 + beta/2 ||z||^2 over sum z = 0
        return mse_scale * (Y - Y.mean(1, keepdims=True)) / (1 + beta)
    if loss != "cross_entropy":
        raise utils.UserError(f"--loss: closed forms exist for cross_entropy and mse, not {loss!r}; "
                              "use the direct optimiser")
    Z = np.empty((len(lam), K))
    a_same = ufm_same_class_logit(K, beta)
    for i, (c, c2, l) in enumerate(zip(y_a, y_b, lam)):
        if c == c2:
            Z[i] = -a_same / (K - 1)
            Z[i, c] = a_same
        else:
            a, b, t = ufm_pair_logits(l, K, beta)
            Z[i] = t
            Z[i, c], Z[i, c2] = a, b
    return Z


def ufm_features_from_logits(Z, W):
    """h* = s W^T z, s = (K-1)/(K omega^2), for a fixed simplex-ETF W with row norm omega."""
    K = W.shape[0]
    omega2 = float(np.mean(np.sum(np.asarray(W) ** 2, axis=1)))
    return (K - 1) / (K * omega2) * np.asarray(Z) @ np.asarray(W)


def ufm_direct(loss_fn, y_a, y_b, lam, K, d, gamma, W=None, lam_w=5e-4, steps=500, seed=0, rtol=1e-10,
               max_rounds=200):
    """Minimise mean_i [lam_i l(W h_i, a_i) + (1 - lam_i) l(W h_i, b_i)] + (gamma/2) mean_i ||h_i||^2
    over free features h_i (float64, L-BFGS) for any per-sample torch loss `loss_fn(logits, y)`.
    W fixed when given; otherwise learned too, with + (lam_w/2)||W||_F^2. Returns (H, W) numpy.

    Scale-free stopping: rounds of `steps` L-BFGS iterations until the largest gradient entry is
    <= rtol times its value at the start, or a round no longer lowers the objective (rounding
    floor); no absolute tolerance, which stopped flat losses (focal, small gamma) early."""
    g = torch.Generator().manual_seed(seed)
    ya, yb = torch.as_tensor(np.asarray(y_a)), torch.as_tensor(np.asarray(y_b))
    lam_t = torch.as_tensor(np.asarray(lam, dtype=np.float64))
    H = (0.1 * torch.randn(len(lam_t), d, generator=g, dtype=torch.float64)).requires_grad_()
    learned = W is None
    Wt = (0.1 * torch.randn(K, d, generator=g, dtype=torch.float64) if learned
          else torch.as_tensor(np.asarray(W), dtype=torch.float64)).requires_grad_(learned)
    params = [H, Wt] if learned else [H]

    def closure():
        opt.zero_grad()
        z = H @ Wt.T
        f = (lam_t * loss_fn(z, ya) + (1 - lam_t) * loss_fn(z, yb)).mean() + gamma / 2 * H.pow(2).sum(1).mean()
        if learned:
            f = f + lam_w / 2 * Wt.pow(2).sum()
        f.backward()
        return f

    def grad_max():
        return max(float(p.grad.abs().max()) for p in params)
    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=50, line_search_fn="strong_wolfe")
    f_prev = float(closure().detach())
    g0 = grad_max()
    for _ in range(max_rounds):
        opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, tolerance_grad=0.0, tolerance_change=0.0,
                                history_size=50, line_search_fn="strong_wolfe")
        opt.step(closure)
        f = float(closure().detach())
        if grad_max() <= rtol * g0 or not f < f_prev:
            break
        f_prev = f
    return H.detach().numpy(), Wt.detach().numpy()


def ufm_mixup_grid(classes, K, n_lam=41):
    """Mixed examples to solve for: each class with itself and each pair of `classes` at n_lam
    values of lam in (0, 1); returns (y_a, y_b, lam)."""
    lams = np.linspace(0, 1, n_lam + 2)[1:-1]
    pairs = [(c, c) for c in classes] + [(c, c2) for i, c in enumerate(classes) for c2 in classes[i + 1:]]
    y_a = np.repeat([p[0] for p in pairs], n_lam)
    y_b = np.repeat([p[1] for p in pairs], n_lam)
    return y_a, y_b, np.tile(lams, len(pairs))


def ufm_mixup_snapshot(loss, K=10, beta=0.01, classes=(0, 1, 2), n_lam=41, loss_fn=None,
                       learned=False, lam_w=5e-4, mse_scale=1.0, seed=0):
    """The free-feature optimum over ufm_mixup_grid in the format of a network snapshot
    (features, logits, lam, y_a, y_b, W, b, classes), so it plots and summarises alike.
    Closed forms for cross_entropy/mse with the fixed ETF (row norm 1, feature dim K);
    otherwise (other losses, or learned=True) the direct optimiser with loss_fn and all K classes
    taking part when the classifier is learned. gamma = beta K/(K-1) matches beta."""
    classes = [int(c) for c in classes]
    gamma = beta * K / (K - 1)
    if learned:
        y_a, y_b, lam = ufm_mixup_grid(list(range(K)), K, n_lam)
        H, W = ufm_direct(loss_fn, y_a, y_b, lam, K, K, gamma, lam_w=lam_w, seed=seed)
        keep = np.isin(y_a, classes) & np.isin(y_b, classes)
        H, y_a, y_b, lam = H[keep], y_a[keep], y_b[keep], lam[keep]
    else:
        W = simplex_etf(K, K, seed=seed)
        y_a, y_b, lam = ufm_mixup_grid(classes, K, n_lam)
        if loss_fn is None:
            H = ufm_features_from_logits(ufm_closed_form_logits(loss, K, beta, y_a, y_b, lam, mse_scale), W)
        else:
            H = ufm_direct(loss_fn, y_a, y_b, lam, K, K, gamma, W=W, seed=seed)[0]
    return {"features": H, "logits": H @ W.T, "lam": lam, "y_a": y_a, "y_b": y_b, "W": W,
            "b": np.zeros(K), "classes": np.asarray(classes)}
