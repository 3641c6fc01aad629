"""Plotting: every matplotlib figure (Z heat-maps, the imbalanced-NC figures, mixup projections
and curves), and redrawing a figure from its JSON."""
import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap, Normalize, SymLogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import ana_utils
import mixup_geometry
import utils
from utils import UserError


def figure_paths(plot_dir, stem):
    """(png, json) paths of a figure: the JSON sits beside the PNG with the same stem."""
    return os.path.join(plot_dir, stem + ".png"), os.path.join(plot_dir, stem + ".json")


# ======================================================================================
# Plotting helpers: Z heat-maps and figure grids  (imbalanced-NC figures)
# ======================================================================================


def symlog_norm(Zs, linthresh=None):
    """One symmetric-log colour scale for a list of Z matrices: +-max|Z|, linear within linthresh."""
    vmax = max([float(np.max(np.abs(np.asarray(Z, dtype=float)))) for Z in Zs] + [1e-8])
    return SymLogNorm(linthresh=linthresh or max(vmax * 1e-2, 1e-8), vmin=-vmax, vmax=vmax, base=10)


def plot_z_heatmap(ax, Z, cluster_sizes, norm=None, title=None):
    """Heat-map of Z (classes as columns) with lines at the cluster boundaries; returns the image."""
    Z = np.asarray(Z, dtype=float)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")  # NaN entries (masked) in grey
    im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap,
                   norm=norm if norm is not None else symlog_norm([np.nan_to_num(Z)]),
                   interpolation="nearest")
    for edge in np.cumsum(cluster_sizes)[:-1]:
        ax.axhline(edge - 0.5, color="k", lw=0.8)
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return im


def save_figure(fig, path, dpi=110):
    """Write a matplotlib figure as PNG atomically and close it. A figure with a layout engine is
    drawn once; bbox_inches="tight" (for the others) draws it twice."""
    tight = None if fig.get_layout_engine() is not None else "tight"
    utils.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches=tight))
    plt.close(fig)
    return path


def save_z_heatmap(Z, cluster_sizes, title, path):
    """One Z heat-map (clusters A, B, ... and class ticks) with its labelled colour bar, written to
    path; an all-zero Z (the trivial answer) says so on the picture rather than showing a blank."""
    fig, ax = plt.subplots(figsize=(4.4, 4.0), layout="constrained")
    im = plot_z_heatmap(ax, Z, cluster_sizes, title=title)
    label_clusters(ax, cluster_sizes)
    if not np.any(np.abs(np.asarray(Z, dtype=float)) > 1e-9):
        ax.text(0.5, 0.5, "Z = 0\n(the trivial answer:\nevery class collapsed)", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, bbox=dict(facecolor="white", edgecolor="0.5"))
    fig.colorbar(im, ax=ax, shrink=0.8, label="Z entry (mean logit), symlog scale")
    return save_figure(fig, path)


def _cluster_sizes(point):
    return [len(c) for c in point["clusters"]]


def _seed_spread(ax, x, point, stat, value, color):
    """With several seeds at a point ('stats' in its record, sweep.merge_seeds): each seed's value as a
    faint dot and the mean with its interval (ana_utils.interval_of: the 95% t-interval, or the range
    with two seeds, said so in the legend) as an error bar. Returns the value to mark: the mean over
    seeds, or `value` (the one seed's) without seeds."""
    s = (point.get("stats") or {}).get(stat)
    if s is None:
        return value
    vals = [utils.flatten(r).get(stat) for r in point["seeds"]]
    ax.plot([x] * len(vals), [np.nan if v is None else v for v in vals], ".", color=color, alpha=0.35, ms=4)
    iv = ana_utils.interval_of(s)
    if iv is not None and s["n"] >= 2:
        label = f"mean (dots: seeds), bar: {iv[2]}"
        ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - iv[0]], [iv[1] - s["mean"]]], color=color, capsize=4,
                    lw=1.6, capthick=1.6, zorder=4, label=None if label in ax.get_legend_handles_labels()[1] else label)
    return np.nan if s["mean"] is None else s["mean"]


def seeds_note(point):
    """' (mean of n seeds)' for a point with several seeds, else ''."""
    n = len(point.get("seeds") or [])
    return f" (mean of {n} seed{'s' if n > 1 else ''})" if n else ""


def _mean_of(point, stat, value):
    """The mean over seeds of a point's number where it has seeds, else its own value."""
    s = (point.get("stats") or {}).get(stat)
    return value if s is None else s["mean"]


