"""The mixup study's pictures: 2-D projections of mixed features (one, a grid over epochs, a table over
datasets and networks), loss and accuracy curves, NC dynamics over seeds, calibration and NC against depth."""
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import mixup_geometry
import result_files
from plot_drawing import save_figure
from utils import UserError


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
        rows = result_files.read_csv(csv_path)
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
    the diverged and failed cells of a row (n_diverged, n_failed: left out of its mean) written in red on its
    bar."""
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
    rows = result_files.read_csv(csv_path) if os.path.isfile(csv_path) else []
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
