"""Analysis: feature extraction, NC metrics, the UFM convex program and its solvers, theory
formulas, and the theory side of a figure point (its Z summary and the convex program's answer).
No plotting."""
import contextlib
import functools
import sys
import time

import numpy as np
import scipy.linalg
import scipy.optimize

from utils import UserError

# ======================================================================================
# Feature extraction and NC metrics  (foundation)
# ======================================================================================


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
    H, y = _np64(H), np.asarray(y.cpu() if _is_tensor(y) else y, dtype=np.int64)
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
    y = np.asarray(y.cpu() if _is_tensor(y) else y, dtype=np.int64)
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
        raise UserError(f"lambda {lam}: must be a number > 0")
    if not np.isfinite(lam_b) or lam_b < 0:
        raise UserError(f"lambda_b {lam_b}: must be a number >= 0")
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


def _ufm_smooth(X, b, rho, q, lam_b):
    """Smooth part in scaled variables: sum_k rho_k CE(x_k/q_k + b, k) + lam_b |b|^2.
    Returns (value, gradient in X, gradient in b)."""
    K = X.shape[0]
    V = X / q + b[:, None]
    vmax = V.max(axis=0)
    E = np.exp(V - vmax)
    S = E.sum(axis=0)
    f = float(rho @ (vmax + np.log(S) - np.diag(V)) + lam_b * (b @ b))
    E /= S
    E[np.diag_indices(K)] -= 1.0                       # softmax - onehot, per column
    return f, E * q, E @ rho + 2.0 * lam_b * b


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


def solve_ufm_cvxpy(n, lam, lam_b, solver="CLARABEL", **solver_opts):
    """Solve the convex program with cvxpy: Clarabel (interior point) with tight tolerances by
    default; SCS is only ~1e-4 accurate near thresholds. solver_opts go to the solver.
    Returns dict(Z, b, objective, status, solve_time, solver); objective is re-evaluated in numpy."""
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
    return dict(Z=Z, b=bv, objective=ufm_objective(Z, bv, n, lam, lam_b), status=prob.status,
                solve_time=t, solver=f"cvxpy/{solver}")


