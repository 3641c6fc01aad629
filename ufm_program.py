"""The convex program of the unconstrained feature model (theory.md section 2): its objective
computed without cancellation, an accuracy certificate (relative duality gap) for any answer,
certified bounds on a cluster's spread, and two solvers (cvxpy with Clarabel or SCS, and a fast
first-order solver) whose status rests on the certificate. numpy and scipy only."""
import contextlib
import sys
import time

import numpy as np
import scipy.linalg
import scipy.special

from utils import UserError

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


def _ce_columns(V):
    """Cross-entropy of every column of V (column k has label k), without cancellation:
    CE_k = log(1 + sum_{j != k} exp(v_j - v_k)), computed as log1p where that sum is small.
    Returns (CE (K,), off-diagonal softmax probabilities with a zero diagonal (K x K),
    r = 1 - p_kk (K,), computed as a sum of the other probabilities, not as a difference)."""
    D = V - np.diag(V)[None, :]                    # D[j, k] = v_j - v_k
    np.fill_diagonal(D, -np.inf)
    return _ce_differences(D)


def _ce_differences(D):
    """_ce_columns from D[j, k] = v_j - v_k (-inf where absent): log(1 + sum_j exp(D[j, k]))."""
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


def _primal_and_dual(Z, b, n, lam, lam_b):
    """(objective at (Z, b), value of the dual point built from it, its off-diagonal softmax
    probabilities Poff and diagonal complements r), in the scaled variables; n already checked."""
    N = n.sum()
    rho, q = n / N, np.sqrt(n / N)
    X = np.asarray(Z, dtype=float) * q
    b = np.asarray(b, dtype=float).ravel()
    L = float(lam) * np.sqrt(N)
    primal = _ufm_smooth(X, b, rho, q, lam_b)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())
    dual, Poff, r = _ufm_dual_point(X, b, rho, q, L, lam_b)
    return primal, dual, Poff, r


def ufm_certificate(Z, b, n, lam, lam_b):
    """Accuracy certificate of any answer (Z, b) of the convex program, whichever solver gave it.

    Returns dict(objective, dual, gap, accuracy): the objective at (Z, b), the value of a feasible
    point of the dual (so dual <= optimum <= objective), gap = objective - dual, and
    accuracy = gap / objective, a bound on the relative suboptimality of the answer's objective."""
    n = _check_ufm_args(n, lam, lam_b)
    primal, dual = _primal_and_dual(Z, b, n, lam, lam_b)[:2]
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
    primal, dual, Poff, r = _primal_and_dual(Z, b, n, lam, lam_b)
    rho = n / n.sum()
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


def _svt(A, tau):
    """Singular-value soft-thresholding: (prox of tau ||.||_* at A, its nuclear norm), from eigh of
    A^T A (~3x cheaper than an SVD; its errors are harmless for soft-thresholding, which is a
    Lipschitz function of A^T A away from 0 and exactly 0 near it)."""
    ev, V = scipy.linalg.eigh(A.T @ A, overwrite_a=True, check_finite=False, driver="evd")
    sig = np.sqrt(np.maximum(ev, 0.0))
    keep = sig > tau
    if not keep.any():
        return np.zeros_like(A), 0.0
    Vk = V[:, keep]
    return ((A @ Vk) * (1.0 - tau / sig[keep])) @ Vk.T, float(np.sum(sig[keep] - tau))


def _lbfgs(fg, x, max_iter, gtol, m=30, stop=None):
    """L-BFGS (two-loop recursion, Armijo backtracking; where f no longer resolves the decrease a step
    that shrinks the gradient is taken), stopped early when stop(it, x, f, g). Returns (x, f, iterations)."""
    axpy = scipy.linalg.blas.daxpy
    f, g = fg(x)
    S = np.empty((m, x.size))
    Y = np.empty((m, x.size))
    RH = np.zeros(m)
    k = 0                                   # pairs stored so far; newest at (k - 1) % m
    it = 0
    for it in range(1, max_iter + 1):
        if np.max(np.abs(g)) <= gtol or (stop is not None and stop(it, x, f, g)):
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
            if fn <= f + 1e-4 * step * gd + 1e-15 * abs(f) or (fn <= f * (1 + 1e-14) and gn @ gn < g @ g):
                break                         # (at rounding level: a smaller gradient)
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


