"""The solvers of the UFM's convex program (theory.md section 2): cvxpy with Clarabel or SCS, and a fast
solver (L-BFGS in the coordinates of the class-size groups, FISTA and a Newton polish) whose status rests on
ufm_certificate's accuracy certificate. numpy and scipy only (cvxpy imported by its solver)."""
import contextlib
import sys
import time

import numpy as np
import scipy.linalg

from ufm_certificate import (
    _Blocks,
    _ce_differences,
    _check_ufm_args,
    _ufm_accuracy,
    _ufm_dual_point,
    _ufm_smooth,
    ufm_certificate,
)
from utils import UserError

# solve_ufm(solver='auto'): cvxpy up to this K, the fast solver above. Clarabel's cost grows
# steeply (K = 20: ~2 s, K = 40: ~20 s and 0.7 GB; K = 100 would need ~25 GB).
AUTO_CVXPY_MAX_K = 20
# Clarabel's default tolerances (1e-8) leave ~1e-4 relative error in Z near thresholds;
# these make it agree with the fast solver to ~1e-9 (K = 10: ~0.5 s instead of ~0.15 s).
CLARABEL_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10)


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


def _block_svt(blocks, A, tau):
    """Singular-value soft-thresholding of A's projection by tau (ufm_certificate._Blocks): (the K x K answer,
    its nuclear norm); _svt itself for the K x K layout."""
    if blocks.cc is None:
        return _svt(A, tau)
    s, M = blocks.parts(A)
    s = np.where(blocks.multi, np.sign(s) * np.maximum(np.abs(s) - tau, 0.0), 0.0)
    M, nuc = _svt(M, tau)
    return blocks.expand(s, M), nuc + float((blocks.cc.m - 1.0) @ np.abs(s))


def _lbfgs(fg, x, max_iter, gtol, m=10, stop=None):
    """L-BFGS (two-loop recursion, Armijo backtracking; where f no longer resolves the decrease a step
    that shrinks the gradient is taken), stopped early when stop(it, x, f, g). Returns (x, f, iterations).
    m = 10 pairs: the recursion reads each pair twice a step, memory-bound, and at m = 30 it was half a step's
    time at K = 1000 (7e5 unknowns). Measured on benchmark.py's K = 1000 path (one thread, CPU s): m = 30 cold
    17.3 s (140 steps), path 113 s (780); m = 10 14.2 s (160), 86.7 s (870); m = 5 12.9 s (180), 79.1 s (980).
    On one BLAS thread: its daxpy is scipy's OpenBLAS, the dots and fg numpy's, and two multi-threaded
    OpenBLAS libraries spin against each other (0.4 s a step at 2e4 unknowns on 2 cores, measured; numpy's
    own axpy would cost 2.7x daxpy's time)."""
    with _blas_threads(1):
        return _lbfgs_steps(fg, x, max_iter, gtol, m, stop)


def _lbfgs_steps(fg, x, max_iter, gtol, m, stop):
    """_lbfgs's iterations."""
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


