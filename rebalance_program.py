"""The re-balanced convex program of the UFM (theory.md section 9): each re-balancing loss as per-class
weight, scale, offset and margin vectors, its objective, accuracy certificate, fast and cvxpy solvers,
and the collapse threshold each loss moves to. numpy and scipy only; ufm_program's internals reused.

    min_{Z, b} (1/N) sum_k w_k n_k CE(s * z_k + b + o - mu_k e_k, k) + lam ||Z D^{1/2}||_* + lam_b ||b||^2

with n the sizes as solved (oversampling multiplies them). In the scaled variable X = Z diag(q),
q = sqrt(n / N), a = w n / N, the CE term is sum_k a_k CE(s * x_k / q_k + b + c_k, k), c_k = o - mu_k e_k."""
import time

import numpy as np
import scipy.optimize

import ufm_certificate
import ufm_program
from ufm_certificate import _Blocks, _ce_columns, _logits, _spectral_norm, _ufm_accuracy, dual_point, gradient_matrix
from ufm_program import _block_svt
from utils import UserError

LOSS_NAMES = ("cross_entropy", "class_balanced", "logit_adjusted", "ldam", "vector_scaling")
LOSS_DEFAULTS = dict(cb_beta=0.999, la_tau=1.0, ldam_c=0.5, vs_gamma=0.2, vs_tau=1.0)
LOSS_PARAMS = {"cross_entropy": (), "class_balanced": ("cb_beta",), "logit_adjusted": ("la_tau",),
               "ldam": ("ldam_c",), "vector_scaling": ("vs_gamma", "vs_tau")}


def _check_params(name, p):
    if name not in LOSS_NAMES:
        raise UserError(f"--loss {name}: unknown; allowed are {', '.join(LOSS_NAMES)}")
    if not 0 <= p["cb_beta"] < 1:
        raise UserError(f"--cb_beta {p['cb_beta']}: must be in [0, 1)")
    if not np.isfinite(p["la_tau"]) or not np.isfinite(p["vs_tau"]):
        raise UserError("--la_tau, --vs_tau: must be finite numbers")
    if not (np.isfinite(p["ldam_c"]) and p["ldam_c"] >= 0):
        raise UserError(f"--ldam_c {p['ldam_c']}: must be a number >= 0")
    if not (np.isfinite(p["vs_gamma"]) and p["vs_gamma"] >= 0):
        raise UserError(f"--vs_gamma {p['vs_gamma']}: must be a number >= 0")


def loss_vectors(name, n, oversample=None, **params):
    """The loss `name` as the program's per-class vectors, from the data's class sizes n (before
    oversampling): dict(name, params, sizes (as solved: n times the oversampling factors), weight, offset,
    margin, scale). class_balanced: w_k = (1 - beta) / (1 - beta^n_k), normalised to sum K (Cui et al.);
    logit_adjusted: o_j = tau log pi_j (tau = 1: balanced softmax; Menon et al.); ldam: mu_k = C n_k^(-1/4)
    (Cao et al., without feature normalisation); vector_scaling: s_j = (n_j / n_max)^gamma,
    o_j = tau log pi_j (Kini et al.); pi = n / N."""
    p = dict(LOSS_DEFAULTS, **{k: float(v) for k, v in params.items() if v is not None})
    _check_params(name, p)
    n = np.asarray(n, dtype=float).ravel()
    K = n.size
    over = np.ones(K) if oversample is None else np.asarray(oversample, dtype=float).ravel()
    if over.size != K or not np.all(np.isfinite(over)) or np.any(over < 1):
        raise UserError(f"--oversample: {over.tolist()} not allowed; one factor >= 1 per class")
    log_pi = np.log(n / n.sum())
    w, s, o, mu = np.ones(K), np.ones(K), np.zeros(K), np.zeros(K)
    if name == "class_balanced":
        w = (1 - p["cb_beta"]) / -np.expm1(n * np.log(p["cb_beta"])) if p["cb_beta"] > 0 else w
        w = w * K / w.sum()
    elif name == "logit_adjusted":
        o = p["la_tau"] * log_pi
    elif name == "ldam":
        mu = p["ldam_c"] * n ** -0.25
    elif name == "vector_scaling":
        s, o = (n / n.max()) ** p["vs_gamma"], p["vs_tau"] * log_pi
    return dict(name=name, params={k: p[k] for k in LOSS_PARAMS[name]}, oversample=over.tolist(),
                sizes=(n * over).tolist(), weight=w.tolist(), offset=o.tolist(), margin=mu.tolist(), scale=s.tolist())