def _history_band(ax, point, key):
    """With several seeds: the mean of an NC metric at each epoch evaluated in every seed, and its
    interval (ana_utils.interval_of) shaded; returns (the line, what the band is), or None without seeds."""
    rows = [(r["epoch"], r["stats"].get(key)) for r in point.get("history_stats") or []]
    rows = [(e, st, ana_utils.interval_of(st)) for e, st in rows if st and st["n"]]
    if not rows:
        return None
    ep = [e for e, _, _ in rows]
    pos = [st["mean"] if st["mean"] > 0 else np.nan for _, st, _ in rows]
    line = ax.plot(ep, pos, "-o", ms=2, label=f"{key} (mean)")[0]
    ax.fill_between(ep, [iv[0] for *_, iv in rows], [iv[1] for *_, iv in rows], color=line.get_color(), alpha=0.2, lw=0)
    return line, rows[0][2][2]


def label_clusters(ax, cluster_sizes, class_ticks=True, fontsize=6):
    """Class numbers as ticks (columns below, rows left) and the clusters' letters A, B, ...
    centred under their columns, so a heat-map reads without the caption."""
    K = int(sum(cluster_sizes))
    if class_ticks:
        ax.set_xticks(range(K), [str(k) for k in range(K)], fontsize=fontsize - 1)
        ax.set_yticks(range(K), [str(k) for k in range(K)], fontsize=fontsize - 1)
        ax.tick_params(length=1.5, pad=1)
    starts = np.concatenate([[0], np.cumsum(cluster_sizes)])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        ax.text((a + b - 1) / 2, K - 0.5 + 0.12 * K, chr(ord("A") + i), ha="center", va="center",
                fontsize=fontsize + 2, fontweight="bold", clip_on=False)


def z_norm_note(points):
    """One line for a figure's face: whether the trained ||Z|| is within ana_utils.Z_NORM_TOL of
    the convex program's at every point, and the worst deviation; plus the colour it is drawn in."""
    points = [dict(p, z_norm=_mean_of(p, "z_norm", p["z_norm"])) for p in points]  # the mean over seeds
    devs = ana_utils.z_norm_deviations(points)
    known = [(d, p) for d, p in zip(devs, points) if d is not None]
    if not known:
        return "||Z||: no convex-program answer to compare with", "0.3"
    worst = max(d for d, _ in known)
    off = [p for d, p in known if d > ana_utils.Z_NORM_TOL]
    if not off:
        return (f"trained ||Z|| within {ana_utils.Z_NORM_TOL:.0%} of the convex program at every point "
                f"(worst {worst:.1%})", "tab:green")
    return (f"NOT FOLLOWING THE UFM: trained ||Z|| off the convex program by more than {ana_utils.Z_NORM_TOL:.0%} "
            f"at {len(off)} of {len(known)} points (worst {worst:.0%})", "tab:red")


# The NC panels plot the trace ratios, defined through minority collapse; Papyan's nc1 (pseudo-inverse of
# Sigma_B) stays in the JSON with sigma_b_rank / nc1_rank_deficient (ana_utils.sigma_b_rank_of).
NC_KEYS = (("nc1_trace", "nc1_trace  tr S_W / tr S_B"),
           ("nc1_trace_weighted", "nc1_trace_weighted (size-weighted S_B)"),
           ("nc2_equiangle", "nc2 equiangularity"), ("nc3", "nc3 self-duality"))


def rank_note(rows):
    """A line saying at how many of the evaluations (dicts of NC metrics) Sigma_B lost rank, so that
    nc1 in the JSON is not to be read there; '' where none did (or none recorded it)."""
    flags = [r.get("nc1_rank_deficient") for r in rows if r and r.get("nc1_rank_deficient") is not None]
    bad = sum(1 for f in flags if f)
    return (f"Σ_B lost rank in {bad} of {len(flags)} runs: nc1 (its pseudo-inverse) not drawn, "
            f"kept in the JSON" if bad else "")


def plot_nc_panel(ax, xs, pts, x_label):
    """NC metrics of the final evaluations against the swept value (log y), the mean and interval over
    seeds where there are several; the trace ratios, not nc1, which explodes when Sigma_B loses rank."""
    for i, (key, label) in enumerate(NC_KEYS):
        color = f"C{i}"
        ys = [_seed_spread(ax, x, p, f"nc.{key}", (p.get("nc") or {}).get(key), color) for x, p in zip(xs, pts)]
        if any(isinstance(y, (int, float)) and y > 0 for y in ys):
            ax.plot(xs, [y if isinstance(y, (int, float)) and y > 0 else np.nan for y in ys], "o-", ms=3,
                    color=color, label=label)
    note = rank_note([r.get("nc") for p in pts for r in (p.get("seeds") or [p])])
    if note:
        ax.set_title(note, fontsize=6.5, color="0.3")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("NC metric (final epoch)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5.5)
    ax.grid(alpha=0.3)


def plot_accuracy_panel(ax, xs, pts, x_label):
    """Test accuracy of the majority and the minority classes (the usual measure of minority
    collapse) and overall, against the swept value; says so where there is no test set (UFM)."""
    series = (("test_acc_majority", "majority classes (A)", "tab:blue"),
              ("test_acc_minority", "minority classes (B)", "tab:red"), (None, "all classes", "0.4"))
    drawn = False
    for key, label, color in series:
        ys = [_seed_spread(ax, x, p, key or "nc.test_acc", p.get(key) if key else (p.get("nc") or {}).get("test_acc"),
                           color) for x, p in zip(xs, pts)]
        if any(y is not None and np.isfinite(y) for y in ys):
            ax.plot(xs, [np.nan if y is None else y for y in ys], "o-", ms=3, color=color, label=label)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no test set (UFM)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    else:
        ax.legend(fontsize=6)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)