class _ClassCoordinates:
    """The program in the coordinates of the matrices that commute with every permutation of classes
    of one size (see _class_coordinates); x holds orthonormal coordinates (sW, sH, MW, MH, b)."""

    def __init__(self, n, L, lam_b, loss=None):
        N = n.sum()
        keys = n if loss is None else np.column_stack([n, *loss])
        gi = np.unique(keys, axis=None if loss is None else 0, return_inverse=True)[1].ravel()
        m = np.bincount(gi).astype(float)
        g = m.size
        self.gi, self.m, self.g = gi, m, g
        self.rho = np.bincount(gi, weights=n) / m / N
        # per group: weight, scale, offset, margin of a re-balancing loss (all 1, 1, 0, 0 for cross-entropy)
        w, self.sig, o, mu = [np.bincount(gi, weights=v) / m for v in (loss or (n ** 0, n ** 0, 0 * n, 0 * n))]
        self.wp, self.sm = np.maximum(m - 1.0, 1.0), np.sqrt(m)     # x holds s wp and b sqrt(m)
        self.q, self.rr, self.wgt = np.sqrt(self.rho), 1.0 / np.sqrt(np.outer(m, m)), m * self.rho * w
        self.C = o[:, None] - o[None, :] + mu[None, :]
        with np.errstate(divide="ignore"):              # log of the count of entries j != k in group c, k in a
            self.logcnt = np.log(m[:, None] - np.eye(g))
        self.order = np.argsort(gi, kind="stable")
        self.starts = np.searchsorted(gi[self.order], np.arange(g))
        self.regw = np.concatenate([np.tile(L * np.minimum(m - 1.0, 1.0), 2), np.full(2 * g * g, L),
                                    np.full(g, 2.0 * lam_b)])

    def split(self, x):
        """(sW, sH, MW, MH, b) of a coordinate vector x (views)."""
        g = self.g
        return x[:g], x[g:2 * g], x[2 * g:2 * g + g * g].reshape(g, g), x[2 * g + g * g:-g].reshape(g, g), x[-g:]

    def logits(self, sW, sH, MW, MH, bx, dsW=None, dsH=None, dMW=None, dMH=None, db=None):
        """T[c, a] = v_j - v_k, j in group c, k in group a (linear in (s, M, b); with d*: its derivative)."""
        if dsW is None:
            s, M, b = sW * sH / self.wp, MW @ MH, bx / self.sm
        else:
            s, M, b = (dsW * sH + sW * dsH) / self.wp, dMW @ MH + MW @ dMH, db / self.sm
        B = M * self.rr - np.diag(s / self.m)
        sig = self.sig
        T = (sig[:, None] * B - sig * np.diag(B) - sig * s) / self.q + b[:, None] - b[None, :]
        return T + self.C if dsW is None else T

    def adjoint(self, G, sW, sH, MW, MH, with_b=True):
        """Gradient in the factors of a function with gradient G in T (G[c, a] = d/dT[c, a])."""
        m, q, sig = self.m, self.q, self.sig
        off = G - np.diag(np.diag(G))
        gs = -sig * (np.diag(G) + off.sum(axis=0) * (1.0 - 1.0 / m)) / q / self.wp
        gM = sig[:, None] * off / q * self.rr
        gM[np.diag_indices(self.g)] = -sig * off.sum(axis=0) / q / m
        gb = (off.sum(axis=1) - off.sum(axis=0)) / self.sm if with_b else np.zeros(self.g)
        return np.concatenate([gs * sH, gs * sW, (gM @ MH.T).ravel(), (MW.T @ gM).ravel(), gb])

    def fg(self, x):
        """The factored objective at x and its gradient."""
        ce, Pi, _ = _ce_differences(self.logits(*self.split(x)) + self.logcnt)
        grad = self.adjoint(Pi * self.wgt, *self.split(x)[:4]) + self.regw * x
        return self.wgt @ ce + 0.5 * x @ (self.regw * x), grad

    def hess(self, x):
        """v -> Hessian of fg at x times v (the softmax at x computed once)."""
        _, Pi, _ = _ce_differences(self.logits(*self.split(x)) + self.logcnt)
        sW, sH, MW, MH, bx = self.split(x)
        Pw = Pi * self.wgt

        def hv(v):
            dsW, dsH, dMW, dMH, db = self.split(v)
            dT = self.logits(sW, sH, MW, MH, bx, dsW, dsH, dMW, dMH, db)
            H = Pw * (dT - (Pi * dT).sum(axis=0))    # (diag(p) - p p^T) per column, label entry fixed
            return self.adjoint(H, sW, sH, MW, MH) + self.adjoint(Pw, dsW, dsH, dMW, dMH, with_b=False) + self.regw * v
        return hv

    def start(self, X, b, tau, floor):
        """Coordinates of balanced factors of X (projected) soft-thresholded by tau, singular values
        floored at floor * (largest - tau)."""
        gi, g, wp = self.gi, self.g, self.wp
        s, M = self.parts(X)
        U, sig, Vt = np.linalg.svd(M)
        floor *= max(max(sig.max(), np.abs(s).max()) - tau, 1e-3)
        sv, ss = np.sqrt(np.maximum(sig - tau, floor)), np.sqrt(wp * np.maximum(np.abs(s) - tau, floor))
        return np.concatenate([np.where(s < 0, -ss, ss), ss, (U * sv).ravel(), (sv[:, None] * Vt).ravel(),
                               np.bincount(gi, weights=b, minlength=g) / self.sm])

    def scaling(self, x, delta):
        """A diagonal change of variables x = p * y for L-BFGS at balanced factors x (as start gives them: the
        factors' columns are the singular components): each factor coordinate divided by sqrt(its component's
        size + delta times the largest) (M's sigma_i: its partner's squared norm; a group's |s_a|), b by
        sqrt(the largest). The factored form's curvature along a factor is that size times the CE's, so
        components far apart in size converge at one rate (scaled gradient descent, Tong, Ma & Chi 2021);
        delta keeps the vanishing components from dominating."""
        _, sH, _, MH, _ = self.split(x)
        sig, s = (MH ** 2).sum(axis=1), sH ** 2 / self.wp   # sigma_i and |s_a| at balanced factors
        top = max(sig.max(), s.max())
        ps, pm = 1.0 / np.sqrt(s + delta * top), 1.0 / np.sqrt(sig + delta * top)
        return np.concatenate([ps, ps, np.tile(pm, self.g), np.repeat(pm, self.g), np.full(self.g, 1.0 / np.sqrt(top))])

    def point(self, x):
        """The (X, b) of the full program at coordinates x."""
        sW, sH, MW, MH, bx = self.split(x)
        return self.expand(sW * sH / self.wp, MW @ MH), (bx / self.sm)[self.gi]

    def parts(self, A):
        """(s, M) of the K x K matrix A projected on the commutant: its values s on the within-group projectors
        Pi_a (singular values |s_a|, m_a - 1 times each) and its g x g block M = E^T A E on the orthonormal
        group indicators."""
        order, starts = self.order, self.starts
        M = np.add.reduceat(np.add.reduceat(A[np.ix_(order, order)], starts, axis=0), starts, axis=1) * self.rr
        return (np.bincount(self.gi, weights=np.diag(A), minlength=self.g) - np.diag(M)) / self.wp, M

    def expand(self, s, M):
        """The K x K matrix sum_a s_a Pi_a + E M E^T."""
        A = (M * self.rr - np.diag(s / self.m))[self.gi][:, self.gi]
        A[np.diag_indices_from(A)] += s[self.gi]
        return A


