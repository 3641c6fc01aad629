"""Statistics over seeds: each quantity's possible range, the mean, spread and 95% t-interval of a
number over seeds (clipped to its range), the interval to draw, and tables and bands over seeds."""
import math
import re

import numpy as np

# The range each kind of number can take, by its name (the last part of a utils.flatten name decides;
# first match wins): an interval over seeds is clipped to it. Unnamed quantities are unbounded.
QUANTITY_RANGES = (
    (r"theory_distance", 0.0, 2.0),   # between two unit-norm matrices
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
    """mean_std_interval in the study table's flat form: n, mean, std, min, max, ci_lo, ci_hi
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
