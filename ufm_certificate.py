"""The convex program of the unconstrained feature model (theory.md section 2) without a solver: its
objective computed without cancellation, an accuracy certificate (relative duality gap) for any answer, its
dual point built once for the plain and the re-balanced program (section 9), and certified bounds on a
cluster's spread. numpy and scipy only."""
import numpy as np
import scipy.linalg
import scipy.special

from utils import UserError

# Z is K x K with classes as columns. Internally the program is written in the scaled variable
# X = Z diag(sqrt(rho)), rho = n / N, in which the same objective reads
#     sum_k rho_k CE(x_k / sqrt(rho_k) + b, k) + (lam sqrt(N)) ||X||_* + lam_b ||b||^2,
# so everything is O(1) and (lam, N) enter only through lam * sqrt(N).


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


def _scaled_objective(X, b, rho, q, L, lam_b):
    """The objective in the scaled variables: the smooth part plus L ||X||_* (L = lam sqrt(N))."""
    return _ufm_smooth(X, b, rho, q, lam_b)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())


def _entropy_columns(Poff, r):
    """Entropy of each column distribution given by its off-diagonal entries Poff (zero diagonal)
    and r = 1 - (diagonal entry), accurately for r -> 0 (and 0 log 0 = 0 at r = 1)."""
    r = np.minimum(r, 1.0)
    return -scipy.special.xlogy(Poff, Poff).sum(axis=0) - scipy.special.xlog1py(1.0 - r, -r)


def _spectral_norm(A):
    """Largest singular value of A from the top eigenvalue of A^T A (LAPACK, deterministic),
    rounded up by a relative 1e-13 to cover its rounding error."""
    if not np.any(A):
        return 0.0
    top = scipy.linalg.eigh(A.T @ A, eigvals_only=True, check_finite=False, driver="evd")[-1]
    return float(np.sqrt(max(top, 0.0))) * (1.0 + 1e-13)


def _logits(X, b, q, vec):
    """V[j, k] = s_j x_jk / q_k + b_j + o_j - mu_k [j = k]."""
    _, s, o, mu = vec
    V = s[:, None] * (X / q) + (b + o)[:, None]
    V[np.diag_indices_from(V)] -= mu
    return V


def _dual_value(Poff, r, a, vec, lam_b):
    """sum_k a_k (H(p_k) + (p_k - e_k) . c_k) - |(P - I) a|^2 / (4 lam_b) (lam_b = 0: the constraint)."""
    _, _, o, mu = vec
    lin = (Poff * (o[:, None] - o[None, :] + mu[None, :])).sum(axis=0)      # (p_k - e_k) . (o - mu_k e_k)
    dual = float(a @ (_entropy_columns(Poff, r) + lin))
    if lam_b > 0:
        c = Poff @ a - r * a
        dual -= float(c @ c) / (4.0 * lam_b)
    return dual


# _polar_corrected's active pairs: -u' G v within POLAR_WINDOW of L (1e-2 took pairs that collapse, where G stays
# 0.3 % below L, and held a K = 300 path point's certificate at 7e-7 for 200 L-BFGS steps; 1e-4 cost more steps)
POLAR_WINDOW = 1e-3


class _Blocks:
    """How the certificate decomposes a K x K matrix: as (s, M) in the class coordinates of cc (ufm_program's
    _ClassCoordinates: s on the within-group projectors, each singular value m_a - 1 times, M the g x g block),
    so that its decompositions are g x g where sizes repeat; or as the matrix itself (cc None: s empty, M = A).
    Where A is not exactly in the commutant the bounds below add what the projection leaves out."""

    def __init__(self, cc=None):
        self.cc = cc
        self.multi = np.zeros(0, bool) if cc is None else cc.m >= 2

    def parts(self, A):
        return (np.zeros(0), A) if self.cc is None else self.cc.parts(A)

    def expand(self, s, M):
        return M if self.cc is None else self.cc.expand(s, M)

    def leftover(self, A, s, M):
        """Frobenius norm of A minus its projection (s, M): 0 for the matrix itself."""
        return 0.0 if self.cc is None else float(np.linalg.norm(A - self.cc.expand(s, M)))

    def spectral_norm(self, A):
        """An upper bound on ||A||_2: the parts' largest singular value (rounded up by 1e-13) plus the leftover."""
        s, M = self.parts(A)
        top = max(np.abs(s[self.multi]).max(initial=0.0) * (1.0 + 1e-13), _spectral_norm(M))
        return top + self.leftover(A, s, M)

    def nuclear_norm(self, A):
        """An upper bound on ||A||_* (the leftover counted sqrt(K) times)."""
        s, M = self.parts(A)
        nuc = float(np.linalg.svd(M, compute_uv=False).sum())
        if self.cc is not None:
            nuc += float((self.cc.m - 1.0) @ np.abs(s)) + np.sqrt(A.shape[0]) * self.leftover(A, s, M)
        return nuc


