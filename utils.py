"""Shared plumbing: errors, seeds, devices, datasets and cached subsets, result files,
plotting helpers, and the `python utils.py <command>` CLI."""

# ======================================================================================
# Errors, seeds, devices  (foundation)
# ======================================================================================


# ======================================================================================
# Data: datasets, imbalanced subsets, cache  (foundation)
# ======================================================================================


# ======================================================================================
# Result files: atomic writes, run folders, sweeps  (foundation)
# ======================================================================================


# ======================================================================================
# Plotting helpers: Z heat-maps and figure grids  (imbalanced-NC figures)
# ======================================================================================


# ======================================================================================
# Plotting helpers: mixup projections and curves  (mixup)
# ======================================================================================
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

# colour ramps from black (lam = 1/2) to full colour (lam = 0 or 1)
_SAME_CMAP = LinearSegmentedColormap.from_list("same", ["black", "tab:blue"])
_DIFF_CMAP = LinearSegmentedColormap.from_list("diff", ["black", "tab:orange"])


def load_snapshot(path):
    """A mixup snapshot .npz as a dict of arrays (no pickle)."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot: no such file {path}")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_csv_columns(path):
    """A CSV file as {column: list of floats} (empty cells become nan)."""
    if not os.path.isfile(path):
        raise UserError(f"csv: no such file {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {}
    for r in rows:
        for k, v in r.items():
            try:
                cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
            except ValueError:
                cols.setdefault(k, []).append(float("nan"))
    return cols


def _save_fig(fig, path):
    """Atomic PNG write (tmp file in the same folder, then os.replace)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _theory_points(theory, scale):
    """Projected UFM optimum: same-class vertices and one lam-ordered curve per class pair."""
    import ana_utils
    classes = [int(c) for c in theory["classes"]]
    P, centre = ana_utils.mixup_projection(theory["W"], classes)
    pts = ana_utils.project(theory["features"], P, centre)
    same = theory["y_a"] == theory["y_b"]
    radius = np.median(np.linalg.norm(pts[same], axis=1))
    pts = pts * scale / radius
    verts = [pts[same & (theory["y_a"] == c)].mean(0) for c in classes]
    curves = []
    for i, c in enumerate(classes):
        for c2 in classes[i + 1:]:
            m = (theory["y_a"] == c) & (theory["y_b"] == c2)
            order = np.argsort(theory["lam"][m])
            curves.append(pts[m][order])
    return verts, curves


def plot_mixup_projection(ax, snap, title=None, theory=None):
    """Scatter the 2-D projection (theory.md section 5) of a snapshot's mixed features on ax:
    same-class pairs blue, different-class orange, darker as lam -> 1/2 (black at 1/2); classifier
    rows as labelled lines. `theory`, a UFM snapshot, is overlaid as grey curves scaled so its
    same-class vertices sit at the median radius of the same-class features."""
    import ana_utils
    classes = [int(c) for c in snap["classes"]]
    P, centre = ana_utils.mixup_projection(snap["W"], classes)
    pts = ana_utils.project(snap["features"], P, centre)
    same = snap["y_a"] == snap["y_b"]
    shade = 2 * np.abs(snap["lam"] - 0.5)
    ax.scatter(*pts[~same].T, c=shade[~same], cmap=_DIFF_CMAP, vmin=0, vmax=1, s=6, lw=0,
               label="different class")
    ax.scatter(*pts[same].T, c=shade[same], cmap=_SAME_CMAP, vmin=0, vmax=1, s=6, lw=0, label="same class")
    reach = 1.15 * np.max(np.linalg.norm(pts, axis=1)) if len(pts) else 1.0
    wp = ana_utils.project(np.asarray(snap["W"])[classes], P, centre)
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
    ax.legend(loc="lower left", fontsize=7, markerscale=2, framealpha=0.8)
    return _save_fig(fig, path)