def _class_coordinates(n, L, lam_b, loss=None):
    """The program in the coordinates of the matrices that commute with every permutation of classes
    of one size. The program is invariant under those permutations, so by convexity an optimum lies
    among them: A = sum_a s_a Pi_a + E M E^T (Pi_a: projector on the zero-sum vectors of size group
    a; E: K x g orthonormal group indicators) has the singular values |s_a| (m_a - 1 times) and
    those of M, products act as (s s', M M'), and the CE of a column depends on its group only. So
    the factored form (s = sW sH, M = MW MH, |s| <= (sW^2 + sH^2)/2, ||M||_* <= (|MW|^2 + |MH|^2)/2)
    costs O(g^3) per evaluation with g distinct sizes (cluster layouts: g = 2 at any K), O(K^3)
    without repeated sizes. Returns (fg, hess, start, point): the factored objective and gradient,
    hess(x): v -> its Hessian times v, start(X, b, tau, floor) the coordinates of balanced factors of X (projected)
    soft-thresholded by tau (singular values floored at floor * (largest - tau)), point(x) -> (X, b).
    loss: per-class (weight, scale, offset, margin) of rebalance_program (None: all 1, 1, 0, 0)."""
    N = n.sum()
    keys = n if loss is None else np.column_stack([n, *loss])
    gi = np.unique(keys, axis=None if loss is None else 0, return_inverse=True)[1].ravel()
    m = np.bincount(gi).astype(float)
    g, rho = m.size, np.bincount(gi, weights=n) / m / N
    w, sig, o, mu = [np.bincount(gi, weights=v) / m for v in (loss or (n ** 0, n ** 0, 0 * n, 0 * n))]
    wp, sm = np.maximum(m - 1.0, 1.0), np.sqrt(m)      # x holds orthonormal coordinates: s wp, b sqrt(m)
    q, rr, wgt, C = np.sqrt(rho), 1.0 / np.sqrt(np.outer(m, m)), m * rho * w, o[:, None] - o[None, :] + mu[None, :]
    with np.errstate(divide="ignore"):                  # log of the count of entries j != k in group c, k in a
        logcnt = np.log(m[:, None] - np.eye(g))
    order = np.argsort(gi, kind="stable")
    starts = np.searchsorted(gi[order], np.arange(g))
    regw = np.concatenate([np.tile(L * np.minimum(m - 1.0, 1.0), 2), np.full(2 * g * g, L), np.full(g, 2.0 * lam_b)])

    def split(x):
        return x[:g], x[g:2 * g], x[2 * g:2 * g + g * g].reshape(g, g), x[2 * g + g * g:-g].reshape(g, g), x[-g:]

    def logits(sW, sH, MW, MH, bx, dsW=None, dsH=None, dMW=None, dMH=None, db=None):
        """T[c, a] = v_j - v_k, j in group c, k in group a (linear in (s, M, b); with d*: its derivative)."""
        s, M, b = (sW * sH / wp, MW @ MH, bx / sm) if dsW is None else \
            ((dsW * sH + sW * dsH) / wp, dMW @ MH + MW @ dMH, db / sm)
        B = M * rr - np.diag(s / m)
        T = (sig[:, None] * B - sig * np.diag(B) - sig * s) / q + b[:, None] - b[None, :]
        return T + C if dsW is None else T

    def adjoint(G, sW, sH, MW, MH, with_b=True):
        """Gradient in the factors of a function with gradient G in T (G[c, a] = d/dT[c, a])."""
        off = G - np.diag(np.diag(G))
        gs = -sig * (np.diag(G) + off.sum(axis=0) * (1.0 - 1.0 / m)) / q / wp
        gM = sig[:, None] * off / q * rr
        gM[np.diag_indices(g)] = -sig * off.sum(axis=0) / q / m
        gb = (off.sum(axis=1) - off.sum(axis=0)) / sm if with_b else np.zeros(g)
        return np.concatenate([gs * sH, gs * sW, (gM @ MH.T).ravel(), (MW.T @ gM).ravel(), gb])

    def fg(x):
        ce, Pi, _ = _ce_differences(logits(*split(x)) + logcnt)
        return wgt @ ce + 0.5 * x @ (regw * x), adjoint(Pi * wgt, *split(x)[:4]) + regw * x

    def hess(x):
        """v -> Hessian of fg at x times v (the softmax at x computed once)."""
        _, Pi, _ = _ce_differences(logits(*split(x)) + logcnt)
        sW, sH, MW, MH, bx = split(x)
        Pw = Pi * wgt

        def hv(v):
            dsW, dsH, dMW, dMH, db = split(v)
            dT = logits(sW, sH, MW, MH, bx, dsW, dsH, dMW, dMH, db)
            H = Pw * (dT - (Pi * dT).sum(axis=0))    # (diag(p) - p p^T) per column, label entry fixed
            return adjoint(H, sW, sH, MW, MH) + adjoint(Pw, dsW, dsH, dMW, dMH, with_b=False) + regw * v
        return hv

    def start(X, b, tau, floor):
        M = np.add.reduceat(np.add.reduceat(X[np.ix_(order, order)], starts, axis=0), starts, axis=1) * rr
        s = (np.bincount(gi, weights=np.diag(X), minlength=g) - np.diag(M)) / wp
        U, sig, Vt = np.linalg.svd(M)
        floor *= max(max(sig.max(), np.abs(s).max()) - tau, 1e-3)
        sv, ss = np.sqrt(np.maximum(sig - tau, floor)), np.sqrt(wp * np.maximum(np.abs(s) - tau, floor))
        return np.concatenate([np.where(s < 0, -ss, ss), ss, (U * sv).ravel(), (sv[:, None] * Vt).ravel(),
                               np.bincount(gi, weights=b, minlength=g) / sm])

    def point(x):
        sW, sH, MW, MH, bx = split(x)
        s = sW * sH / wp
        X = ((MW @ MH) * rr - np.diag(s / m))[gi][:, gi]
        X[np.diag_indices_from(X)] += s[gi]
        return X, (bx / sm)[gi]
    return fg, hess, start, point