def _class_coordinates(n, L, lam_b, loss=None):
    """The program in the coordinates of the matrices that commute with every permutation of classes
    of one size. The program is invariant under those permutations, so by convexity an optimum lies
    among them: A = sum_a s_a Pi_a + E M E^T (Pi_a: projector on the zero-sum vectors of size group
    a; E: K x g orthonormal group indicators) has the singular values |s_a| (m_a - 1 times) and
    those of M, products act as (s s', M M'), and the CE of a column depends on its group only. So
    the factored form (s = sW sH, M = MW MH, |s| <= (sW^2 + sH^2)/2, ||M||_* <= (|MW|^2 + |MH|^2)/2)
    costs O(g^3) per evaluation with g distinct sizes (cluster layouts: g = 2 at any K), O(K^3)
    without repeated sizes. Returns (fg, hess, start, point): the factored objective and gradient,
    hess(x): v -> its Hessian times v, start(X, b, tau, floor) the coordinates of balanced factors of X
    (projected) soft-thresholded by tau (singular values floored at floor * (largest - tau)),
    point(x) -> (X, b). loss: per-class (weight, scale, offset, margin) of rebalance_program (None: all
    1, 1, 0, 0)."""
    cc = _ClassCoordinates(n, L, lam_b, loss)
    return cc.fg, cc.hess, cc.start, cc.point


def _truncated_cg(hv, g, gg):
    """Truncated conjugate gradient on H d = -g (hv: v -> H v; gg = g @ g), stopped at negative curvature
    (then -g if no progress was made) or once the residual is 1e-3 of |g|, at most 200 steps."""
    d, r = np.zeros_like(g), -g
    p, rr = r.copy(), gg
    for _ in range(200):
        Hp = hv(p)
        pHp = p @ Hp
        if pHp <= 0:
            return d if d.any() else -g
        a = rr / pHp
        d, r = d + a * p, r - a * Hp
        rn = r @ r
        if rn <= 1e-6 * gg:
            break
        p, rr = r + (rn / rr) * p, rn
    return d


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
        d = _truncated_cg(hess(x), g, gg)
        step = 1.0
        for _ in range(30):
            fn, gn = fg(x + step * d)
            if (fn <= f + 1e-4 * step * (g @ d) and fn < f * (1 - 1e-14)) or (fn <= f * (1 + 1e-14) and gn @ gn < gg):
                break
            step *= 0.5
        else:
            break
        stalled = fn >= f * (1 - 1e-14) and gn @ gn > 0.25 * gg
        x, f, g = x + step * d, fn, gn
        if stalled:
            break
    return x


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