def save_mixup_grid(snaps, titles, path, theory=None):
    """Projections of several snapshots (e.g. over epochs) side by side, at most 4 per row."""
    ncol = min(4, len(snaps))
    nrow = -(-len(snaps) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, snap, t in zip(axes.flat, snaps, titles):
        plot_mixup_projection(ax, snap, t, theory)
    for ax in axes.flat[len(snaps):]:
        ax.axis("off")
    return _save_fig(fig, path)


def save_mixup_curves(runs, path, kind):
    """Train/test curves from each run's summary.csv (runs: {label: csv path}); kind 'loss' or
    'accuracy' (accuracy panels also show the test ECE)."""
    cols = {"loss": [("train_loss", "-"), ("test_loss", "--")],
            "accuracy": [("train_acc", "-"), ("test_acc", "--"), ("test_ece", ":")]}[kind]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, csv_path) in enumerate(runs.items()):
        data = read_csv_columns(csv_path)
        for col, ls in cols:
            if col in data:
                ax.plot(data["epoch"], data[col], ls=ls, color=f"C{i}", label=f"{label} {col}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(kind)
    if kind == "loss":
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save_fig(fig, path)


MIXUP_CLOSED_FORM_LOSSES = ("cross_entropy", "mse")


def mixup_snapshot_path(run_dir, epoch, ext="npz"):
    """Where a run keeps the snapshot of an epoch (ext 'npz') and its geometry summary ('json')."""
    return os.path.join(run_dir, f"mixup_e{epoch:04d}.{ext}")


def mixup_snapshots(run_dir):
    """Sorted [(epoch, npz path)] of a run's snapshots."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run_dir: no such folder {run_dir}")
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("mixup_e") and n.endswith(".npz"))
    if not names:
        raise UserError(f"run_dir: {run_dir} holds no mixup_e*.npz snapshots")
    return [(int(n[7:-4]), os.path.join(run_dir, n)) for n in names]


def ufm_overlay(cfg, K, classes, beta=0.01):
    """The free-feature optimum for a run's loss (cfg keys loss, mse_scale, smoothing,
    focal_gamma) with a fixed ETF: closed form for CE/MSE, direct optimisation otherwise."""
    import ana_utils      # imported here: ana_utils imports utils
    import train_utils
    loss = cfg.get("loss", "cross_entropy")
    loss_fn = None if loss in MIXUP_CLOSED_FORM_LOSSES else train_utils.get_loss(
        loss, cfg.get("mse_scale", 1.0), cfg.get("smoothing", 0.1), cfg.get("focal_gamma", 2.0))
    return ana_utils.ufm_mixup_snapshot(loss, K, beta, classes, loss_fn=loss_fn,
                                        mse_scale=cfg.get("mse_scale", 1.0))


def _run_config(run_dir):
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"run_dir: {run_dir} has no config.json")
    return read_json(path)


def _run_label(cfg, key):
    return f"{cfg.get(key, '?')} s{cfg.get('seed', '?')}"


def cmd_mixup_projection(args):
    """Redraw the projection of one snapshot .npz."""
    snap = load_snapshot(args.snapshot)
    run_dir = os.path.dirname(os.path.abspath(args.snapshot))
    theory = None
    if not args.no_theory:
        cfg = read_json(os.path.join(run_dir, "config.json")) if os.path.isfile(
            os.path.join(run_dir, "config.json")) else {}
        theory = ufm_overlay(cfg, len(snap["b"]), snap["classes"], args.beta)
    out = args.out or os.path.splitext(args.snapshot)[0] + ".png"
    print(save_mixup_projection(snap, out, os.path.basename(args.snapshot), theory))


def cmd_mixup_grid(args):
    """Redraw the grid of a run's snapshots over epochs."""
    snaps = mixup_snapshots(args.run_dir)
    loaded = [load_snapshot(p) for _, p in snaps]
    theory = None if args.no_theory else ufm_overlay(
        _run_config(args.run_dir), len(loaded[0]["b"]), loaded[0]["classes"], args.beta)
    out = args.out or os.path.join(args.run_dir, "mixup_grid.png")
    print(save_mixup_grid(loaded, [f"epoch {e}" for e, _ in snaps], out, theory))


def _cmd_curves(args, kind):
    runs = {_run_label(_run_config(d), args.label): os.path.join(d, "summary.csv") for d in args.run_dirs}
    out = args.out or os.path.join(args.run_dirs[0], f"mixup_{kind}.png")
    print(save_mixup_curves(runs, out, kind))