def _unpack(n, loss, lam, lam_b):
    """Checked sizes (as solved) and the vectors (w, s, o, mu) as arrays."""
    n = ufm_certificate._check_ufm_args(n, lam, lam_b)
    vec = tuple(np.asarray(loss[k], dtype=float).ravel() for k in ("weight", "scale", "offset", "margin"))
    if any(v.size != n.size or not np.all(np.isfinite(v)) for v in vec):
        raise UserError(f"loss vectors: need {n.size} finite entries each (one per class)")
    if np.any(vec[0] <= 0) or np.any(vec[1] <= 0):
        raise UserError("loss vectors: weights and scales must be > 0 (a weight < 0 makes the program non-convex)")
    return n, vec


def _smooth(X, b, a, q, lam_b, vec):
    """sum_k a_k CE(v_k, k) + lam_b |b|^2 with its gradients in X and b (CE without cancellation)."""
    ce, E, r = _ce_columns(_logits(X, b, q, vec))
    E[np.diag_indices_from(E)] = -r                       # softmax - onehot, per column
    E *= a
    return float(a @ ce + lam_b * (b @ b)), vec[1][:, None] * E / q, E.sum(axis=1) + 2.0 * lam_b * b


def _scaled(n, loss, lam, lam_b, Z=None):
    n, vec = _unpack(n, loss, lam, lam_b)
    N = n.sum()
    q = np.sqrt(n / N)
    return n, vec, q, vec[0] * n / N, float(lam) * np.sqrt(N), None if Z is None else np.asarray(Z, float) * q


def rebalance_objective(Z, b, n, loss, lam, lam_b):
    """Objective of the re-balanced program at (Z, b); n the sizes as solved."""
    n, vec, q, a, L, X = _scaled(n, loss, lam, lam_b, Z)
    nuc = float(np.linalg.svd(X, compute_uv=False).sum())
    return _smooth(X, np.asarray(b, float).ravel(), a, q, lam_b, vec)[0] + L * nuc


def rebalance_certificate(Z, b, n, loss, lam, lam_b):
    """dict(objective, dual, gap, accuracy) of any answer (Z, b): dual <= optimum <= objective."""
    n, vec, q, a, L, X = _scaled(n, loss, lam, lam_b, Z)
    b = np.asarray(b, float).ravel()
    primal = _smooth(X, b, a, q, lam_b, vec)[0] + L * float(np.linalg.svd(X, compute_uv=False).sum())
    dual = dual_point(X, b, a, q, L, lam_b, vec)[0]
    return dict(objective=primal, dual=dual, gap=primal - dual, accuracy=_ufm_accuracy(primal, dual))