class _ScaledProgram:
    """The program's numbers in the scaled variables X = Z diag(q), q = sqrt(rho), rho = n / N: the
    nuclear-norm weight L = lam sqrt(N), FISTA's metric on b, 1 + 2 lam_b, and the class coordinates cc, in
    which the certificate and the thresholding decompose g x g matrices (ufm_certificate._Blocks)."""

    def __init__(self, n, lam, lam_b):
        N = n.sum()
        self.rho = n / N
        self.q = np.sqrt(self.rho)
        self.L = float(lam) * np.sqrt(N)
        self.cc = _ClassCoordinates(n, self.L, lam_b)
        self.blocks = _Blocks(self.cc)
        self.lam_b = lam_b
        self.Lb = 1.0 + 2.0 * lam_b

    def smooth(self, X, b):
        """_ufm_smooth at (X, b): (value, gradient in X, gradient in b)."""
        return _ufm_smooth(X, b, self.rho, self.q, self.lam_b)

    def relative_step(self, Xn, bn, dX, db):
        """|(dX, db)| / |(Xn, bn)| measured on (Z, b): scale-free (0 at the answer 0)."""
        size = np.sqrt(np.sum((Xn / self.q) ** 2) + bn @ bn)
        return np.sqrt(np.sum((dX / self.q) ** 2) + db @ db) / size if size > 0 else 0.0


class _BestIterate:
    """The iterate with the best certified accuracy so far; one certified to tol (or the first) replaces it too."""

    def __init__(self, prog, tol):
        self.prog, self.tol = prog, tol
        self.accuracy, self.X, self.b, self.F, self.residual, self.iteration = np.inf, None, None, np.inf, np.nan, 0

    def certify(self, X, b, F=None, res=np.nan, it=0):
        """Certified accuracy of (X, b) (objective F, computed if None); kept if best or certified."""
        p = self.prog
        if F is None:
            F = p.smooth(X, b)[0] + p.L * p.blocks.nuclear_norm(X)
        acc = _ufm_accuracy(F, _ufm_dual_point(X, b, p.rho, p.q, p.L, p.lam_b, p.blocks)[0])
        if acc < self.accuracy or acc <= self.tol or self.X is None:
            self.accuracy, self.X, self.b, self.F, self.residual, self.iteration = acc, X, b, F, res, it
        return acc


def _first_point(prog, start):
    """The L-BFGS start in class coordinates: one proximal-gradient step from X = 0 with b the best for
    Z = 0 as lam_b -> 0 (directions below the threshold get a small weight)."""
    K = prog.rho.size
    b = np.log(prog.rho) - np.log(prog.rho).mean()
    A = -prog.smooth(np.zeros((K, K)), b)[1]
    return start(A, b, prog.L, 1e-3)


def _prox_step(prog, Xy, by, fy, gX, gb, c):
    """One proximal-gradient step from (Xy, by) (smooth value fy, gradients gX, gb) in the metric
    c * diag(1 on X, Lb on b), c doubled until the quadratic upper bound holds.
    Returns (Xn, bn, fn, gXn, gbn, ||Xn||_*, c)."""
    while True:
        Xn, nucn = _block_svt(prog.blocks, Xy - gX / c, prog.L / c)
        bn = by - gb / (c * prog.Lb)
        fn, gXn, gbn = prog.smooth(Xn, bn)
        dX, db = Xn - Xy, bn - by
        quad = fy + np.sum(gX * dX) + gb @ db + 0.5 * c * (np.sum(dX * dX) + prog.Lb * (db @ db))
        if fn <= quad + 1e-14 * abs(fy):
            return Xn, bn, fn, gXn, gbn, nucn, c
        c *= 2.0