def solve_ufm_fast(n, lam, lam_b, tol=1e-10, max_iter=5000, Z0=None, b0=None,
                   warm_start=True, bm_iter=3000, blas_threads=1):
    """Solve the convex program with a first-order method; general (no structure assumed).

    1. Warm start: L-BFGS on the Burer-Monteiro form X = W H, ||X||_* = min (|W|^2 + |H|^2)/2,
       r = K (no rank assumption), started from one proximal-gradient step at X = 0 (or Z0).
       Cheap iterations (matrix products only); it lands very close to the optimum.
    2. Certify and finish with FISTA on X (singular-value soft-thresholding, joint b step,
       adaptive step with backtracking, gradient restart). Stops when the relative
       proximal-gradient fixed-point residual |(Z, b)_new - (Z, b)_y| / max(1, |(Z, b)|) < tol.
       Soft-thresholding makes collapsed columns coincide exactly near thresholds.
    Returns dict(Z, b, objective, status, solve_time, solver, iterations, bm_iterations, residual).
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
            res = np.sqrt(np.sum((dX / q) ** 2) + db @ db) / max(
                1.0, np.sqrt(np.sum((Xn / q) ** 2) + bn @ bn))
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
            if res < tol:
                break
    return dict(Z=X / q, b=b, objective=float(F), status="optimal" if res < tol else "max_iter",
                solve_time=time.perf_counter() - t0, solver="fast", iterations=it,
                bm_iterations=bm_its, residual=float(res))


def solve_ufm(n, lam, lam_b, solver="auto"):
    """The convex program by `solver`: 'cvxpy', 'fast', or 'auto' (cvxpy up to AUTO_CVXPY_MAX_K, fast above,
    and fast wherever cvxpy does not reach an optimal status)."""
    if solver not in ("auto", "cvxpy", "fast"):
        raise UserError(f"solver {solver}: allowed are auto, cvxpy, fast")
    if solver == "fast" or (solver == "auto" and len(n) > AUTO_CVXPY_MAX_K):
        return solve_ufm_fast(n, lam, lam_b)
    try:
        sol = solve_ufm_cvxpy(n, lam, lam_b)
    except RuntimeError as e:  # the interior-point solver occasionally fails numerically
        sol = {"status": f"failed ({e})"}
    if solver == "auto" and sol["status"] != "optimal":
        print(f"note: cvxpy ended with status {sol['status']!r}; solved with the fast solver instead", file=sys.stderr)
        return solve_ufm_fast(n, lam, lam_b)
    if sol["status"] != "optimal":
        raise UserError(f"solver cvxpy ended with status {sol['status']}; use the fast solver")
    return sol


# The original scripts split lambda as lam_H = lambda / 20, lam_W = 5 lambda: lam_W / lam_H = 100.
SCRIPT_LAM_RATIO = 100.0


def split_lambda(lam, ratio=SCRIPT_LAM_RATIO):
    """(lam_H, lam_W) with 2 sqrt(lam_H lam_W) = lam and lam_W / lam_H = ratio (theory.md section 2):
    the one place where the lambda of the convex program becomes the training weights."""
    root = float(np.sqrt(ratio))
    return float(lam) / (2 * root), float(lam) * (root / 2)


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
# The theory side of a figure point: Z summaries and the convex program's answer
# ======================================================================================


def z_summary(Z, clusters, minority):
    """minority_spread (absolute and relative to ||Z||_F) and the mean column cosines of Z."""
    Z = np.asarray(Z, dtype=np.float64)
    spread = minority_spread(Z, minority) if len(minority) > 1 else 0.0
    norm = float(np.linalg.norm(Z))
    cos = cluster_cosines(Z, clusters) if norm > 1e-12 else {"within": [None] * len(clusters), "across": None}
    return {"minority_spread": spread, "minority_spread_rel": spread / norm if norm > 1e-12 else None,
            "z_norm": norm, "cosines": cos}


@functools.lru_cache(maxsize=512)
def _solve_ufm_cached(sizes, lam, lam_b):
    """The fast solver (exact zeros at collapse, robust near thresholds), remembered within one process."""
    return solve_ufm_fast(list(sizes), lam, lam_b)


def ufm_theory(sizes, clusters, lam, lam_b):
    """The convex program's answer for these class sizes and lambda (theory.md section 2)."""
    N = int(sum(sizes))
    minority = min(clusters, key=lambda c: sizes[c[0]])
    thresholds = [collapse_threshold(int(sizes[c[0]]), N) if len(c) > 1 else None for c in clusters]
    collapse = [bool(lam >= t) if t is not None else None for t in thresholds]
    try:
        sol = _solve_ufm_cached(tuple(int(n) for n in sizes), float(lam), float(lam_b))
        summary = z_summary(sol["Z"], clusters, minority)
    except UserError:
        raise
    except Exception as e:  # a solver failure must not lose the trained points: record it, plot without it
        sol = {"Z": None, "b": None, "status": f"solver failed: {type(e).__name__}: {e}"[:300]}
        summary = {"minority_spread": None, "minority_spread_rel": None, "z_norm": None,
                   "cosines": {"within": [None] * len(clusters), "across": None}}
        print(f"warning: convex program failed for sizes {sizes}, lambda {lam:.4g}: {sol['status']}", file=sys.stderr)
    return dict(summary, Z=sol["Z"], b=sol["b"], objective=sol.get("objective"),
                status=sol.get("status"), cluster_thresholds=thresholds, cluster_collapse=collapse,
                minority_threshold=thresholds[clusters.index(minority)],
                verdict="collapse" if collapse[clusters.index(minority)] else "no collapse")



def theory_curve(xs, make):
    """The convex program along a curve: make(x) -> (sizes, clusters, lam, lam_b); returns
    {'x': xs, 'minority_spread', 'minority_spread_rel', 'within_A', 'within_B', 'across', 'status'}
    (cosines of columns of Z, clusters ordered A, B)."""
    out = {"x": [], "minority_spread": [], "minority_spread_rel": [], "within_A": [], "within_B": [], "across": [],
           "status": []}
    for x in xs:
        sizes, clusters, lam, lam_b = make(x)
        th = ufm_theory(sizes, clusters, lam, lam_b)
        out["x"].append(x)
        for k in ("minority_spread", "minority_spread_rel", "status"):
            out[k].append(th[k])
        within = th["cosines"]["within"] + [None, None]
        out["within_A"].append(within[0])
        out["within_B"].append(within[1])
        out["across"].append(th["cosines"]["across"])
    return out