def solve_rebalance_cvxpy(n, loss, lam, lam_b, tol=1e-9):
    """The program by cvxpy/Clarabel at tight tolerances (the independent reference, K <= ~20);
    status 'optimal' only when the certificate's accuracy <= tol."""
    import cvxpy as cp  # ~1 s to import; only this function needs it
    n, vec, q, a, L, _ = _scaled(n, loss, lam, lam_b)
    K = n.size
    w, s, o, mu = vec
    X, b = cp.Variable((K, K)), cp.Variable(K)
    V = np.diag(s) @ X @ np.diag(1.0 / q) + cp.reshape(b, (K, 1), order="F") @ np.ones((1, K)) \
        + (o[:, None] - np.diag(mu))
    ce = a @ cp.log_sum_exp(V, axis=0) - a @ cp.diag(V)
    prob = cp.Problem(cp.Minimize(ce + L * cp.normNuc(X) + lam_b * cp.sum_squares(b)))
    t0 = time.perf_counter()
    try:
        prob.solve(solver="CLARABEL", **ufm_program.CLARABEL_TIGHT)
    except cp.error.SolverError as e:
        raise RuntimeError(f"cvxpy solver CLARABEL failed: {e}") from e
    if X.value is None:
        raise RuntimeError(f"cvxpy solver CLARABEL returned no solution (status {prob.status})")
    Z, bv = X.value / q, np.asarray(b.value, float)
    cert = rebalance_certificate(Z, bv, n, loss, lam, lam_b)
    return dict(Z=Z, b=bv, objective=cert["objective"], accuracy=cert["accuracy"], solver="cvxpy/CLARABEL",
                status="optimal" if cert["accuracy"] <= tol else "inaccurate", solver_status=prob.status,
                solve_time=time.perf_counter() - t0)


# A warm start (Z0: a neighbouring lambda's answer) is one proximal step of size 1 / (WARM_STEP w_max s_max^2)
# from it, its singular values floored at WARM_FLOOR (largest - threshold), as the cold start's: measured on a
# 20-lambda path (K = 100, exp profile), 3500 L-BFGS steps in all against 8000 from the answer itself floored
# at 1e-6 (directions that must grow start near a saddle of the factored form); Newton from it did not help.
WARM_STEP, WARM_FLOOR = 1.0, 1e-3
# A warm solve runs L-BFGS in the scaled coordinates of _ClassCoordinates.scaling at its start (delta WARM_SCALING):
# measured on the 20-lambda path (exp profile, n_max 1280, from the smallest lambda up), 770 L-BFGS steps in all
# against 1370 at K = 300 and 800 against 1470 at K = 1000, the 10 points above the middle 30-100 steps each
# against 90-200; delta 0.05 / 0.2 / 0.4: 880 / 810 / 880 steps at K = 300. Not for a cold start (its factors are
# not the answer's; 100 steps against 70 at 0.5 lambda_mid).
WARM_SCALING = 0.1
# L-BFGS checks its point's certificate (at steps divisible by CHECK_EVERY) when the gradient predicts success:
# max |g| / f times the latest checked ratio certified accuracy / (max |g| / f) is <= tol (FIRST_RATIO before the
# first check: the polar-corrected dual point certifies at 1e-3 .. 1e-2 of max |g| / f, measured at K = 300), and
# after a failed check at least every FORCE_EVERY steps; a certificate costs ~5 K x K decompositions.
CHECK_EVERY, FIRST_RATIO, FORCE_EVERY = 10, 1e-3, 50


def _prox_steps(X, b, a, q, L, lam_b, vec, cert, steps):
    """Proximal-gradient steps on X (soft-thresholding: collapsed columns coincide exactly) and b,
    with backtracking, each certified (cert keeps the best; its blocks do the thresholding)."""
    c = 0.5 * vec[0].max() * vec[1].max() ** 2          # the CE's curvature in X is <= w_k s_max^2 / 2
    f, gX, gb = _smooth(X, b, a, q, lam_b, vec)
    for _ in range(steps):
        while True:
            Xn, nuc = _block_svt(cert.blocks, X - gX / c, L / c)
            bn = b - gb / (c + 2.0 * lam_b)
            fn, gXn, gbn = _smooth(Xn, bn, a, q, lam_b, vec)
            dX, db = Xn - X, bn - b
            if fn <= f + np.sum(gX * dX) + gb @ db + 0.5 * (c * np.sum(dX * dX) + (c + 2 * lam_b) * (db @ db)) \
                    + 1e-14 * abs(f):
                break
            c *= 2.0
        X, b, f, gX, gb = Xn, bn, fn, gXn, gbn
        if cert(X, b, f + L * nuc):
            return
        c *= 0.9


