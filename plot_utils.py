"""Plotting: every matplotlib figure (Z heat-maps, the imbalanced-NC figures, mixup projections
and curves), and redrawing a figure from its JSON."""
import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap, Normalize, SymLogNorm

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
    im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap, norm=norm if norm is not None else symlog_norm([np.nan_to_num(Z)]),
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
    """Write a matplotlib figure as PNG atomically and close it."""
    utils.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def save_z_heatmap(Z, cluster_sizes, title, path):
    """One Z heat-map with its colour bar, written to path."""
    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = plot_z_heatmap(ax, Z, cluster_sizes, title=title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)


def _cluster_sizes(point):
    return [len(c) for c in point["clusters"]]


def _seed_spread(ax, x, point, stat, value, color):
    """With several seeds at a point ('stats' in its record, sweep.merge_seeds): each seed's value as a
    faint dot and the mean with its 95% t-interval as an error bar. Returns the value to mark: the
    mean over seeds, or `value` (the one seed's) as before."""
    s = (point.get("stats") or {}).get(stat)
    if s is None:
        return value
    vals = [utils.flatten(r).get(stat) for r in point["seeds"]]
    ax.plot([x] * len(vals), [np.nan if v is None else v for v in vals], ".", color=color, alpha=0.35, ms=4)
    if s["ci95"] is not None:
        label = f"mean of {s['n']} seeds (dots), 95% t-interval"
        ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]], color=color,
                    capsize=3, lw=1, label=None if label in ax.get_legend_handles_labels()[1] else label)
    return s["mean"]


def _history_band(ax, point, key, color):
    """With several seeds: the range (min to max over seeds) of an NC metric at each epoch, shaded."""
    hists = [r["history"] for r in point.get("seeds", []) if r.get("history")]
    if len(hists) < 2:
        return
    by_epoch = {}
    for hist in hists:
        for row in hist:
            if row.get(key) is not None and row[key] > 0:
                by_epoch.setdefault(row["epoch"], []).append(row[key])
    ep = sorted(e for e, v in by_epoch.items() if len(v) == len(hists))
    ax.fill_between(ep, [min(by_epoch[e]) for e in ep], [max(by_epoch[e]) for e in ep], color=color, alpha=0.2, lw=0)