def _shrunk(G, L, s, aq, blocks):
    """The dual candidate of G's singular values above L soft-thresholded to L, negative entries clipped (None
    when none is above L or a column then sums to more than 1): it loses what the excess costs, where scaling
    all of P to feasibility loses the excess times the whole dual."""
    gs, GM = blocks.parts(G)
    ev, Vv = np.linalg.eigh(GM.T @ GM)
    above, big = ev > L * L, blocks.multi & (np.abs(gs) > L)
    if not above.any() and not big.any():
        return None
    sv, Vv = np.sqrt(ev[above]), Vv[:, above]
    G2 = blocks.expand(np.where(big, np.sign(gs) * L, gs), GM - ((GM @ Vv) * (1.0 - L / sv)) @ Vv.T)
    P2 = np.maximum(G2 / s[:, None] / aq, 0.0)
    np.fill_diagonal(P2, 0.0)
    return (P2, P2.sum(axis=0)) if np.all(P2.sum(axis=0) <= 1.0) else None


def _polar_corrected(X, G, L, blocks):
    """G with its block on X's active singular pairs (-u' G v within POLAR_WINDOW of L) replaced by L times the
    block's polar factor (a within-group pair's value set to -L sign(s_a)). At the optimum that block is -L I;
    an L-BFGS point's errors there (invisible to it where singular values are small) make the plain dual point
    first-order wrong, ~1e3 times the true suboptimality, and the replacement moves the dual value at second
    order only (docs/rebalance.md). None: no active pair."""
    xs, XM = blocks.parts(X)
    gs, GM = blocks.parts(G)
    U, sx, Vt = np.linalg.svd(XM)
    top = max(sx.max(initial=0.0), np.abs(xs[blocks.multi]).max(initial=0.0))
    act = (sx > 1e-12 * top) & (-np.sum(U * (GM @ Vt.T), axis=0) > (1.0 - POLAR_WINDOW) * L)   # -u_i' G v_i
    s_act = blocks.multi & (np.abs(xs) > 1e-12 * top) & (-np.sign(xs) * gs > (1.0 - POLAR_WINDOW) * L)
    if not act.any() and not s_act.any():
        return None
    Ur, Vr = U[:, act], Vt[act].T
    B = Ur.T @ GM @ Vr
    return blocks.expand(np.where(s_act, -L * np.sign(xs), gs), GM + Ur @ (L * _polar_factor(B) - B) @ Vr.T)


def _polar_factor(B):
    """The polar factor of B (B's SVD u s vt: u vt) from eigh of B'B, ~2x cheaper than the SVD; for an active
    block, which is near -L I, its small singular values are not small."""
    ev, V = scipy.linalg.eigh(B.T @ B, check_finite=False, driver="evd")
    return (B @ V / np.sqrt(np.maximum(ev, np.finfo(float).tiny))) @ V.T


def gradient_matrix(Poff, r, s, aq):
    """The CE's gradient in X from the softmax (off-diagonal Poff, r = 1 - p_true per column): the matrix
    diag(s) (P - I) diag(aq) (s: the logit scales, aq = a / q)."""
    G = Poff * s[:, None] * aq
    G[np.diag_indices_from(G)] = -r * s * aq
    return G