class _Certifier:
    """cert(X, b, F=None): True when (X, b) (objective F, computed when None) is certified to tol; keeps the
    best answer (accuracy, X, b, F), the last accuracy and the count. Decompositions in class coordinates."""

    def __init__(self, program, tol, cc):
        self.program, self.tol, self.blocks = program, tol, _Blocks(cc)
        self.best, self.last, self.count = (np.inf, None, None, np.inf), np.inf, 0

    def __call__(self, X, b, F=None):
        a, q, L, lam_b, vec = self.program
        if F is None:
            F = _smooth(X, b, a, q, lam_b, vec)[0] + L * self.blocks.nuclear_norm(X)
        self.last = _ufm_accuracy(F, dual_point(X, b, a, q, L, lam_b, vec, self.blocks)[0])
        self.count += 1
        if self.last < self.best[0]:
            self.best = (self.last, X, b, F)
        return self.last <= self.tol


def _first_point(cc, a, q, lam_b, vec, L, Z0, b0):
    """The L-BFGS start: one proximal step from the warm point (Z0, b0), floored (WARM_FLOOR), or from Z = 0
    with b the best for it as lam_b -> 0."""
    K = a.size
    if Z0 is None:
        b = np.log(a) - vec[2] - np.mean(np.log(a) - vec[2])
        return cc.start(-_smooth(np.zeros((K, K)), b, a, q, lam_b, vec)[1], b, L, 1e-3)
    X0, b = np.asarray(Z0, float) * q, np.zeros(K) if b0 is None else np.ravel(b0).astype(float)
    c = WARM_STEP * vec[0].max() * vec[1].max() ** 2
    _, gX, gb = _smooth(X0, b, a, q, lam_b, vec)
    return cc.start(X0 - gX / c, b - gb / (c + 2 * lam_b), L / c, WARM_FLOOR)


def solve_rebalance_fast(n, loss, lam, lam_b, tol=1e-9, Z0=None, b0=None, bm_iter=3000, blas_threads=1):
    """The program by L-BFGS on the factored form in class coordinates (ufm_program._class_coordinates with
    the loss vectors); each check certifies one proximal step from the L-BFGS point (soft-thresholding makes
    collapsed columns coincide exactly; one certificate a check where the L-BFGS point and then its proximal
    step took two: the K = 1000 path 72.5 CPU s against 84.7, docs/rebalance.md); when none is certified, a
    Newton-CG polish, then up to 50 proximal steps. Every answer certified (its decompositions g x g in the g
    distinct groups). Z0, b0: a warm start (a neighbouring lambda of a path), whose L-BFGS runs in the scaled
    coordinates of _ClassCoordinates.scaling (WARM_SCALING). Returns as ufm_program.solve_ufm_fast."""
    n, vec, q, a, L, _ = _scaled(n, loss, lam, lam_b)
    t0 = time.perf_counter()
    with ufm_program._blas_threads(blas_threads):
        cc = ufm_program._ClassCoordinates(n, L, lam_b, vec)
        cert = _Certifier((a, q, L, lam_b, vec), tol, cc)
        x = _first_point(cc, a, q, lam_b, vec, L, Z0, b0)
        p = np.ones_like(x) if Z0 is None else cc.scaling(x, WARM_SCALING)    # x = p * y
        sched = dict(ratio=FIRST_RATIO, at=0, done=False)     # the check schedule and the stop's verdict

        def fg(y):
            f, g = cc.fg(p * y)
            return f, p * g

        def stop(it, y, f, g):
            """Is a proximal step from here certified? Checked as the schedule above (CHECK_EVERY) says."""
            gf = np.max(np.abs(g)) / f
            due = gf * sched["ratio"] <= tol or (sched["at"] and it - sched["at"] >= FORCE_EVERY)
            if it % CHECK_EVERY or not due:
                return False
            _prox_steps(*cc.point(p * y), a, q, L, lam_b, vec, cert, 1)
            sched["done"] = cert.best[0] <= tol
            sched.update(ratio=cert.last / gf if gf > 0 else sched["ratio"], at=it)
            return sched["done"]
        y, _, its = ufm_program._lbfgs(fg, x / p, bm_iter, gtol=1e-11, stop=stop)
        x = p * y
        if not sched["done"]:
            if not cert(*cc.point(x)):
                cert(*cc.point(ufm_program._newton_polish(cc.fg, cc.hess, x)))
            _prox_steps(cert.best[1], cert.best[2], a, q, L, lam_b, vec, cert, 1 if cert.best[0] <= tol else 50)
    acc, X, b, F = cert.best
    return dict(Z=X / q, b=b, objective=float(F), accuracy=float(acc), status="optimal" if acc <= tol else "inaccurate",
                solver="fast", solve_time=time.perf_counter() - t0, bm_iterations=its, certificates=cert.count)


