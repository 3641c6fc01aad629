"""Analysis: feature extraction, NC metrics, Z summaries, theory formulas (thresholds, the
lambda split, geometry from Z), and the theory side of a figure point (the convex program's answer
for its sizes and lambda, and along a curve). No plotting."""
import functools
import json
import math
import re
import sys

import numpy as np

import rebalance_program
import seli
import ufm_program
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
        nan = float("nan")
        out = {k: nan for k in ("nc1_weighted", "nc1", "nc1_trace", "nc1_trace_weighted", "nc2_equinorm_means",
                                "nc2_equiangle", "nc2_etf_distance", "nc3", "nc4", "nc4_ties", "sigma_b_rank",
                                "nc1_rank_deficient")}
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
# Theory formulas: the lambda split, collapse thresholds, geometry from Z
# ======================================================================================

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


Z_NORM_TOL = 0.10  # a trained figure point follows the UFM when its ||Z|| is this close to the program's


def z_norm_deviations(points):
    """Per figure point (with z_norm and theory.z_norm): |trained ||Z|| - program's| relative to the
    program's, floored at 5% of the largest program ||Z|| of the figure, where the program's Z is
    (nearly) 0 and a ratio means nothing; None where the solver failed."""
    ufm = [p["theory"].get("z_norm") for p in points]
    scale = max([u for u in ufm if u is not None] + [0.0])
    return [None if u is None else abs(p["z_norm"] - u) / max(u, 0.05 * scale, 1e-12) for p, u in zip(points, ufm)]


@functools.lru_cache(maxsize=512)
def _solve_ufm_cached(sizes, lam, lam_b):
    """The fast solver (exact zeros at collapse, robust near thresholds), remembered within one process."""
    return ufm_program.solve_ufm_fast(list(sizes), lam, lam_b)


@functools.lru_cache(maxsize=512)
def _solve_rebalance_cached(loss_json, lam, lam_b):
    loss = json.loads(loss_json)
    return rebalance_program.solve_rebalance_fast(loss["sizes"], loss, lam, lam_b)


@functools.lru_cache(maxsize=512)
def _rebalance_thresholds(loss_json, clusters_json, lam_b):
    loss = json.loads(loss_json)
    return [rebalance_program.collapse_threshold(loss["sizes"], loss, c, lam_b) if len(c) > 1 else None
            for c in json.loads(clusters_json)]


def ufm_theory(sizes, clusters, lam, lam_b, loss=None):
    """The convex program's answer for these class sizes and lambda (theory.md section 2), under a
    re-balancing loss (rebalance_program's vectors; section 9) when given, with the distances of its Z
    to SELI and to the simplex ETF."""
    N = int(sum(sizes))
    minority = min(clusters, key=lambda c: sizes[c[0]])
    plain = rebalance_program.is_plain(loss)
    key = None if plain else json.dumps(loss, sort_keys=True)
    thresholds = ([collapse_threshold(int(sizes[c[0]]), N) if len(c) > 1 else None for c in clusters] if plain
                  else _rebalance_thresholds(key, json.dumps(clusters), float(lam_b)))
    collapse = [bool(lam >= t) if t is not None else None for t in thresholds]
    try:
        sol = (_solve_ufm_cached(tuple(int(n) for n in sizes), float(lam), float(lam_b)) if plain
               else _solve_rebalance_cached(key, float(lam), float(lam_b)))
        summary = dict(z_summary(sol["Z"], clusters, minority),
                       distances=seli.geometry_distances(sol["Z"], sizes if plain else loss["sizes"]))
    except UserError:
        raise
    except Exception as e:  # a solver failure must not lose the trained points: record it, plot without it
        sol = {"Z": None, "b": None, "status": f"solver failed: {type(e).__name__}: {e}"[:300]}
        summary = {"minority_spread": None, "minority_spread_rel": None, "z_norm": None,
                   "cosines": {"within": [None] * len(clusters), "across": None}}
        print(f"warning: convex program failed for sizes {sizes}, lambda {lam:.4g}: {sol['status']}", file=sys.stderr)
    return dict(summary, Z=sol["Z"], b=sol["b"], objective=sol.get("objective"),
                status=sol.get("status"), accuracy=sol.get("accuracy"), cluster_thresholds=thresholds,
                cluster_collapse=collapse,
                minority_threshold=thresholds[clusters.index(minority)],
                verdict="collapse" if collapse[clusters.index(minority)] else "no collapse")