def _fista(prog, best, X, b, polish, max_iter):
    """FISTA on X (singular-value soft-thresholding, joint b step, adaptive step with backtracking,
    gradient restart) from (X, b), one step at least, until best is certified to its tol. The metric is
    c * diag(1 on X, 1 + 2 lam_b on b); c = 1 is a global Lipschitz bound (softmax Hessian <= 1/2),
    backtracking finds the local one. At the first certificate check that fails, polish(X, b) jumps to
    the optimum once, then FISTA goes on. Returns the number of iterations."""
    F, tk, c, polished, it = np.inf, 1.0, 0.5, False, 0
    Xy, by = X, b
    fy, gX, gb = prog.smooth(Xy, by)
    while it < max_iter and (it == 0 or best.accuracy > best.tol):    # one prox step at least: exact collapse
        it += 1
        Xn, bn, fn, gXn, gbn, nucn, c = _prox_step(prog, Xy, by, fy, gX, gb, c)
        Fn = fn + prog.L * nucn
        dX, db = Xn - Xy, bn - by
        res = prog.relative_step(Xn, bn, dX, db)
        if np.sum(dX * (Xn - X)) + prog.Lb * (db @ (bn - b)) > 0 or Fn > F:     # restart
            tk = 1.0
            Xy, by, fy, gX, gb = Xn, bn, fn, gXn, gbn
        else:
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tk * tk))
            beta = (tk - 1.0) / tn
            tk = tn
            Xy, by = Xn + beta * (Xn - X), bn + beta * (bn - b)
            fy, gX, gb = prog.smooth(Xy, by)
        X, b, F = Xn, bn, Fn
        c *= 0.9                                # let the step grow again
        # the stopping rule is the certificate, checked when the step is small, at the first, last and
        # every 25th iteration; the best iterate is kept (at the rounding floor iterates wander)
        if not (res < 1e-6 or it % 25 == 0 or it in (1, max_iter)):
            continue
        if best.certify(X, b, F, res, it) > best.tol and best.accuracy > best.tol and not polished:
            polished = True                     # second-order finish
            X, b = polish(X, b)
            Xy, by, tk = X, b, 1.0
            fy, gX, gb = prog.smooth(X, b)
            F = np.inf                          # no restart test against the point before the jump
            best.certify(X, b, None, res, it)
    return it


def solve_ufm_fast(n, lam, lam_b, tol=1e-9, max_iter=5000, bm_iter=3000, blas_threads=1):
    """Solve the convex program: L-BFGS, FISTA and a Newton polish; general (no layout assumed).

    1. Warm start: L-BFGS on the Burer-Monteiro form X = W H, ||X||_* = min (|W|^2 + |H|^2)/2,
       r = K (no rank assumption), started from one proximal-gradient step at X = 0, in the
       coordinates of the matrices invariant under permuting classes of one size
       (_class_coordinates: exact, and O(g^3) per step for g distinct sizes instead of O(K^3)),
       up to bm_iter iterations; it stops once its point is certified (with many distinct sizes its
       last digits take hundreds of iterations, which Newton-CG, ill-conditioned there, does not save).
    2. Certify and finish with FISTA on X (_fista), one step at least. Stops when the certified
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
    prog = _ScaledProgram(n, lam, lam_b)
    with _blas_threads(blas_threads):
        fg, hess, start, point = prog.cc.fg, prog.cc.hess, prog.cc.start, prog.cc.point
        best = _BestIterate(prog, tol)

        def stop(it, x, f, g):      # L-BFGS: certified? (every 50th iteration once max |g| <= tol f)
            return it % 50 == 0 and np.max(np.abs(g)) <= tol * f and best.certify(*point(x)) <= tol

        def polish(X, b):           # floor: lets the rank grow
            return point(_newton_polish(fg, hess, start(X, b, 0.0, 1e-6)))

        x, _, bm_its = _lbfgs(fg, _first_point(prog, start), bm_iter, gtol=1e-11, stop=stop)
        it = _fista(prog, best, *point(x), polish, max_iter)
    return dict(Z=best.X / prog.q, b=best.b, objective=float(best.F),
                status="optimal" if best.accuracy <= tol else "inaccurate", accuracy=float(best.accuracy),
                solve_time=time.perf_counter() - t0, solver="fast", iterations=it, bm_iterations=bm_its,
                residual=float(best.residual))


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