def lambda_path(lams, solve):
    """solve(lam, Z0, b0) at each lambda (answers in the order of lams), from the smallest up: the first cold,
    each next warm-started from its smaller neighbours' answers extrapolated linearly in log lambda (the step
    ratio clipped to 1; from the one answer at the second): a point O(h^2) from the answer where the path is
    smooth. Measured before WARM_SCALING (exp profile, 20 lambdas 0.5 .. 2 sqrt(n_min) / N): 1360 L-BFGS steps
    and 14.0 CPU s at K = 300 against 1960 and 20.3 s from the largest down (the cold solve at the smallest lambda
    takes 70 steps, at the largest 180), K = 1000: 1420 steps against 2000 (docs/rebalance.md)."""
    order = sorted(range(len(lams)), key=lambda i: lams[i])
    sols, Z0, b0 = [None] * len(lams), None, None
    for j, i in enumerate(order):
        sols[i] = solve(lams[i], Z0, b0)
        Z0, b0 = np.asarray(sols[i]["Z"], float), np.asarray(sols[i]["b"], float)
        if 0 < j < len(order) - 1:
            prev, nxt = sols[order[j - 1]], lams[order[j + 1]]
            r = min(np.log(nxt / lams[i]) / np.log(lams[i] / lams[order[j - 1]]), 1.0)
            Z0, b0 = Z0 + r * (Z0 - np.asarray(prev["Z"], float)), b0 + r * (b0 - np.asarray(prev["b"], float))
    return sols


def _restricted_excess(n, vec, L, lam_b, X, b, cluster):
    """||G - Pi G Pi||_2 / L - 1 at (X, b): G the CE's gradient in X, Pi the projector on the cluster's zero-sum
    vectors. The program with the cluster held collapsed (Pi X Pi = 0) is solved iff this is <= 0 (with L-BFGS's
    stationarity): its dual may add any Pi Y Pi to G. A factored point stuck at a saddle (a direction that
    must grow held near 0) shows it: 0.15 where a converged point gives 1e-13 (docs/rebalance.md)."""
    q, a = np.sqrt(n / n.sum()), vec[0] * n / n.sum()
    _, Poff, r = _ce_columns(_logits(X, b, q, vec))
    G = gradient_matrix(Poff, r, vec[1], a / q)
    block = G[np.ix_(cluster, cluster)]
    G[np.ix_(cluster, cluster)] = block.mean(axis=0) + block.mean(axis=1)[:, None] - block.mean()
    return _spectral_norm(G) / L - 1.0


def _collapsed_p_true(n, vec, L, lam_b, k, x0=None):
    """Softmax probability of the true class in column k at the optimum with k's group collapsed
    (its within-group coordinate s fixed at 0), and the factored point (a warm start for the next call).
    From x0 when given; where that answer fails _restricted_excess (> 1e-6), again from the cold start,
    which must pass it."""
    cc = ufm_program._ClassCoordinates(n, L, lam_b, vec)
    fg, start, point = cc.fg, cc.start, cc.point
    ga, g = int(cc.gi[k]), cc.g
    q, a = np.sqrt(n / n.sum()), vec[0] * n / n.sum()

    def fg_fixed(x):
        f, gr = fg(x)
        gr[[ga, g + ga]] = 0.0
        return f, gr
    for x_start in ([x0] if x0 is not None else []) + [None]:
        if x_start is None:
            b = np.log(a) - vec[2] - np.mean(np.log(a) - vec[2])
            x_start = start(-_smooth(np.zeros((n.size, n.size)), b, a, q, lam_b, vec)[1], b, L, 1e-3)
        x_start = x_start.copy()
        x_start[[ga, g + ga]] = 0.0
        x = ufm_program._lbfgs(fg_fixed, x_start, 3000, gtol=1e-13)[0]
        X, b = point(x)
        excess = _restricted_excess(n, vec, L, lam_b, X, b, np.flatnonzero(cc.gi == ga))
        if excess <= 1e-6:
            return 1.0 - _ce_columns(_logits(X, b, q, vec))[2][k], x
    raise RuntimeError(f"collapse_threshold: the collapsed program at lam sqrt(N) = {L:.6g} not solved "
                       f"(dual excess {excess:.1e})")


