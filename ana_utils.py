"""Analysis: feature extraction, NC metrics, the UFM convex program and its solvers,
theory formulas, and the mixup geometry."""
import time

import numpy as np
import torch

from utils import UserError, check_nonneg

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

def _check_ufm_args(n, lam, lam_b):
    """Validated per-class sizes (float array) or a UserError naming what is wrong."""
    n = np.asarray(n, dtype=np.float64).ravel()
    if n.size < 2:
        raise UserError(f"class sizes: {n.size} class given; the UFM needs at least two classes")
    if np.any(n <= 0) or np.any(n != np.round(n)):
        raise UserError(f"class sizes: {n.tolist()} not allowed; sizes must be positive integers")
    check_nonneg("--reg_z (lambda)", lam)
    check_nonneg("--reg_b (lambda_b)", lam_b)
    return n


def ufm_objective(Z, b, n, lam, lam_b):
    """The convex program's objective at (Z, b): (1/N) sum_k n_k CE(z_k + b, k)
    + lam ||Z D^{1/2}||_* + lam_b ||b||^2 (theory.md section 2; Z has classes as columns)."""
    Z, b, n = np.asarray(Z, np.float64), np.asarray(b, np.float64), np.asarray(n, np.float64)
    U = Z + b[:, None]
    m = U.max(0)
    ce = m + np.log(np.exp(U - m).sum(0)) - np.diag(U)
    nuc = np.linalg.svd(Z * np.sqrt(n), compute_uv=False).sum()
    return float(n @ ce / n.sum() + lam * nuc + lam_b * b @ b)


def solve_ufm_cvxpy(n, lam, lam_b, solver=None):
    """The convex program with cvxpy. Interior point (Clarabel) up to K = 30, where it is accurate
    near thresholds; above that its memory grows too fast (K = 100 needs > 20 GB), so SCS is run
    to tight tolerance. Returns dict(Z, b, objective, status, solver, solve_time)."""
    import cvxpy as cp  # heavy import, needed only here
    n = _check_ufm_args(n, lam, lam_b)
    K, N = len(n), n.sum()
    solver = solver or ("CLARABEL" if K <= 30 else "SCS")
    Z, b = cp.Variable((K, K)), cp.Variable(K)
    logits = Z + cp.reshape(b, (K, 1), order="F") @ np.ones((1, K))
    ce = (n / N) @ (cp.log_sum_exp(logits, axis=0) - cp.diag(Z) - b)
    problem = cp.Problem(cp.Minimize(ce + lam * cp.normNuc(Z @ np.diag(np.sqrt(n))) + lam_b * cp.sum_squares(b)))
    opts = {"eps": 1e-9, "max_iters": 200000} if solver == "SCS" else {}
    t = time.perf_counter()
    problem.solve(solver=solver, **opts)
    elapsed = time.perf_counter() - t
    return {"Z": Z.value, "b": b.value, "objective": ufm_objective(Z.value, b.value, n, lam, lam_b),
            "status": problem.status, "solver": solver, "solve_time": elapsed}