def plot_z_norm_panel(ax, xs, pts, curve, x_label):
    """||Z||_F of the trained points against the convex program's (its curve and its value at each point)."""
    if curve.get("x") and curve.get("z_norm"):
        ax.plot(curve["x"], np.array(curve["z_norm"], dtype=float), "-", color="0.5", label="convex program (UFM)")
    ax.plot(xs, [p["theory"].get("z_norm", np.nan) for p in pts], "s", mfc="none", color="0.3", ms=5,
            label="convex program at the points")
    trained = [_seed_spread(ax, x, p, "z_norm", p["z_norm"], "tab:red") for x, p in zip(xs, pts)]
    ax.plot(xs, trained, "o", color="tab:red", ms=4, label="trained")
    seed_max = [s["max"] for p in pts for s in [(p.get("stats") or {}).get("z_norm")] if s and s["n"]]
    top = max([p["z_norm"] for p in pts] + seed_max + [v for v in [p["theory"].get("z_norm") for p in pts] + list(
        curve.get("z_norm") or []) if v is not None] + [1e-12])
    ax.set_ylim(0, 1.1 * top)
    ax.set_xlabel(x_label)
    ax.set_ylabel("||Z||_F")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)


def plot_minority_figure(result, path):
    """Figs 5-8: grid of Z heat-maps sorted by the swept value (shared symlog scale, clusters A/B,
    class ticks, theory verdict per panel as the frame's colour) above minority_spread and ||Z||
    against the swept value with the convex program's curve and the collapse threshold, and the
    NC metrics and the majority/minority test accuracy; the ||Z|| agreement is stated on the face."""
    x_key, x_label = result["settings"]["x_key"], result["settings"]["x_label"]
    pts = sorted(result["points"], key=lambda p: p["params"][x_key])
    n = max(len(pts), 1)
    ncol = min(n, 5)
    nrow = -(-n // ncol)
    fig = plt.figure(figsize=(max(2.2 * ncol + 1.0, 9.0), 2.6 * nrow + 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.6 * nrow + 0.5, 5.9])
    axes = top.subplots(nrow, ncol, squeeze=False)
    norm = symlog_norm([p.get("Z_mean", p["Z"]) for p in pts]) if pts else None
    im = None
    for ax, p in zip(axes.flat, pts):
        v = p["params"][x_key]
        mark = "collapse" if p["theory"]["verdict"] == "collapse" else "no collapse"
        spread, z_norm = _mean_of(p, "minority_spread", p["minority_spread"]), _mean_of(p, "z_norm", p["z_norm"])
        im = plot_z_heatmap(ax, p.get("Z_mean", p["Z"]), _cluster_sizes(p), norm,
                            f"{x_label} = {v:.4g}{seeds_note(p)}\nspread {spread:.3g}, ||Z|| {z_norm:.3g}")
        label_clusters(ax, _cluster_sizes(p))
        for sp in ax.spines.values():
            sp.set_edgecolor("tab:red" if mark == "collapse" else "tab:blue")
            sp.set_linewidth(2.5)
    for ax in axes.flat[len(pts):]:
        ax.axis("off")
    if im is not None:
        top.colorbar(im, ax=axes, shrink=0.9, label="Z entry (mean logit), symlog scale"
                     + (", mean over seeds" if any("Z_mean" in p for p in pts) else ""))
    top.legend(handles=[Patch(facecolor="none", edgecolor="tab:red", lw=2.5, label="theory: minority collapse"),
                        Patch(facecolor="none", edgecolor="tab:blue", lw=2.5, label="theory: no collapse")],
               loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    (ax_s, ax_z), (ax_nc, ax_acc) = bottom.subplots(2, 2)
    xs = [p["params"][x_key] for p in pts]
    curve = result.get("theory_curve") or {}
    if curve.get("x"):
        ax_s.plot(curve["x"], np.array(curve["minority_spread"], dtype=float), "-", color="0.5",
                  label="convex program (UFM)")
    ax_s.plot(xs, [_seed_spread(ax_s, x, p, "minority_spread", p["minority_spread"], "tab:red")
                   for x, p in zip(xs, pts)],
              "o", color="tab:red", label=f"trained ({result['settings'].get('network', '')})")
    thr = result.get("threshold")
    for ax in (ax_s, ax_z, ax_nc, ax_acc):
        if thr is not None:
            ax.axvline(thr, ls="--", color="k", lw=1, label=f"threshold {x_label}* = {thr:.4g}" if ax is ax_s else None)
    ax_s.set_xlabel(x_label)
    ax_s.set_ylabel("minority spread  max ||z_j - z_k||")
    ax_s.legend(fontsize=7)
    ax_s.grid(alpha=0.3)
    plot_z_norm_panel(ax_z, xs, pts, curve, x_label)
    plot_nc_panel(ax_nc, xs, pts, x_label)
    plot_accuracy_panel(ax_acc, xs, pts, x_label)
    note, color = z_norm_note(pts)
    bottom.suptitle(note, fontsize=9, color=color)
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10)
    return save_figure(fig, path)


def plot_block_figure(result, path):
    """Figs 1-2: NC metrics against epoch (log axes; with seeds their mean and interval); trained Z
    (with seeds the mean Z) beside the convex program's Z, off-diagonal, on one colour scale centred at 0."""
    p = result["points"][0]
    hist = result["history"]
    with_distance = any(r.get("z_theory_distance") is not None for r in hist)
    fig, axes = plt.subplots(1, 3 + with_distance, figsize=(13 + 3.6 * with_distance, 3.8),
                             gridspec_kw={"width_ratios": [1.3] + [1.1] * with_distance + [1, 1]})
    if with_distance:  # runs before this column existed have none: the figure keeps its three panels
        plot_theory_distance_panel(axes[1], hist, p)
        axes = axes[[0, 2, 3]]
    ep = [r["epoch"] for r in hist]
    what = None
    for key in ("nc1_trace", "nc1_trace_weighted", "nc2_equinorm_means", "nc2_equiangle", "nc3"):
        band = _history_band(axes[0], p, key)
        if band is not None:
            what = band[1]
            continue
        ys = [r.get(key) for r in hist]
        if any(y is not None and y > 0 for y in ys):
            axes[0].plot(ep, [y if y is not None and y > 0 else np.nan for y in ys], "-o", ms=2, label=key)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("NC metric (log scale)")
    note = rank_note(hist[-1:] if not p.get("seeds") else [r["history"][-1] for r in p["seeds"] if r.get("history")])
    axes[0].set_title("NC metrics" + (f"; band: {what}" if what else "") + (f"\n{note} (last epoch)" if note else ""),
                      fontsize=7 if what or note else 9)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    # The diagonal dominates Z; the blocks live in the off-diagonal entries: show those on a linear scale.
    Z_trained = np.array(p.get("Z_mean", p["Z"]), dtype=float)
    K = len(Z_trained)
    theory_Z = p["theory"]["Z"] if p["theory"]["Z"] is not None else np.full((K, K), np.nan)  # solver failed
    Zs = [Z_trained.copy(), np.array(theory_Z, dtype=float)]
    off = ~np.eye(K, dtype=bool)
    for Z in Zs:
        Z[~off] = np.nan
    norm = centred_norm(np.concatenate([Z[off] for Z in Zs]))
    sizes = _cluster_sizes(p)
    diag = [np.diag(Z_trained), np.diag(np.array(theory_Z, dtype=float))]
    plot_z_heatmap(axes[1], Zs[0], sizes, norm, f"trained Z{seeds_note(p)} ({result['settings'].get('network', '')}), "
                   f"off-diagonal\n(diagonal {diag[0].min():.3g} .. {diag[0].max():.3g})")
    im = plot_z_heatmap(axes[2], Zs[1], sizes, norm,
                        f"convex program Z (lambda = {p['params']['lam']:.3g}), off-diagonal\n"
                        f"(diagonal {diag[1].min():.3g} .. {diag[1].max():.3g})")
    for ax in axes[1:]:
        label_clusters(ax, sizes)
    fig.colorbar(im, ax=axes[1:], fraction=0.03, label="Z off-diagonal entry (linear, white at 0)")
    note, color = z_norm_note([p])
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10, y=1.04)
    ufm_norm = p["theory"].get("z_norm")
    fig.text(0.5, 0.97, f"{note}; ||Z||_F trained {_with_interval(p, 'z_norm', p['z_norm'])}, convex program "
             f"{'n/a' if ufm_norm is None else format(ufm_norm, '.3g')}", ha="center", fontsize=8, color=color)
    return save_figure(fig, path)