def _cluster_equation(n, vec, cluster):
    """(k, base, mu) of a cluster (>= 2 classes of one size and one set of loss entries): its first class, and
    the threshold equation lambda = base (1 + p (e^mu - 1)) of collapse_threshold."""
    k = int(cluster[0])
    if len(cluster) < 2 or any(np.ptp(np.asarray(v, float)[list(cluster)]) for v in (n, *vec)):
        raise UserError("collapse_threshold: the cluster needs >= 2 classes with equal sizes and loss entries")
    return k, vec[1][k] * vec[0][k] * np.sqrt(n[k]) / n.sum(), vec[3][k]


def _margin_root(n, vec, k, lam_b, base, mu):
    """The root of lambda - base (1 + p(lambda) (e^mu - 1)), p(lambda) = _collapsed_p_true: secant steps (a
    fixed-point step first) from the bracket's middle, kept in the bracket [base, base e^mu] where the equation
    changes sign (p in [0, 1]) and bisected where a step leaves it, to relative 1e-12; each solve starts from the
    last one's answer (a solve redone cold costs more: exp profile K = 120, 5 LDAM clusters, 19.7 CPU s against
    17.5 s for the unchecked brentq, which was up to 8e-5 low there)."""
    N, e = n.sum(), np.expm1(mu)
    lo, hi = base, base * np.exp(mu)
    lam, x, pts = 0.5 * (lo + hi), None, []
    for _ in range(200):
        p, x = _collapsed_p_true(n, vec, lam * np.sqrt(N), lam_b, k, x)
        phi = lam - base * (1.0 + p * e)
        if phi == 0:
            return float(lam)
        lo, hi = (lam, hi) if phi < 0 else (lo, lam)
        pts.append((lam, phi))
        nxt = lam - phi
        if len(pts) > 1 and pts[-1][1] != pts[-2][1]:
            (l1, f1), (l2, f2) = pts[-2:]
            nxt = l2 - f2 * (l2 - l1) / (f2 - f1)
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - lam) <= 1e-12 * lam or hi - lo <= 1e-12 * lam:
            return float(nxt)
        lam = nxt
    raise RuntimeError(f"collapse_threshold: no root to 1e-12 in 200 steps (bracket [{lo}, {hi}])")


def collapse_threshold(n, loss, cluster, lam_b):
    """lambda* of a cluster (>= 2 classes of one size and one set of loss entries) under the loss
    (theory.md section 9): it collapses iff lam sqrt(N) >= s_c w_c sqrt(rho_c) (1 + p_c (e^{mu_c} - 1)),
    p_c the true class's softmax probability of its collapsed column. Without a margin p_c drops out:
    lambda* = s_c w_c sqrt(n_c) / N (cross-entropy: sqrt(n_c) / N); with one, lambda* is the root of that
    equation, p_c from the optimum with the cluster held collapsed (_margin_root, relative 1e-12)."""
    n, vec = _unpack(n, loss, 1.0, lam_b)
    k, base, mu = _cluster_equation(n, vec, cluster)
    return float(base) if mu == 0 else _margin_root(n, vec, k, lam_b, base, mu)