def dual_point(X, b, a, q, L, lam_b, vec, blocks=None):
    """A feasible dual point of the (re-balanced) program from (X, b) and its value: the dual
    max_P sum_k a_k (H(p_k) + (p_k - e_k) . c_k) - |(P - I) a|^2 / (4 lam_b)
    s.t. ||diag(s) (P - I) diag(a / q)||_2 <= L (theory.md sections 2 and 9; vec = (w, s, o, mu), a = w n / N;
    for lam_b = 0 the second term is the constraint (P - I) a = 0, restored exactly first: column k moves by
    d_k (a / sum(a) - e_k), d >= 0). Candidates: the softmax at (X, b), and its G shrunk (_shrunk),
    polar-corrected first where X has active pairs (_polar_corrected); each made feasible, the best kept;
    decompositions as blocks says (_Blocks; None: K x K). Returns (value, Poff, r)."""
    blocks = blocks or _Blocks()
    s = vec[1]
    _, Poff, r = _ce_columns(_logits(X, b, q, vec))
    aq = a / q
    G = gradient_matrix(Poff, r, s, aq)
    Gp = _polar_corrected(X, G, L, blocks)
    if Gp is None:
        cands = [(Poff, r), _shrunk(G, L, s, aq, blocks)]
    else:
        Pp = np.maximum(Gp / s[:, None] / aq, 0.0)
        np.fill_diagonal(Pp, 0.0)
        rp = Pp.sum(axis=0)
        cands = [(Poff, r), _shrunk(gradient_matrix(Pp, rp, s, aq), L, s, aq, blocks) or (Pp, rp)]
    best = (-np.inf, Poff, r)
    for Pc, rc in [c for c in cands if c is not None]:
        if lam_b == 0:              # restore (P - I) a = 0: column k moves by d_k (a / sum(a) - e_k), d >= 0
            d = (Pc @ a - rc * a) / a
            d = d - min(d.min(), 0.0)
            u = a / a.sum()
            if np.any(rc + d * (1.0 - u) > 1.0):
                continue
            Pc = Pc + u[:, None] * d[None, :]
            np.fill_diagonal(Pc, 0.0)
            rc = rc + d * (1.0 - u)
        sn = blocks.spectral_norm(gradient_matrix(Pc, rc, s, aq))
        t = 1.0 if sn <= L else L / sn
        val = _dual_value(t * Pc, t * rc, a, vec, lam_b)
        if val > best[0]:
            best = (val, t * Pc, t * rc)
    return best


def _ufm_dual_point(X, b, rho, q, L, lam_b, blocks=None):
    """dual_point of the plain program (weights and scales 1, no offsets or margins): the dual (theory.md
    section 2, "Accuracy certificate") max_P sum_k rho_k H(p_k) - |(P - I) rho|^2 / (4 lam_b) subject to
    ||(P - I) diag(q)||_2 <= L. Returns (D, Poff, r) of that point (off-diagonal entries, 1 - diagonal)."""
    K = rho.size
    return dual_point(X, b, rho, q, L, lam_b, (np.ones(K), np.ones(K), np.zeros(K), np.zeros(K)), blocks)


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
    primal = _scaled_objective(X, b, rho, q, L, lam_b)
    dual, Poff, r = _ufm_dual_point(X, b, rho, q, L, lam_b)
    return primal, dual, Poff, r


def ufm_objective(Z, b, n, lam, lam_b):
    """Objective of the convex program at any (Z, b) (numpy, float64)."""
    n = np.asarray(n, dtype=float).ravel()
    Z = np.asarray(Z, dtype=float)
    b = np.asarray(b, dtype=float).ravel()
    N = n.sum()
    rho, q = n / N, np.sqrt(n / N)
    f = _ufm_smooth(Z * q, b, rho, q, lam_b)[0]
    return f + lam * float(np.linalg.svd(Z * np.sqrt(n), compute_uv=False).sum())


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
    return ufm_clusters_spread_bounds(Z, b, n, lam, lam_b, [classes])[0]


def ufm_clusters_spread_bounds(Z, b, n, lam, lam_b, clusters):
    """ufm_spread_bounds of each cluster, the dual point built once ((0, 0) for a single class)."""
    n = _check_ufm_args(n, lam, lam_b)
    clusters = [list(c) for c in clusters]
    if any(len(c) > 1 and np.ptp(n[c]) > 0 for c in clusters):
        raise ValueError("ufm_spread_bounds: the classes must have one size")
    pd = _primal_and_dual(Z, b, n, lam, lam_b) if any(len(c) > 1 for c in clusters) else None
    return [_spread_interval(*pd, n / n.sum(), c) if len(c) > 1 else (0.0, 0.0) for c in clusters]


def _spread_interval(primal, dual, Poff, r, rho, classes):
    """ufm_spread_bounds from the dual point (its value dual, Poff, r) and the primal objective."""
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