def theory_curve(xs, make):
    """The convex program along a curve: make(x) -> (sizes, clusters, lam, lam_b[, loss]); returns
    {'x': xs, 'minority_spread', 'minority_spread_rel', 'z_norm', 'within_A', 'within_B', 'across', 'status',
    'accuracy'} (cosines of columns of Z, clusters ordered A, B; accuracy: the solver's certificate)."""
    out = {"x": [], "minority_spread": [], "minority_spread_rel": [], "z_norm": [], "within_A": [], "within_B": [],
           "across": [], "status": [], "accuracy": []}
    for x in xs:
        th = ufm_theory(*make(x))     # (sizes, clusters, lam, lam_b[, loss])
        out["x"].append(x)
        for k in ("minority_spread", "minority_spread_rel", "z_norm", "status", "accuracy"):
            out[k].append(th[k])
        within = th["cosines"]["within"] + [None, None]
        out["within_A"].append(within[0])
        out["within_B"].append(within[1])
        out["across"].append(th["cosines"]["across"])
    return out


def z_theory_distance(Z, sizes, lam, lam_b):
    """||Z/||Z||_F - Z*/||Z*||_F||_F: how far the trained mean-logit matrix points from the convex program's
    optimum Z* for these sizes and lambda (theory.md, "Streaming and modern NC metrics"); 0 at the optimum's
    direction, at most 2. NaN when either is zero or the solver fails."""
    Z = _np64(Z)
    try:
        Z_opt = np.asarray(_solve_ufm_cached(tuple(int(n) for n in sizes), float(lam), float(lam_b))["Z"])
    except UserError:
        raise
    except Exception as e:  # as ufm_theory: a solver failure must not stop training
        print(f"warning: convex program failed for sizes {sizes}, lambda {lam:.4g}: {e}"[:300], file=sys.stderr)
        return float("nan")
    nz, nopt = np.linalg.norm(Z), np.linalg.norm(Z_opt)
    if nz == 0 or nopt == 0:
        return float("nan")
    return float(np.linalg.norm(Z / nz - Z_opt / nopt))



# ======================================================================================
# Statistics over seeds
# ======================================================================================


# The range each kind of number can take, by its name (the last part of a utils.flatten name decides;
# first match wins): an interval over seeds is clipped to it. Unnamed quantities are unbounded.
QUANTITY_RANGES = (
    (r"(^|[._])(test_|train_)?acc(_|$)|ece|nc4|rank_deficient", 0.0, 1.0),
    (r"spearman|cosine", -1.0, 1.0),
    (r"angle_deg", 0.0, 180.0),
    (r"^nc[123]|norm|spread|residual|loss|^ce$|^reg_|seconds|sigma_b_rank|_std$", 0.0, math.inf),
)


def quantity_range(name):
    """(lo, hi) that the quantity called `name` (a utils.flatten name such as 'nc.test_acc',
    'cosines.within.0', 'test_acc_per_class.3') can take: its last part that is not a list index
    decides; (-inf, inf) for one not in QUANTITY_RANGES (e.g. an entry of Z)."""
    parts = [q for q in str(name).split(".") if not re.fullmatch(r"-?\d+", q)]
    if "cosines" in parts:
        return -1.0, 1.0
    for pattern, lo, hi in QUANTITY_RANGES:
        if parts and re.search(pattern, parts[-1]):
            return lo, hi
    return -math.inf, math.inf