def _newton_polish(fg, hess, x, max_iter=40):
    """Second-order finish: Newton-CG (exact Hessian-vector products) on the factored form. At an
    optimum with strict complementarity this form is locally strongly convex up to rotations of the
    factors, so Newton converges fast where first-order methods crawl (small lam sqrt(N): curvature
    ~ the CE ~ 1e-8). Tests are relative to the current f; at rounding level a step must shrink the
    gradient (the certificate sees gradient errors the objective no longer resolves), and Newton
    stops once it shrinks it less than twofold there (rounding noise, not progress)."""
    f, g = fg(x)
    for _ in range(max_iter):
        gg = g @ g
        if np.sqrt(gg) * max(np.sqrt(x @ x), 1.0) <= 1e-15 * f:
            break
        hv = hess(x)
        d, r = np.zeros_like(g), -g                  # truncated CG on H d = -g, stopped at negative curvature
        p, rr = r.copy(), gg
        for _ in range(200):
            Hp = hv(p)
            pHp = p @ Hp
            if pHp <= 0:
                d = d if d.any() else -g
                break
            a = rr / pHp
            d, r = d + a * p, r - a * Hp
            rn = r @ r
            if rn <= 1e-6 * gg:
                break
            p, rr = r + (rn / rr) * p, rn
        step = 1.0
        for _ in range(30):
            fn, gn = fg(x + step * d)
            if (fn <= f + 1e-4 * step * (g @ d) and fn < f * (1 - 1e-14)) or (fn <= f * (1 + 1e-14) and gn @ gn < gg):
                break
            step *= 0.5
        else:
            break
        x, f, g, stalled = x + step * d, fn, gn, fn >= f * (1 - 1e-14) and gn @ gn > 0.25 * gg
        if stalled:
            break
    return x


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
    import cvxpy as cp  # imported here: ~1 s to import, and only this function needs it
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
    """Solve the convex program: L-BFGS, FISTA and a Newton polish; general (no layout assumed).

    1. Warm start: L-BFGS on the Burer-Monteiro form X = W H, ||X||_* = min (|W|^2 + |H|^2)/2,
       r = K (no rank assumption), started from one proximal-gradient step at X = 0 (or Z0), in the
       coordinates of the matrices invariant under permuting classes of one size
       (_class_coordinates: exact, and O(g^3) per step for g distinct sizes instead of O(K^3)),
       up to bm_iter iterations; it stops once its point is certified (with many distinct sizes its
       last digits take hundreds of iterations, which Newton-CG, ill-conditioned there, does not save).
    2. Certify and finish with FISTA on X (singular-value soft-thresholding, joint b step,
       adaptive step with backtracking, gradient restart), one step at least. Stops when the certified
       accuracy (ufm_certificate: relative duality gap, a bound on the relative suboptimality of the
       objective) is <= tol; scale-free. Soft-thresholding makes collapsed columns coincide
       exactly near thresholds. At the first check that fails, a Newton-CG polish of the factored
       form (_newton_polish) jumps to the optimum (small lam sqrt(N), large lam_b), then FISTA goes on.
    Returns dict(Z, b, objective, status, accuracy, solve_time, solver, iterations, bm_iterations,
    residual): status 'optimal' when accuracy <= tol, else 'inaccurate'; residual is the last
    relative proximal step |(Z, b)_new - (Z, b)_y| / |(Z, b)_new| (nan for the L-BFGS point).
    """
    n = _check_ufm_args(n, lam, lam_b)
    t0 = time.perf_counter()
    K, N = n.size, n.sum()
    rho = n / N
    q = np.sqrt(rho)
    L = float(lam) * np.sqrt(N)                 # nuclear-norm weight in scaled variables
    with _blas_threads(blas_threads):
        fg, hess, start, point = _class_coordinates(n, L, lam_b)
        best = [np.inf, None, None, np.inf, np.nan, 0]   # certified accuracy, X, b, F, residual, iteration

        def certify(X, b, F=None, res=np.nan, it=0):
            """Certified accuracy of (X, b) (objective F, computed if None); kept if best or certified."""
            if F is None:
                F = _ufm_smooth(X, b, rho, q, lam_b)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())
            acc = _ufm_accuracy(F, _ufm_dual_point(X, b, rho, q, L, lam_b)[0])
            if acc < best[0] or acc <= tol or best[1] is None:
                best[:] = [acc, X, b, F, res, it]
            return acc

        def stop(it, x, f, g):      # L-BFGS: certified? (every 50th iteration once max |g| <= tol f)
            return it % 50 == 0 and np.max(np.abs(g)) <= tol * f and certify(*point(x)) <= tol

        if Z0 is not None:
            x = start(np.asarray(Z0, dtype=float) * q, np.zeros(K) if b0 is None else np.ravel(b0), 0.0, 0.0)
        else:
            b = np.log(rho) - np.log(rho).mean()          # best b for Z = 0 when lam_b -> 0
            A = -_ufm_smooth(np.zeros((K, K)), b, rho, q, lam_b)[1]
            x = start(A, b, L, 1e-3)       # prox step from X = 0; directions below the threshold get a small weight
        bm_its, it = 0, 0
        if warm_start:
            x, _, bm_its = _lbfgs(fg, x, bm_iter, gtol=1e-11, stop=stop)
        X, b = point(x)
        # FISTA in the metric c * diag(1 on X, 1 + 2 lam_b on b); c = 1 is a global Lipschitz
        # bound (softmax Hessian <= 1/2), backtracking finds the local one.
        Lb = 1.0 + 2.0 * lam_b
        F = np.inf
        Xy, by = X, b
        fy, gX, gb = _ufm_smooth(Xy, by, rho, q, lam_b)
        tk, c, res, polished = 1.0, 0.5, np.inf, False
        while it < max_iter and (it == 0 or best[0] > tol):    # one prox step at least: exact collapse
            it += 1
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
            # the stopping rule is the certificate, checked when the step is small, at the first, last and
            # every 25th iteration; the best iterate is kept (at the rounding floor iterates wander)
            if res < 1e-6 or it % 25 == 0 or it in (1, max_iter):
                if certify(X, b, F, res, it) > tol and best[0] > tol and not polished:   # second-order finish
                    polished = True
                    X, b = point(_newton_polish(fg, hess, start(X, b, 0.0, 1e-6)))   # floor: lets rank grow
                    Xy, by, tk = X, b, 1.0
                    fy, gX, gb = _ufm_smooth(X, b, rho, q, lam_b)
                    F = np.inf                     # no restart test against the point before the jump
                    certify(X, b, None, res, it)
        acc, X, b, F, res, _ = best
    return dict(Z=X / q, b=b, objective=float(F), status="optimal" if acc <= tol else "inaccurate",
                accuracy=float(acc), solve_time=time.perf_counter() - t0, solver="fast", iterations=it,
                bm_iterations=bm_its, residual=float(res))