def plot_minority_figure(result, path):
    """Figs 5-8: grid of Z heat-maps sorted by the swept value (shared symlog scale, cluster lines,
    theory verdict per panel) above minority_spread against the swept value, with the convex
    program's curve and the collapse threshold."""
    x_key, x_label = result["settings"]["x_key"], result["settings"]["x_label"]
    pts = sorted(result["points"], key=lambda p: p["params"][x_key])
    n = max(len(pts), 1)
    ncol = min(n, 5)
    nrow = -(-n // ncol)
    fig = plt.figure(figsize=(max(2.1 * ncol + 0.8, 7.0), 2.3 * nrow + 3.2))
    gs = fig.add_gridspec(nrow + 1, ncol + 1, height_ratios=[1] * nrow + [1.5], width_ratios=[1] * ncol + [0.08],
                          hspace=0.45, wspace=0.15)
    norm = symlog_norm([p["Z"] for p in pts]) if pts else None
    im = None
    for i, p in enumerate(pts):
        ax = fig.add_subplot(gs[i // ncol, i % ncol])
        v = p["params"][x_key]
        mark = "collapse" if p["theory"]["verdict"] == "collapse" else "no collapse"
        im = plot_z_heatmap(ax, p["Z"], _cluster_sizes(p), norm,
                            f"{x_label} = {v:.4g}\ntheory: {mark}\nspread {p['minority_spread']:.3g}")
        for s in ax.spines.values():
            s.set_edgecolor("tab:red" if mark == "collapse" else "tab:blue")
            s.set_linewidth(2)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(gs[:nrow, ncol]), label="Z (symlog)")
    ax = fig.add_subplot(gs[nrow, :ncol])
    curve = result.get("theory_curve") or {}
    if curve.get("x"):
        ax.plot(curve["x"], np.array(curve["minority_spread"], dtype=float), "-", color="0.5",
                label="convex program (UFM)")
    ax.plot([p["params"][x_key] for p in pts],
            [_seed_spread(ax, p["params"][x_key], p, "minority_spread", p["minority_spread"], "tab:red") for p in pts],
            "o", color="tab:red",
            label=f"trained ({result['settings'].get('network', '')})")
    thr = result.get("threshold")
    if thr is not None:
        ax.axvline(thr, ls="--", color="k", label=f"threshold {x_label}* = {thr:.4g}")
    ax.set_xlabel(x_label)
    ax.set_ylabel("minority spread  max ||z_j - z_k||")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10, y=1.0)
    return save_figure(fig, path)


def plot_block_figure(result, path):
    """Figs 1-2: NC metrics against epoch (log axes); trained Z beside the convex program's Z."""
    p = result["points"][0]
    hist = result["history"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ep = [r["epoch"] for r in hist]
    for key in ("nc1", "nc1_weighted", "nc2_equinorm_means", "nc2_equiangle", "nc3"):
        ys = [r.get(key) for r in hist]
        if any(y is not None and y > 0 for y in ys):
            line = axes[0].plot(ep, [y if y is not None and y > 0 else np.nan for y in ys], "-o", ms=2, label=key)[0]
            _history_band(axes[0], p, key, line.get_color())
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_title("NC metrics", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    # The diagonal dominates Z; the blocks live in the off-diagonal entries: show those on a linear scale.
    K = len(p["Z"])
    theory_Z = p["theory"]["Z"] if p["theory"]["Z"] is not None else np.full((K, K), np.nan)  # solver failed
    Zs = [np.array(p["Z"], dtype=float), np.array(theory_Z, dtype=float)]
    off = ~np.eye(len(Zs[0]), dtype=bool)
    for Z in Zs:
        Z[~off] = np.nan
    vals = np.concatenate([Z[off] for Z in Zs])
    norm = Normalize(np.nanmin(vals), np.nanmax(vals))
    sizes = _cluster_sizes(p)
    diag = [np.diag(np.array(p["Z"], dtype=float)), np.diag(np.array(theory_Z, dtype=float))]
    plot_z_heatmap(axes[1], Zs[0], sizes, norm, f"trained Z ({result['settings'].get('network', '')}), off-diagonal\n"
                   f"(diagonal {diag[0].min():.3g} .. {diag[0].max():.3g})")
    im = plot_z_heatmap(axes[2], Zs[1], sizes, norm, f"convex program Z (lambda = {p['params']['lam']:.3g}), off-diagonal\n"
                        f"(diagonal {diag[1].min():.3g} .. {diag[1].max():.3g})")
    fig.colorbar(im, ax=axes[1:], fraction=0.03, label="Z off-diagonal (linear)")
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10)
    return save_figure(fig, path)


def plot_limit_figure(result, path):
    """Fig 9: mean cosines between columns of Z within A, within B and across, against n_A,
    with the simplex-ETF value -1/(K-1) and the convex program's prediction."""
    pts = sorted(result["points"], key=lambda p: p["params"]["n_A"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = result.get("theory_curve") or {}
    styles = (("within_A", "tab:red", "within A"), ("within_B", "tab:blue", "within B"), ("across", "tab:green", "across A-B"))
    for key, color, label in styles:
        if curve.get("x"):
            ax.plot(curve["x"], np.array(curve[key], dtype=float), "--", color=color, alpha=0.7, label=f"{label} (convex program)")
        vals = [(p["params"]["n_A"], _seed_spread(ax, p["params"]["n_A"], p, _COS_STATS[key], _cos_of(p["cosines"], key),
                                                  color)) for p in pts]
        ax.plot([v[0] for v in vals], [np.nan if v[1] is None else v[1] for v in vals], "o-", color=color, label=f"{label} (trained)")
    K = len(pts[0]["sizes"]) if pts else result["settings"].get("num_classes", 10)
    ax.axhline(-1 / (K - 1), color="k", lw=1, label=f"ETF -1/(K-1) = {-1 / (K - 1):.3f}")
    ax.set_xlabel("n_A (samples per majority class)")
    ax.set_ylabel("mean cosine between columns of Z")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(alpha=0.3)
    ax.set_title(result["settings"].get("title", result["figure"]), fontsize=9)
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
    """Redraw a figure from its saved JSON (beside it, same stem, unless png_path is given)."""
    result = utils.read_json(json_path)
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
# colour ramps from black (mix = 1/2) to full colour (lam = 0 or 1)
_SAME_CMAP = LinearSegmentedColormap.from_list("same", ["black", "tab:blue"])
_DIFF_CMAP = LinearSegmentedColormap.from_list("diff", ["black", "tab:orange"])


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


def plot_mixup_projection(ax, snap, title=None, theory=None):
    """Scatter the 2-D projection (theory.md section 5) of a snapshot's mixed features on ax:
    same-class pairs blue, different-class orange, darker as mix -> 1/2 (black at 1/2); classifier
    rows as labelled lines. `theory`, a UFM snapshot, is overlaid as grey curves scaled so its
    same-class vertices sit at the median radius of the same-class features."""
    classes = [int(c) for c in snap["classes"]]
    P, centre = mixup_geometry.mixup_projection(snap["W"], classes)
    pts = mixup_geometry.project(snap["features"], P, centre)
    same = snap["y_a"] == snap["y_b"]
    shade = 2 * np.abs(snap["mix"] - 0.5)
    ax.scatter(*pts[~same].T, c=shade[~same], cmap=_DIFF_CMAP, vmin=0, vmax=1, s=6, lw=0,
               label="different class")
    ax.scatter(*pts[same].T, c=shade[same], cmap=_SAME_CMAP, vmin=0, vmax=1, s=6, lw=0, label="same class")
    reach = 1.15 * np.max(np.linalg.norm(pts, axis=1)) if len(pts) else 1.0
    wp = mixup_geometry.project(np.asarray(snap["W"])[classes], P, centre)
    for c, w in zip(classes, wp):
        tip = w / (np.linalg.norm(w) + 1e-30) * reach
        ax.plot([0, tip[0]], [0, tip[1]], color="tab:green", lw=1)
        ax.annotate(f"w{c}", tip, color="tab:green", fontsize=8, ha="center", va="center")
    if theory is not None and same.any():
        verts, curves = _theory_points(theory, np.median(np.linalg.norm(pts[same], axis=1)))
        for curve in curves:
            ax.plot(*curve.T, color="0.45", ls="--", lw=1.2)
        ax.scatter(*np.array(verts).T, marker="x", color="0.3", s=40, zorder=3, label="UFM optimum")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_mixup_projection(snap, path, title=None, theory=None):
    """One projection figure (with legend) written to path."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    plot_mixup_projection(ax, snap, title, theory)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2, frameon=False)
    return save_figure(fig, path)


def save_mixup_grid(snaps, titles, path, theory=None):
    """Projections of several snapshots (e.g. over epochs) side by side, at most 4 per row."""
    ncol = min(4, len(snaps))
    nrow = -(-len(snaps) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, snap, t in zip(axes.flat, snaps, titles):
        plot_mixup_projection(ax, snap, t, theory)
    for ax in axes.flat[len(snaps):]:
        ax.axis("off")
    return save_figure(fig, path)


def save_mixup_curves(runs, path, kind):
    """Curves from each run's summary.csv (runs: {label: csv path}); kind 'loss' (the mixed
    training loss and the plain test loss) or 'accuracy' (clean train and test accuracy, test ECE)."""
    cols = {"loss": [("loss", "-", "train (mixed)"), ("test_loss", "--", "test")],
            "accuracy": [("train_acc", "-", "train"), ("test_acc", "--", "test"), ("test_ece", ":", "test ECE")]}[kind]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, csv_path) in enumerate(runs.items()):
        if not os.path.isfile(csv_path):
            raise UserError(f"run_dirs: no summary.csv at {csv_path}")
        rows = utils.read_csv(csv_path)
        for col, ls, what in cols:
            if rows and col in rows[0]:
                ax.plot([r["epoch"] for r in rows], [r[col] for r in rows], ls=ls, color=f"C{i}",
                        label=f"{label}: {what}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(kind)
    if kind == "loss":
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ======================================================================================
# The mixup study: projection tables, NC dynamics over seeds, calibration  (mixup study)
# ======================================================================================


def save_projection_table(panels, row_labels, col_labels, path, title=None):
    """A table of projections: panels[r][c] is (snapshot, UFM overlay) or None (not trained yet,
    left blank and labelled so); rows and columns labelled (e.g. datasets x networks)."""
    nrow, ncol = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 3.0 * nrow), squeeze=False)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            if panel is None:
                ax.text(0.5, 0.5, "not trained yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                plot_mixup_projection(ax, panel[0], theory=panel[1])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=10)
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
    over seeds, error bars the 95% t-interval (none where a cell has one seed)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in table)) or ["(no finished cells)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in table if r["dataset"] == dataset]
        groups = list(dict.fromkeys((r["model"], r["loss"]) for r in rows))
        for j, mixup in enumerate((True, False)):
            for i, g in enumerate(groups):
                r = next((r for r in rows if (r["model"], r["loss"], r["mixup"]) == (*g, mixup)), None)
                if r is None:
                    continue
                m, lo, hi = r["test_ece_mean"], r["test_ece_ci_lo"], r["test_ece_ci_hi"]
                err = None if not np.isfinite(lo) else [[m - lo], [hi - m]]
                ax.bar(i + (j - 0.5) * 0.4, m, 0.4, yerr=err, capsize=3, color="tab:orange" if mixup else "tab:blue",
                       label=("mixup" if mixup else "no mixup") if i == 0 else None)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{m}\n{loss}" for m, loss in groups], fontsize=7)
        ax.set_ylabel("test ECE")
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