def size_threshold(layout, cluster, lam, lam_b, lo, hi, points=40):
    """The sizes x in [lo, hi] where the cluster's collapse threshold lambda*(x) crosses lam: layout(x) gives
    (sizes as solved, loss vectors), e.g. minority_n's n_A -> the two-cluster layout under its loss. A geometric
    scan of lambda*(x) - lam, then brentq (relative 1e-12) in each interval where it changes sign; [] when it
    keeps one sign on [lo, hi]. The cluster collapses where lambda*(x) <= lam (theory.md section 9)."""
    def gap(x):
        n, loss = layout(x)
        return collapse_threshold(n, loss, cluster, lam_b) - lam
    xs = np.geomspace(lo, hi, points)
    gaps = [gap(x) for x in xs]
    roots = [float(x) for x, g in zip(xs, gaps) if g == 0]
    for x0, x1, g0, g1 in zip(xs, xs[1:], gaps, gaps[1:]):
        if g0 * g1 < 0:
            roots.append(float(scipy.optimize.brentq(gap, x0, x1, xtol=1e-12 * x0, rtol=1e-12)))
    return sorted(roots)


def add_loss_args(parser):
    """--loss and its parameters (shared by opt_main and the figure scripts)."""
    parser.add_argument("--loss", default="cross_entropy", help=" | ".join(LOSS_NAMES) + " (theory.md section 9)")
    for k, text in (("cb_beta", "class_balanced: beta of the effective number"), ("la_tau", "logit_adjusted: tau "
                    "(1: balanced softmax)"), ("ldam_c", "ldam: margin C n_k^(-1/4)"), ("vs_gamma", "vector_scaling: "
                    "scale (n_k/n_max)^gamma"), ("vs_tau", "vector_scaling: offset tau log pi")):
        parser.add_argument("--" + k, type=float, default=LOSS_DEFAULTS[k], help=f"{text} (default {LOSS_DEFAULTS[k]})")
    return parser


def loss_from_args(args, n, oversample=None):
    """loss_vectors of the parsed --loss arguments for class sizes n (before oversampling)."""
    return loss_vectors(args.loss, n, oversample=oversample, **{k: getattr(args, k) for k in LOSS_DEFAULTS})


def solve_rebalance(n, loss, lam, lam_b, solver="auto", tol=1e-9, Z0=None, b0=None):
    """By `solver`: 'fast', 'cvxpy', or 'auto' (fast; Clarabel too when uncertified and K <= 20, the better
    certified answer kept). Every answer carries its certified accuracy."""
    if solver not in ("auto", "cvxpy", "fast"):
        raise UserError(f"solver {solver}: allowed are auto, cvxpy, fast")
    fast = solve_rebalance_fast(n, loss, lam, lam_b, tol=tol, Z0=Z0, b0=b0) if solver != "cvxpy" else None
    if solver == "fast" or (fast is not None and (fast["status"] == "optimal"
                                                  or len(n) > ufm_program.AUTO_CVXPY_MAX_K)):
        return fast
    try:
        ref = solve_rebalance_cvxpy(n, loss, lam, lam_b, tol=tol)
    except RuntimeError as e:
        if fast is None:
            raise UserError(f"solver cvxpy failed ({e}); use the fast solver") from None
        return fast
    return fast if fast is not None and fast["accuracy"] < ref["accuracy"] else ref


def training_loss(loss, n):
    """A train configuration's 'loss' entry for the data's class sizes n (before oversampling): the loss's
    vectors, with oversampling by f_k as weights that give the replicated data's objective exactly (over an
    epoch's uniform batches): CE weight w_k f_k N / N' and feature-penalty weight f_k (N' = sum f_k n_k)."""
    n, f = np.asarray(n, dtype=float), np.asarray(loss["oversample"], dtype=float)
    w = np.asarray(loss["weight"]) * f * n.sum() / (f * n).sum()
    return dict(name=loss["name"], weight=w.tolist(), scale=list(loss["scale"]), offset=list(loss["offset"]),
                margin=list(loss["margin"]), feature_weight=f.tolist())


def is_plain(loss):
    """Cross-entropy without oversampling: the original program and training objective."""
    return loss is None or (loss["name"] == "cross_entropy" and max(loss["oversample"]) == 1)