def plot_theory_distance_panel(ax, hist, point):
    """The trained normalised Z's distance to the convex program's optimum against epoch
    (z_theory_distance of each evaluated row; seeds' spread as a band)."""
    ep = [r["epoch"] for r in hist]
    ys = [r.get("z_theory_distance") for r in hist]
    if _history_band(ax, point, "z_theory_distance") is None:
        ax.plot(ep, [np.nan if y is None else y for y in ys], "-o", ms=2, color="C3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||Z/||Z|| - Z*/||Z*|| ||")
    ax.set_title("distance to the convex program's Z*", fontsize=9)
    ax.grid(alpha=0.3)


def centred_norm(values):
    """A linear colour scale symmetric about 0 (white of a diverging map at 0, so the sign reads
    right: all-negative data is all blue), spanning the largest |value|."""
    vmax = float(np.nanmax(np.abs(values))) if np.any(np.isfinite(values)) else 1.0
    return Normalize(-max(vmax, 1e-12), max(vmax, 1e-12))


def _with_interval(point, stat, value):
    """'v' for one seed; 'mean [lo, hi] (what)' over seeds (ana_utils.interval_of)."""
    iv = ana_utils.interval_of((point.get("stats") or {}).get(stat))
    if iv is None or point["stats"][stat]["n"] < 2:
        return f"{value:.3g}"
    return f"{point['stats'][stat]['mean']:.3g} [{iv[0]:.3g}, {iv[1]:.3g}] ({iv[2]})"


