"""The theory side of a figure point: Z summaries, the convex program's answer for the point's sizes and
lambda (and along a curve), and how far a trained Z is from it."""
import functools
import json
import sys

import numpy as np

import rebalance_program
import seli
import ufm_program
from ana_utils import _np64, cluster_cosines, minority_spread
from theory_formulas import collapse_threshold
from utils import UserError


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