def cmd_mixup_loss(args):
    """Loss curves (train and test) of one or more runs."""
    _cmd_curves(args, "loss")


def cmd_mixup_accuracy(args):
    """Accuracy (and ECE) curves of one or more runs."""
    _cmd_curves(args, "accuracy")


def cmd_mixup_compare(args):
    """Last-snapshot projections of several runs side by side, and their geometry summaries
    averaged over seeds (runs grouped by the config value `--label`). Summary numbers are
    averaged, never features of different networks."""
    snaps, titles, groups = [], [], {}
    for d in args.run_dirs:
        cfg = _run_config(d)
        epoch, path = mixup_snapshots(d)[-1]
        summary = read_json(mixup_snapshot_path(d, epoch, "json"))
        snaps.append(load_snapshot(path))
        titles.append(f"{_run_label(cfg, args.label)} e{epoch}")
        groups.setdefault(str(cfg.get(args.label)), []).append(summary)
    averaged = {}
    for label, summaries in groups.items():
        averaged[label] = {"n_runs": len(summaries)}
        for key in summaries[0]:
            vals = [s[key] for s in summaries if s.get(key) is not None]
            averaged[label][key] = float(np.mean(vals)) if vals else None
    out = args.out or "plots/mixup_compare.png"
    print(save_mixup_grid(snaps, titles, out))
    json_out = os.path.splitext(out)[0] + ".json"
    atomic_write_json(json_out, averaged)
    print(json_out)
    for label, s in averaged.items():
        print(f"{args.label}={label}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


def cmd_mixup_ufm(args):
    """Plot the free-feature (UFM) mixup optimum of a loss in the projection (no training)."""
    import ana_utils
    import train_utils
    if args.num_classes < 3:
        raise UserError(f"--num_classes: needs >= 3, got {args.num_classes}")
    if not args.beta > 0:
        raise UserError(f"--beta: must be > 0, got {args.beta}")
    classes = [0, 1, 2]
    if args.learned or args.loss not in MIXUP_CLOSED_FORM_LOSSES:
        snap = ana_utils.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes,
                                            loss_fn=train_utils.get_loss(args.loss), learned=args.learned,
                                            n_lam=11 if args.learned else 41)
    else:
        snap = ana_utils.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes)
    out = args.out or f"plots/mixup_ufm_{args.loss}{'_learned' if args.learned else ''}.png"
    title = f"UFM optimum, {args.loss}, K={args.num_classes}, beta={args.beta}"
    print(save_mixup_projection(snap, out, title))
    print(json.dumps(ana_utils.mixup_geometry_summary(snap)))


def add_mixup_commands(subparsers):
    """Register the mixup replot commands on the CLI's subparsers."""
    def add(name, fn, help_text):
        p = subparsers.add_parser(name, help=help_text, description=fn.__doc__)
        p.set_defaults(func=fn)
        p.add_argument("--out", default=None, help="output PNG (default: next to the input)")
        return p

    p = add("mixup-projection", cmd_mixup_projection, "projection of one snapshot .npz")
    p.add_argument("snapshot")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    p = add("mixup-grid", cmd_mixup_grid, "grid of a run's snapshots over epochs")
    p.add_argument("run_dir")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    for name, fn, what in [("mixup-loss", cmd_mixup_loss, "loss curves"),
                           ("mixup-accuracy", cmd_mixup_accuracy, "accuracy and ECE curves"),
                           ("mixup-compare", cmd_mixup_compare, "runs side by side, summaries averaged over seeds")]:
        p = add(name, fn, what)
        p.add_argument("run_dirs", nargs="+")
        p.add_argument("--label", default="loss", help="config key that names (and groups) the runs")
    p = add("mixup-ufm", cmd_mixup_ufm, "free-feature mixup optimum of a loss")
    p.add_argument("--loss", default="cross_entropy")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--learned", action="store_true", help="learn the classifier instead of a fixed ETF")


# ======================================================================================
# CLI: python utils.py <command>
# ======================================================================================