def solve_ufm_fast(n, lam, lam_b, tol=1e-8, max_iter=20000, init=None):
    """The convex program by accelerated proximal gradient (FISTA with backtracking and restarts).

    Variables M = Z D^{1/2} and b. In them the smooth part has curvature at most 1/N in M and
    1 + 2 lam_b in b (softmax Hessians are bounded by 1/2), so the block step sizes N and
    1/(1 + 2 lam_b), times a factor s <= 1, always decrease enough; s is tried larger (the true
    curvature is often far smaller) and halved until the sufficient-decrease test holds. The
    Gram-matrix SVT limits accuracy to about 1e-8 in Z (objective to ~1e-15). `init`: a
    starting (Z, b), e.g. the neighbouring point of a sweep. The nuclear norm's prox is singular-value soft-thresholding at lam N s, computed from the
    eigen-decomposition of the K x K Gram matrix. Stops when the relative step falls below tol."""
    n = _check_ufm_args(n, lam, lam_b)
    K, N = len(n), n.sum()
    w, sq = n / N, np.sqrt(n)
    T_M, T_b = N, 1.0 / (1.0 + 2.0 * lam_b)      # safe block steps
    diag = np.arange(K)

    def smooth(M, b, with_grad=True):
        U = M / sq + b[:, None]
        m = U.max(0)
        P = np.exp(U - m)
        S = P.sum(0)
        f = w @ (m + np.log(S) - U[diag, diag]) + lam_b * b @ b
        if not with_grad:
            return f
        P /= S
        P[diag, diag] -= 1.0                       # column k: softmax(z_k + b) - e_k
        return f, P * (sq / N), P @ w + 2 * lam_b * b

    def svt(V, tau):
        """argmin_M tau ||M||_* + ||M - V||^2 / 2: shrink singular values by tau."""
        evals, Q = np.linalg.eigh(V.T @ V)
        sv = np.sqrt(np.maximum(evals, 0.0))
        keep = sv > tau
        Q, sv = Q[:, keep], sv[keep]
        return (V @ Q) * (1.0 - tau / sv) @ Q.T

    t0 = time.perf_counter()
    M, b = (np.asarray(init[0], np.float64) * sq, np.asarray(init[1], np.float64)) if init else (np.zeros((K, K)), np.zeros(K))
    yM, yb, theta, s = M, b, 1.0, 64.0
    status = "max_iter"
    for it in range(1, max_iter + 1):
        f_y, gM, gb = smooth(yM, yb)
        while True:
            tM, tb = s * T_M, s * T_b
            M_new, b_new = svt(yM - tM * gM, lam * tM), yb - tb * gb
            dM, db = M_new - yM, b_new - yb
            bound = f_y + (gM * dM).sum() + gb @ db + ((dM**2).sum() / tM + db @ db / tb) / 2
            if s <= 1.0 or smooth(M_new, b_new, with_grad=False) <= bound + 1e-15 * abs(bound):
                break
            s /= 2
        step_M, step_b = M_new - M, b_new - b
        if ((yM - M_new) * step_M).sum() / tM + (yb - b_new) @ step_b / tb > 0:
            theta = 1.0                            # momentum points uphill: restart (O'Donoghue & Candes)
        theta_new = (1 + np.sqrt(1 + 4 * theta**2)) / 2
        beta = (theta - 1) / theta_new
        yM, yb = M_new + beta * step_M, b_new + beta * step_b
        size = np.sqrt((M_new**2).sum() / T_M + b_new @ b_new / T_b)
        change = np.sqrt((step_M**2).sum() / T_M + step_b @ step_b / T_b)
        M, b, theta = M_new, b_new, theta_new
        if change <= tol * max(size, 1e-12):
            status = "optimal"
            break
    Z = M / sq
    return {"Z": Z, "b": b, "objective": ufm_objective(Z, b, n, lam, lam_b), "status": status,
            "solver": "fast", "iterations": it, "solve_time": time.perf_counter() - t0}


def solve_ufm(n, lam, lam_b, solver="auto"):
    """The convex program by `solver`: 'cvxpy', 'fast', or 'auto' (cvxpy up to K = 30, fast above)."""
    if solver not in ("auto", "cvxpy", "fast"):
        raise UserError(f"--solver {solver}: allowed are auto, cvxpy, fast")
    if solver == "fast" or (solver == "auto" and len(n) > 30):
        return solve_ufm_fast(n, lam, lam_b)
    return solve_ufm_cvxpy(n, lam, lam_b)


def lam_from_script(lam_h, lam_w):
    """lambda of the convex program from the scripts' feature and classifier weights: 2 sqrt(lam_W lam_H)."""
    return 2.0 * np.sqrt(lam_w * lam_h)


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
    return np.sqrt(n_B) / (k_A * n_A + k_B * n_B)


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
