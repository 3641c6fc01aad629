"""The imbalanced-NC figures (Hong & Ling, Figs. 1-9, and opt_main's Z heat-map): their panels, the
plotter of each figure by name, and writing or redrawing a figure from its JSON."""
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Patch

import figure_theory
import result_files
import seed_stats
from plot_drawing import centred_norm, label_clusters, plot_z_heatmap, save_figure, symlog_norm
from utils import UserError


def figure_paths(plot_dir, stem):
    """(png, json) paths of a figure: the JSON sits beside the PNG with the same stem."""
    return os.path.join(plot_dir, stem + ".png"), os.path.join(plot_dir, stem + ".json")


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
    """With several seeds at a point ('stats' in its record, point_records.merge_seeds): each seed's value as a
    faint dot and the mean with its interval (seed_stats.interval_of: the 95% t-interval, or the range
    with two seeds, said so in the legend) as an error bar. Returns the value to mark: the mean over
    seeds, or `value` (the one seed's) without seeds."""
    s = (point.get("stats") or {}).get(stat)
    if s is None:
        return value
    vals = [result_files.flatten(r).get(stat) for r in point["seeds"]]
    ax.plot([x] * len(vals), [np.nan if v is None else v for v in vals], ".", color=color, alpha=0.35, ms=4)
    iv = seed_stats.interval_of(s)
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
    interval (seed_stats.interval_of) shaded; returns (the line, what the band is), or None without seeds."""
    rows = [(r["epoch"], r["stats"].get(key)) for r in point.get("history_stats") or []]
    rows = [(e, st, seed_stats.interval_of(st)) for e, st in rows if st and st["n"]]
    if not rows:
        return None
    ep = [e for e, _, _ in rows]
    pos = [st["mean"] if st["mean"] > 0 else np.nan for _, st, _ in rows]
    line = ax.plot(ep, pos, "-o", ms=2, label=f"{key} (mean)")[0]
    ax.fill_between(ep, [iv[0] for *_, iv in rows], [iv[1] for *_, iv in rows], color=line.get_color(), alpha=0.2, lw=0)
    return line, rows[0][2][2]


def z_norm_note(points):
    """One line for a figure's face: whether the trained ||Z|| is within figure_theory.Z_NORM_TOL of
    the convex program's at every point, and the worst deviation; plus the colour it is drawn in."""
    points = [dict(p, z_norm=_mean_of(p, "z_norm", p["z_norm"])) for p in points]  # the mean over seeds
    devs = figure_theory.z_norm_deviations(points)
    known = [(d, p) for d, p in zip(devs, points) if d is not None]
    if not known:
        return "||Z||: no convex-program answer to compare with", "0.3"
    worst = max(d for d, _ in known)
    off = [p for d, p in known if d > figure_theory.Z_NORM_TOL]
    if not off:
        return (f"trained ||Z|| within {figure_theory.Z_NORM_TOL:.0%} of the convex program at every point "
                f"(worst {worst:.1%})", "tab:green")
    return (f"NOT FOLLOWING THE UFM: trained ||Z|| off the convex program by more than {figure_theory.Z_NORM_TOL:.0%} "
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
        if len(set(xs)) > 1:   # the swept range, as the other panels (not matplotlib's 0..1)
            ax.set_xlim(min(xs), max(xs))
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
    fig = plt.figure(figsize=(max(2.2 * ncol + 1.0, 13.0), 2.6 * nrow + 6.4), layout="constrained")
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
    (ax_s, ax_z, ax_d), (ax_nc, ax_acc, ax_free) = bottom.subplots(2, 3)
    ax_free.axis("off")
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
    plot_sweep_distance_panel(bottom, ax_d, pts, x_key, x_label)
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


def _distance_series(point):
    """[(epoch, z_theory_distance)] of a point: the mean over its seeds at each epoch they share, else its
    one run's; [] when none was recorded (runs from before the column, or lambda = 0)."""
    if point.get("distance_history_stats"):
        rows = [(r["epoch"], (r["stats"].get("z_theory_distance") or {}).get("mean"))
                for r in point["distance_history_stats"]]
    else:
        rows = [(r["epoch"], r.get("z_theory_distance")) for r in point.get("distance_history") or []]
    return [(e, np.nan if v is None else v) for e, v in rows]


def plot_sweep_distance_panel(fig, ax, pts, x_key, x_label):
    """The trained normalised Z's distance to the convex program's Z* at every evaluated epoch, one line per
    point coloured by the swept value (with seeds, their mean); with one evaluated epoch per point (--quick),
    the last epoch's distance against the swept value."""
    series = [(p["params"][x_key], _distance_series(p), bool(p.get("seeds"))) for p in pts]
    series = [(x, rows, seeds) for x, rows, seeds in series if rows]
    ax.set_ylabel("||Z/||Z|| - Z*/||Z*|| ||")
    ax.grid(alpha=0.3)
    if not series:
        ax.text(0.5, 0.5, "no distance to the convex program\nrecorded (lambda = 0, or older runs)",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)
        return
    mean = " (mean over seeds)" if any(seeds for *_, seeds in series) else ""
    ax.set_yscale("log")
    if min(len(rows) for _, rows, _ in series) < 2:   # a point evaluated once: no curve to draw
        ax.plot([x for x, *_ in series], [rows[-1][1] for _, rows, _ in series], "o-", color="C3", ms=4)
        ax.set_xlabel(x_label)
        ax.set_title(f"distance to the convex program's Z*, last epoch{mean}", fontsize=8)
        return
    cmap, norm = plt.get_cmap("viridis"), Normalize(min(x for x, *_ in series), max(x for x, *_ in series))
    for x, rows, _ in series:
        ax.plot([e for e, _ in rows], [v for _, v in rows], "-o", ms=2, color=cmap(norm(x)))
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_title(f"distance to the convex program's Z* per point{mean}", fontsize=8)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=x_label)


def _with_interval(point, stat, value):
    """'v' for one seed; 'mean [lo, hi] (what)' over seeds (seed_stats.interval_of)."""
    iv = seed_stats.interval_of((point.get("stats") or {}).get(stat))
    if iv is None or point["stats"][stat]["n"] < 2:
        return f"{value:.3g}"
    return f"{point['stats'][stat]['mean']:.3g} [{iv[0]:.3g}, {iv[1]:.3g}] ({iv[2]})"


def plot_limit_figure(result, path):
    """Fig 9: mean cosines between columns of Z within A, within B and across, against n_A,
    with the simplex-ETF value -1/(K-1) and the convex program's prediction."""
    pts = sorted(result["points"], key=lambda p: p["params"]["n_A"])
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.4, 1]},
                                   layout="constrained")
    plot_sweep_distance_panel(fig, ax_d, pts, "n_A", "n_A (samples per majority class)")
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
    result = result_files.read_json(json_path)
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
    result_files.atomic_write_json(js, result)
    plot_figure_json(js, png)
    return png, js