def solve_ufm(n, lam, lam_b, solver="auto", tol=1e-9):
    """The convex program by `solver`: 'cvxpy', 'fast', or 'auto' (the fast solver; when its answer
    is not certified to `tol` and K <= AUTO_CVXPY_MAX_K, cvxpy too, keeping the answer with the
    better certified accuracy). Every answer carries `accuracy` (ufm_certificate) and its status
    rests on it: 'optimal' when accuracy <= tol, otherwise 'inaccurate' (reported, not hidden)."""
    if solver not in ("auto", "cvxpy", "fast"):
        raise UserError(f"solver {solver}: allowed are auto, cvxpy, fast")
    fast = solve_ufm_fast(n, lam, lam_b, tol=tol) if solver != "cvxpy" else None
    if solver == "fast" or (fast is not None and (fast["status"] == "optimal" or len(n) > AUTO_CVXPY_MAX_K)):
        return fast
    try:
        sol = solve_ufm_cvxpy(n, lam, lam_b, tol=tol)
    except RuntimeError as e:  # the interior-point solver occasionally fails numerically
        if solver == "cvxpy":
            raise UserError(f"solver cvxpy failed ({e}); use the fast solver") from None
        print(f"note: cvxpy failed ({e}); keeping the fast solver's answer", file=sys.stderr)
        return fast
    if fast is not None and (fast["accuracy"], fast["objective"]) < (sol["accuracy"], sol["objective"]):
        return fast
    return sol

