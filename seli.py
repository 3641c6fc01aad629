"""SELI, the geometry imbalance tends to without regularisation (Thrampoulidis, Kini, Vakilian & Behnia 2022;
theory.md section 9): the hard-margin program min ||Z D^{1/2}||_* s.t. z_kk - z_jk >= 1, its solution
I - 11^T/K with an exact dual certificate for any sizes, an independent Clarabel solve, SELI's Grams and the
distances of any answer to SELI and to the simplex ETF. numpy only (cvxpy imported where used)."""
import time
import warnings

import numpy as np

from utils import UserError


def seli_logits(K):
    """SELI's logit matrix: the simplex-encoding matrix I - 11^T/K (classes as columns)."""
    return np.eye(K) - 1.0 / K


def _psd_sqrt(A):
    ev, V = np.linalg.eigh((A + A.T) / 2)
    return (V * np.sqrt(np.maximum(ev, 0.0))) @ V.T


def grams_from_logits(Z, n):
    """(classifier Gram, class-mean Gram) of the balanced factorisation Z = W Hbar of min ||Z D^{1/2}||_*:
    (M M^T)^{1/2} and D^{-1/2} (M^T M)^{1/2} D^{-1/2}, M = Z D^{1/2} (theory.md section 2)."""
    sq = np.sqrt(np.asarray(n, dtype=float))
    M = np.asarray(Z, dtype=float) * sq
    return _psd_sqrt(M @ M.T), _psd_sqrt(M.T @ M) / np.outer(sq, sq)


def seli_grams(n):
    """SELI's classifier and class-mean Grams for class sizes n."""
    return grams_from_logits(seli_logits(len(n)), n)


def seli_certificate(n):
    """Exact optimality certificate of Z = I - 11^T/K for the hard-margin program: the dual is
    max sum alpha_jk s.t. alpha >= 0, ||A||_2 <= 1, A = sum alpha_jk (e_k - e_j) e_k^T D^{-1/2}; the polar
    factor A of Y = Z D^{1/2} gives alpha_jk = -(A D^{1/2})_jk (j != k) with sum alpha = ||Y||_* (zero gap,
    complementary slackness: every margin of Z is exactly 1), so Z is optimal iff these alpha are >= 0.
    Returns dict(objective, dual, min_alpha, certified)."""
    n = np.asarray(n, dtype=float)
    K = n.size
    U, s, Vt = np.linalg.svd(seli_logits(K) * np.sqrt(n))
    r = s > s.max() * 1e-12
    B = (U[:, r] @ Vt[r]) * np.sqrt(n)
    alpha = -(B - np.diag(np.diag(B)))
    off = ~np.eye(K, dtype=bool)
    return dict(objective=float(s.sum()), dual=float(alpha[off].sum()), min_alpha=float(alpha[off].min()),
                certified=bool(alpha[off].min() >= -1e-12 * np.abs(alpha).max()))


def solve_seli_cvxpy(n):
    """The hard-margin program by cvxpy/Clarabel (tight tolerances), independently of the formula.
    Returns dict(Z, Z_centred_normalised, distance (1 - cosine to I - 11^T/K), objective, solve_time)."""
    import cvxpy as cp  # ~1 s to import; only this function needs it
    n = np.asarray(n, dtype=float)
    K = n.size
    if K < 2 or np.any(n <= 0):
        raise UserError(f"class sizes {n.tolist()}: need at least two positive sizes")
    Z = cp.Variable((K, K))
    cons = [cp.diag(Z)[None, :] - Z >= 1 - 1e9 * np.eye(K)]      # the diagonal's own constraint is void
    prob = cp.Problem(cp.Minimize(cp.normNuc(Z @ np.diag(np.sqrt(n)))), cons)
    t0 = time.perf_counter()
    with warnings.catch_warnings():      # 'optimal_inaccurate' at these tolerances; the answer is checked below
        warnings.simplefilter("ignore")
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10)
    if Z.value is None:
        raise RuntimeError(f"cvxpy solver CLARABEL returned no solution (status {prob.status})")
    Zc = Z.value - Z.value.mean(axis=0)
    return dict(Z=Z.value, Z_centred=Zc, distance=cosine_distance(Zc, seli_logits(K)), objective=float(prob.value),
                solve_time=time.perf_counter() - t0, solver="cvxpy/CLARABEL", status=prob.status)


def cosine_distance(A, B):
    """1 - <A, B> / (|A| |B|) (Frobenius); nan when either is 0."""
    A, B = np.asarray(A, dtype=float), np.asarray(B, dtype=float)
    d = np.linalg.norm(A) * np.linalg.norm(B)
    return float(1.0 - np.sum(A * B) / d) if d > 0 else float("nan")


def geometry_distances(Z, n, W=None, means=None):
    """Distances (1 - cosine) of an answer to SELI and to the simplex ETF: of Z centred per column to
    I - 11^T/K (both geometries' logit matrix), and of the classifier and class-mean Grams to SELI's and to
    the ETF's I - 11^T/K. Grams from W (rows: classes) and the class means (rows) when given (a trained
    network), else from Z's balanced factorisation (an optimum)."""
    Z = np.asarray(Z, dtype=float)
    K = Z.shape[1]
    gw, gh = grams_from_logits(Z, n)
    if W is not None:
        gw = np.asarray(W, dtype=float) @ np.asarray(W, dtype=float).T
    if means is not None:
        gh = np.asarray(means, dtype=float) @ np.asarray(means, dtype=float).T
    sw, sh = seli_grams(n)
    P = seli_logits(K)
    zd = cosine_distance(Z - Z.mean(axis=0), P)
    return {"seli": {"Z": zd, "gram_W": cosine_distance(gw, sw), "gram_H": cosine_distance(gh, sh)},
            "etf": {"Z": zd, "gram_W": cosine_distance(gw, P), "gram_H": cosine_distance(gh, P)}}