def mean_std_interval(values, bounds=(-math.inf, math.inf)):
    """{'n', 'mean', 'std', 'min', 'max', 'ci95'} of the defined (non-None, finite) values: the sample
    standard deviation (ddof 1), the range, and from 3 values on the 95% Student-t interval of the mean,
    mean +- t(0.975, n - 1) s / sqrt(n), clipped to `bounds` (the quantity's possible range, e.g. (0, 1)
    for an accuracy), so it never claims impossible values. Undefined numbers are None, not 0: std
    below two values, ci95 below three (with two the t-interval is too wide to mean anything: show
    the range, min to max, instead), the rest with none."""
    import scipy.stats  # lazily: only sweeps over seeds need it
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    out = {"n": n, "mean": float(np.mean(vals)) if n else None, "std": None,
           "min": min(vals) if n else None, "max": max(vals) if n else None, "ci95": None}
    if n >= 2:
        out["std"] = float(np.std(vals, ddof=1))
    if n >= 3:
        half = float(scipy.stats.t.ppf(0.975, n - 1)) * out["std"] / math.sqrt(n)
        lo, hi = bounds
        out["ci95"] = [float(max(out["mean"] - half, lo)), float(min(out["mean"] + half, hi))]
    return out


def interval_of(stats):
    """(lo, hi, what) to draw for a mean_std_interval result: the 95% t-interval from 3 values on,
    else the range (min, max) with 2 and the value alone with 1; None with none."""
    if not stats or not stats.get("n"):
        return None
    if stats.get("ci95") is not None:
        return stats["ci95"][0], stats["ci95"][1], f"95% t-interval of the mean of {stats['n']} seeds"
    if stats["n"] >= 2:
        return stats["min"], stats["max"], f"range (min, max) of {stats['n']} seeds: too few for a t-interval"
    return stats["mean"], stats["mean"], "one seed"


def seed_interval(values, bounds=(-math.inf, math.inf)):
    """ana_utils.mean_std_interval in the study table's flat form: n, mean, std, min, max, ci_lo, ci_hi
    (NaN where undefined: std with one value, the interval below three, everything with none)."""
    s, nan = mean_std_interval(values, bounds), float("nan")
    lo, hi = s["ci95"] or (nan, nan)
    return {"n": s["n"], **{k: nan if s[k] is None else s[k] for k in ("mean", "std", "min", "max")},
            "ci_lo": lo, "ci_hi": hi}


def table_over_seeds(records, keys, metrics):
    """One row per distinct combination of `keys` among the per-seed records (first-seen order):
    the keys, n_seeds, and for each metric <m>_mean, <m>_std, <m>_min, <m>_max, <m>_ci_lo, <m>_ci_hi
    (seed_interval, clipped to the metric's quantity_range)."""
    groups = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for combo, rs in groups.items():
        row = dict(zip(keys, combo), n_seeds=len(rs))
        for m in metrics:
            stats = seed_interval([r.get(m) for r in rs], quantity_range(m))
            row.update({f"{m}_{k}": stats[k] for k in ("mean", "std", "min", "max", "ci_lo", "ci_hi")})
        rows.append(row)
    return rows


def band_over_seeds(series):
    """Per position, the mean, min and max over equally long series (one per seed; None as NaN):
    the line and band of a curve over seeds. Returns {"mean", "lo", "hi"} lists."""
    a = np.array([[np.nan if x is None else x for x in s] for s in series], dtype=float)
    defined = np.isfinite(a).any(0)
    safe = np.where(np.isfinite(a), a, 0.0)
    count = np.isfinite(a).sum(0)
    mean = np.where(defined, safe.sum(0) / np.maximum(count, 1), np.nan)
    lo = np.where(defined, np.where(np.isfinite(a), a, np.inf).min(0), np.nan)
    hi = np.where(defined, np.where(np.isfinite(a), a, -np.inf).max(0), np.nan)
    return {"mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