def plot_limit_figure(result, path):
    """Fig 9: mean cosines between columns of Z within A, within B and across, against n_A,
    with the simplex-ETF value -1/(K-1) and the convex program's prediction."""
    pts = sorted(result["points"], key=lambda p: p["params"]["n_A"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = result.get("theory_curve") or {}
    styles = (("within_A", "tab:red", "within A"), ("within_B", "tab:blue", "within B"),
              ("across", "tab:green", "across A-B"))
    for key, color, label in styles:
        if curve.get("x"):
            ax.plot(curve["x"], np.array(curve[key], dtype=float), "--", color=color, alpha=0.7,
                    label=f"{label} (convex program)")
        vals = [(p["params"]["n_A"], _seed_spread(ax, p["params"]["n_A"], p, _COS_STATS[key],
                                                  _cos_of(p["cosines"], key),
                                                  color)) for p in pts]
        ax.plot([v[0] for v in vals], [np.nan if v[1] is None else v[1] for v in vals], "o-", color=color,
                label=f"{label} (trained)")
    K = len(pts[0]["sizes"]) if pts else result["settings"].get("num_classes", 10)
    # drawn last and on top, dashed, so it stays visible where the across-cluster cosine sits on it
    ax.axhline(-1 / (K - 1), color="k", lw=1.4, ls=(0, (5, 3)), zorder=5, label=f"ETF -1/(K-1) = {-1 / (K - 1):.3f}")
    ax.set_xlabel("n_A (samples per majority class)")
    ax.set_ylabel("mean cosine between columns of Z")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(alpha=0.3)
    note, color = z_norm_note(pts)
    ax.set_title(result["settings"].get("title", result["figure"]) + "\n", fontsize=9)
    ax.text(0.5, 1.015, note, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color=color)
    return save_figure(fig, path)


_COS_STATS = {"within_A": "cosines.within.0", "within_B": "cosines.within.1", "across": "cosines.across"}


def _cos_of(cosines, key):
    """'within_A' / 'within_B' / 'across' from a cluster_cosines dict (clusters ordered A, B)."""
    if key == "across":
        return cosines["across"]
    return cosines["within"][0 if key == "within_A" else 1]


FIGURE_PLOTTERS = {"block": plot_block_figure, "minority_l": plot_minority_figure,
                   "minority_n": plot_minority_figure, "limit": plot_limit_figure}


def plot_figure_json(json_path, png_path=None):
    """Redraw a figure from its saved JSON (beside it, same stem, unless png_path is given); also
    opt_main's JSON (its Z heat-map)."""
    result = utils.read_json(json_path)
    if result.get("figure") is None and {"cluster_s", "Z", "lam"} <= set(result):  # opt_main's JSON
        return save_z_heatmap(result["Z"], result["cluster_s"], f"Z of the convex program, λ = {result['lam']:g}",
                              png_path or os.path.splitext(json_path)[0] + ".png")
    plotter = FIGURE_PLOTTERS.get(result.get("figure"))
    if plotter is None:
        raise UserError(f"{json_path}: not a figure result (its 'figure' is {result.get('figure')!r})")
    return plotter(result, png_path or os.path.splitext(json_path)[0] + ".png")



def write_figure(result, plot_dir, stem):
    """Save the figure's JSON, then its PNG from that JSON (so the plot is always reproducible from it)."""
    png, js = figure_paths(plot_dir, stem)
    utils.atomic_write_json(js, result)
    plot_figure_json(js, png)
    return png, js

# ======================================================================================
# Plotting helpers: mixup projections and curves  (mixup)
# ======================================================================================


def _theory_points(theory, scale):
    """Projected UFM optimum: same-class vertices and one mix-ordered curve per class pair."""
    classes = [int(c) for c in theory["classes"]]
    P, centre = mixup_geometry.mixup_projection(theory["W"], classes)
    pts = mixup_geometry.project(theory["features"], P, centre)
    same = theory["y_a"] == theory["y_b"]
    radius = np.median(np.linalg.norm(pts[same], axis=1))
    pts = pts * scale / radius
    verts = [pts[same & (theory["y_a"] == c)].mean(0) for c in classes]
    curves = []
    for i, c in enumerate(classes):
        for c2 in classes[i + 1:]:
            m = (theory["y_a"] == c) & (theory["y_b"] == c2)
            order = np.argsort(theory["mix"][m])
            curves.append(pts[m][order])
    return verts, curves


def _mix_cmap(color):
    """Colour over the mixup coefficient mix in [0, 1]: full colour at 0 and 1, black at 1/2."""
    return LinearSegmentedColormap.from_list(f"mix_{color}", [color, "black", color])


def mixup_legend_handles(theory=True):
    """Legend entries in fixed colours (a scatter's own swatch takes its first point's shade)."""
    handles = [Line2D([], [], ls="", marker="o", color="tab:blue", label="same class"),
               Line2D([], [], ls="", marker="o", color="tab:orange", label="different classes"),
               Line2D([], [], ls="", marker="o", color="black", label="mix = 1/2 (either kind)"),
               Line2D([], [], color="tab:green", label="classifier rows w_c")]
    if theory:
        handles += [Line2D([], [], color="tab:purple", ls="--", label="UFM optimum (different classes)"),
                    Line2D([], [], ls="", marker="x", color="tab:purple", label="UFM optimum (same class)")]
    return handles


def mixup_colorbars(fig, axes):
    """Colour bars of the mixup coefficient for both kinds of pair."""
    for color, what in (("tab:blue", "same class"), ("tab:orange", "different classes")):
        sm = matplotlib.cm.ScalarMappable(norm=Normalize(0, 1), cmap=_mix_cmap(color))
        fig.colorbar(sm, ax=axes, fraction=0.02, aspect=40, shrink=0.85, pad=0.01, label=f"mixup coefficient, {what}")


def plot_mixup_projection(ax, snap, title=None, theory=None):
    """Scatter the 2-D projection (theory.md section 5) of a snapshot's mixed features on ax:
    same-class pairs blue, different-class orange, darker as mix -> 1/2 (black at 1/2); classifier
    rows as labelled lines (labels inside the frame). `theory`, a UFM snapshot, is overlaid above
    the points as grey curves scaled so its same-class vertices sit at the median radius of the
    same-class features."""
    classes = [int(c) for c in snap["classes"]]
    P, centre = mixup_geometry.mixup_projection(snap["W"], classes)
    pts = mixup_geometry.project(snap["features"], P, centre)
    same = snap["y_a"] == snap["y_b"]
    mix = np.asarray(snap["mix"], dtype=float)
    ax.scatter(*pts[~same].T, c=mix[~same], cmap=_mix_cmap("tab:orange"), vmin=0, vmax=1, s=6, lw=0, zorder=1)
    ax.scatter(*pts[same].T, c=mix[same], cmap=_mix_cmap("tab:blue"), vmin=0, vmax=1, s=6, lw=0, zorder=2)
    reach = 1.15 * np.max(np.linalg.norm(pts, axis=1)) if len(pts) else 1.0
    wp = mixup_geometry.project(np.asarray(snap["W"])[classes], P, centre)
    for c, w in zip(classes, wp):
        tip = w / (np.linalg.norm(w) + 1e-30) * reach
        ax.plot([0, tip[0]], [0, tip[1]], color="tab:green", lw=1, zorder=3)
        ax.annotate(f"w{c}", tip * 1.08, color="tab:green", fontsize=8, ha="center", va="center", zorder=6)
    if theory is not None and same.any():
        verts, curves = _theory_points(theory, np.median(np.linalg.norm(pts[same], axis=1)))
        for curve in curves:
            ax.plot(*curve.T, color="tab:purple", ls="--", lw=1.6, zorder=4)
        ax.scatter(*np.array(verts).T, marker="x", color="tab:purple", s=50, lw=2, zorder=5)
    lim = 1.22 * reach  # the frame holds the classifier rows and their labels
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_mixup_projection(snap, path, title=None, theory=None):
    """One projection figure (with legend and the mixup-coefficient colour bars) written to path."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    plot_mixup_projection(ax, snap, title, theory)
    mixup_colorbars(fig, ax)
    fig.legend(handles=mixup_legend_handles(theory is not None), loc="outside lower center", ncol=2, fontsize=7,
               frameon=False)
    return save_figure(fig, path)


def mixup_plot_path(plot_dir, run_dir, name):
    """Where mixup_main and the mixup replot commands put a run's picture `name`
    (projection_eNNNN.png, projection_grid.png, loss.png, accuracy.png): <plot_dir>/<run folder name>/."""
    return os.path.join(plot_dir, os.path.basename(os.path.normpath(run_dir)), name)


def summary_note(summary):
    """Two short lines of a snapshot's geometry summary for under its panel."""
    def f(key, fmt):
        v = summary.get(key)
        return "n/a" if v is None else format(v, fmt)
    return (f"same-class angle {f('same_angle_deg_mean', '.1f')} deg\n"
            f"chord residual {f('diff_convex_residual_mean', '.3f')}, "
            f"gap~log-odds {f('diff_logit_gap_vs_log_odds_spearman', '.2f')}")


def save_mixup_grid(snaps, titles, path, theory=None, suptitle=None, notes=None, dpi=110):
    """Projections of several snapshots (e.g. over epochs) side by side, at most 4 per row, with a
    legend, the mixup-coefficient colour bars, an overall title and a note (e.g. summary numbers)
    under each panel. `theory`: one UFM snapshot for all panels, or a list, one per panel."""
    ncol = min(4, len(snaps))
    nrow = -(-len(snaps) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol + 1.6, 3.3 * nrow + 0.9), squeeze=False,
                             layout="constrained")
    theories = theory if isinstance(theory, list) else [theory] * len(snaps)
    for i, (ax, snap, t) in enumerate(zip(axes.flat, snaps, titles)):
        plot_mixup_projection(ax, snap, t, theories[i])
        if notes:
            ax.set_xlabel(notes[i], fontsize=7)
    for ax in axes.flat[len(snaps):]:
        ax.axis("off")
    mixup_colorbars(fig, axes)
    fig.legend(handles=mixup_legend_handles(any(t is not None for t in theories)), loc="outside lower center", ncol=3,
               fontsize=7,
               frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def save_mixup_curves(runs, path, kind):
    """Curves from each run's summary.csv (runs: {label: csv path}); kind 'loss' (the mixed
    training loss and the plain test loss) or 'accuracy' (clean train and test accuracy, and the
    test ECE on an axis of its own)."""
    cols = {"loss": [("loss", "-", "train (mixed)"), ("test_loss", "--", "test")],
            "accuracy": [("train_acc", "-", "train"), ("test_acc", "--", "test")]}[kind]
    if kind == "accuracy":
        fig, (ax, ax_ece) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    else:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for i, (label, csv_path) in enumerate(runs.items()):
        if not os.path.isfile(csv_path):
            raise UserError(f"run_dirs: no summary.csv at {csv_path}")
        rows = utils.read_csv(csv_path)
        for col, ls, what in cols:
            if rows and col in rows[0]:
                ax.plot([r["epoch"] for r in rows], [r[col] for r in rows], ls=ls, color=f"C{i}",
                        label=f"{label}: {what}")
        if kind == "accuracy" and rows and "test_ece" in rows[0]:
            ax_ece.plot([r["epoch"] for r in rows], [r["test_ece"] for r in rows], color=f"C{i}", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(kind)
    if kind == "loss":
        ax.set_yscale("log")
    else:
        ax_ece.set_xlabel("epoch")
        ax_ece.set_ylabel("test ECE (15 bins, the loss's own confidence)")
        ax_ece.grid(alpha=0.3)
        ax_ece.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ======================================================================================
# The mixup study: projection tables, NC dynamics over seeds, calibration  (mixup study)
# ======================================================================================


def save_projection_table(panels, row_labels, col_labels, path, title=None):
    """A table of projections: panels[r][c] is (snapshot, UFM overlay), None (not trained yet, left
    blank and labelled so) or a text (e.g. "diverged": left blank, the text in red); rows and
    columns labelled (e.g. datasets x networks)."""
    nrow, ncol = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(3.0 * ncol, 3.6), 3.0 * nrow + 0.4 + 1.2 / min(ncol, 3)),
                             squeeze=False, layout="constrained")
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            if panel is None or isinstance(panel, str):
                ax.text(0.5, 0.5, panel or "not trained yet", ha="center", va="center", transform=ax.transAxes,
                        color="tab:red" if panel else "0.5")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                plot_mixup_projection(ax, panel[0], theory=panel[1])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=10)
    theory = any(p is not None and p[1] is not None for row in panels for p in row)
    fig.legend(handles=mixup_legend_handles(theory=theory),
               loc="outside lower center", ncol=min(ncol, 3), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_study_dynamics(dynamics, path, title=None):
    """NC dynamics of the study: nc1 (nc1_trace where recorded), nc3 and the convex-combination
    residual of the snapshots against epoch, one line per loss (mean over seeds) with the
    min-max band over seeds. dynamics: {loss: {epochs, snapshot_epochs, <metric>: {mean, lo, hi}}}."""
    keys = [k for k in ("nc1", "nc1_trace", "nc3") if any(k in d for d in dynamics.values())] + ["residual"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (loss, d) in enumerate(dynamics.items()):
            if key not in d:
                continue
            x = d["snapshot_epochs"] if key == "residual" else d["epochs"]
            band = {k: np.array(v, dtype=float) for k, v in d[key].items()}
            ax.plot(x, band["mean"], "-o" if key == "residual" else "-", ms=3, color=f"C{i}", label=loss)
            ax.fill_between(x, band["lo"], band["hi"], color=f"C{i}", alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log" if key != "residual" else "linear")
        ax.set_xlabel("epoch")
        ax.set_title("convex-combination residual" if key == "residual" else key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, title="mean; band: min-max over seeds", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_study_calibration(table, path):
    """Test ECE with and without mixup per (network, loss), one panel per dataset: bars at the mean
    over seeds, error bars the 95% t-interval (3 seeds or more) or the range (2 seeds, hatched bar and
    said in the legend), none with one seed; labels laid out by the constrained layout, not overlapping;
    the diverged and failed cells of a row (n_diverged, n_failed: left out of its mean) written in red on its bar."""
    datasets = list(dict.fromkeys(r["dataset"] for r in table)) or ["(no finished cells)"]
    width = max(4.2, 1.1 * max([len({(r["model"], r["loss"]) for r in table if r["dataset"] == d}) for d in datasets]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(width * len(datasets), 3.8), squeeze=False,
                             layout="constrained")
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in table if r["dataset"] == dataset]
        groups = list(dict.fromkeys((r["model"], r["loss"]) for r in rows))
        for j, mixup in enumerate((True, False)):
            for i, g in enumerate(groups):
                r = next((r for r in rows if (r["model"], r["loss"], r["mixup"]) == (*g, mixup)), None)
                if r is None:
                    continue
                m, lo, hi, vmin, vmax = (np.nan if r.get(f"test_ece_{k}") is None else float(r[f"test_ece_{k}"])
                                         for k in ("mean", "ci_lo", "ci_hi", "min", "max"))
                is_range = not np.isfinite(lo) and np.isfinite(vmin) and vmin != vmax   # 2 seeds: no t-interval
                if is_range:
                    lo, hi = vmin, vmax
                err = [[m - lo], [hi - m]] if np.isfinite(lo) else None
                ax.bar(i + (j - 0.5) * 0.4, m, 0.4, yerr=err, capsize=3, color="tab:orange" if mixup else "tab:blue",
                       hatch="//" if is_range else None, label=("mixup" if mixup else "no mixup") if i == 0 else None)
                bad = [f"{r[k]} {word}" for k, word in (("n_diverged", "diverged"), ("n_failed", "failed")) if r.get(k)]
                if bad:
                    ax.text(i + (j - 0.5) * 0.4, m if np.isfinite(m) else 0, "\n".join(bad), ha="center", va="bottom",
                            fontsize=6, color="tab:red", rotation=90)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\n{loss.replace('_', ' ')}" for m, loss in groups], fontsize=7, rotation=30,
                           ha="right")
        ax.set_ylabel("test ECE")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    handles = [Patch(color="tab:orange", label="mixup"), Patch(color="tab:blue", label="no mixup"),
               Line2D([], [], color="k", marker="_", ms=8, label="95% t-interval (≥ 3 seeds)"),
               Patch(facecolor="white", edgecolor="k", hatch="//", label="hatched: range (min, max) of 2 seeds")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if len(datasets) == 1 else 4, fontsize=7,
               frameon=False)
    return save_figure(fig, path)


def save_nc_depth(csv_path, path, title=None, max_epochs=8):
    """NC against depth over training (nc_layers' columns of a run's summary.csv): the trace-ratio NC1
    (log scale) and the NCC accuracy (train solid, test dashed) of each measured layer, one line per
    evaluated epoch (at most `max_epochs`, spread over training; darker is later)."""
    rows = utils.read_csv(csv_path) if os.path.isfile(csv_path) else []
    layers = [k.split("@", 1)[1] for k in (rows[0] if rows else {}) if k.startswith("nc1_trace@")]
    if not layers:
        raise UserError(f"{csv_path}: no per-layer NC columns (train with --nc_layers)")
    picks = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, min(max_epochs, len(rows)))})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    x = np.arange(len(layers))
    for j, i in enumerate(picks):
        r, color = rows[i], plt.cm.viridis(1 - (j + 1) / len(picks) * 0.85)
        ax1.plot(x, [r[f"nc1_trace@{n}"] for n in layers], "o-", color=color, ms=3, label=f"epoch {int(r['epoch'])}")
        ax2.plot(x, [r[f"ncc_acc@{n}"] for n in layers], "o-", color=color, ms=3, label=f"epoch {int(r['epoch'])}")
        if f"test_ncc_acc@{layers[0]}" in r:
            ax2.plot(x, [r[f"test_ncc_acc@{n}"] for n in layers], "o--", color=color, ms=3)
    ax1.set_yscale("log")
    ax1.set_ylabel("NC1 = tr(Σ_W) / tr(Σ_B)")
    ax2.set_ylabel("NCC accuracy (train solid, test dashed)")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("layer (input to output)")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
