"""The `python utils.py <command>` commands: prepare a dataset subset, redraw a figure from its
JSON, and the mixup replot commands (projection, grid, loss, accuracy, compare, ufm)."""
import json
import os
import sys

import numpy as np

import mixup_geometry
import plot_utils
import train_utils
import utils
from utils import UserError


def _run_config(run_dir):
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"run_dir: {run_dir} has no config.json")
    return utils.read_json(path)


def _run_label(cfg, key):
    return f"{cfg.get(key, '?')} s{cfg.get('seed', '?')}"


def cmd_mixup_projection(args):
    """Redraw the projection of one snapshot .npz."""
    snap = utils.load_snapshot(args.snapshot)
    run_dir = os.path.dirname(os.path.abspath(args.snapshot))
    theory = None
    if not args.no_theory:
        cfg = utils.read_json(os.path.join(run_dir, "config.json")) if os.path.isfile(
            os.path.join(run_dir, "config.json")) else {}
        theory = train_utils.ufm_overlay(cfg, len(snap["b"]), snap["classes"], args.beta)
    epoch = int(snap["epoch"]) if "epoch" in snap else None
    name = f"projection_e{epoch:04d}.png" if epoch is not None else os.path.splitext(os.path.basename(args.snapshot))[0] + ".png"
    out = args.out or plot_utils.mixup_plot_path(args.plot_dir, run_dir, name)
    title = f"{os.path.basename(run_dir)}, epoch {epoch}" if epoch is not None else os.path.basename(args.snapshot)
    print(plot_utils.save_mixup_projection(snap, out, title, theory))


def cmd_mixup_grid(args):
    """Redraw the grid of a run's snapshots over epochs."""
    utils.check_positive_ints("--dpi", [args.dpi])
    snaps = utils.mixup_snapshots(args.run_dir)
    loaded = [utils.load_snapshot(p) for _, p in snaps]
    theory = None if args.no_theory else train_utils.ufm_overlay(
        _run_config(args.run_dir), len(loaded[0]["b"]), loaded[0]["classes"], args.beta)
    out = args.out or plot_utils.mixup_plot_path(args.plot_dir, args.run_dir, "projection_grid.png")
    cfg = _run_config(args.run_dir)
    print(plot_utils.save_mixup_grid(loaded, [f"epoch {e}" for e, _ in snaps], out, theory,
                                     suptitle=f"{cfg.get('name', os.path.basename(args.run_dir))}: mixed features of "
                                              f"classes {[int(c) for c in loaded[0]['classes']]} over training",
                                     dpi=args.dpi))


def _cmd_curves(args, kind):
    runs = {_run_label(_run_config(d), args.label): os.path.join(d, "summary.csv") for d in args.run_dirs}
    out = args.out or plot_utils.mixup_plot_path(args.plot_dir, args.run_dirs[0], f"{kind}.png")
    print(plot_utils.save_mixup_curves(runs, out, kind))


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
    snaps, titles, groups, theories, notes = [], [], {}, [], []
    for d in args.run_dirs:
        cfg = _run_config(d)
        epoch, path = utils.mixup_snapshots(d)[-1]
        summary = utils.read_json(utils.mixup_snapshot_path(d, epoch, "json"))
        snaps.append(utils.load_snapshot(path))
        titles.append(f"{_run_label(cfg, args.label)} e{epoch}")
        notes.append(plot_utils.summary_note(summary))
        theories.append(None if args.no_theory else train_utils.ufm_overlay(
            cfg, len(snaps[-1]["b"]), snaps[-1]["classes"], args.beta))
        groups.setdefault(str(cfg.get(args.label)), []).append(summary)
    averaged = {}
    for label, summaries in groups.items():
        averaged[label] = {"n_runs": len(summaries)}
        for key in summaries[0]:
            vals = [s[key] for s in summaries if s.get(key) is not None]
            averaged[label][key] = float(np.mean(vals)) if vals else None
    out = args.out or os.path.join(args.plot_dir, "mixup_compare.png")
    print(plot_utils.save_mixup_grid(snaps, titles, out, theories, notes=notes,
                                     suptitle=f"last snapshots of {len(snaps)} runs by {args.label}"))
    json_out = os.path.splitext(out)[0] + ".json"
    utils.atomic_write_json(json_out, averaged)
    print(json_out)
    for label, s in averaged.items():
        print(f"{args.label}={label}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


def cmd_mixup_ufm(args):
    """Plot the free-feature (UFM) mixup optimum of a loss in the projection (no training)."""
    if args.num_classes < 3:
        raise UserError(f"--num_classes: needs >= 3, got {args.num_classes}")
    if not args.beta > 0:
        raise UserError(f"--beta: must be > 0, got {args.beta}")
    classes = [0, 1, 2]
    if args.learned or args.loss not in train_utils.MIXUP_CLOSED_FORM_LOSSES:
        snap = mixup_geometry.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes,
                                            loss_fn=train_utils.get_loss(args.loss), learned=args.learned,
                                            n_mix=11 if args.learned else 41)
    else:
        snap = mixup_geometry.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes)
    out = args.out or os.path.join(args.plot_dir, f"mixup_ufm_{args.loss}{'_learned' if args.learned else ''}.png")
    title = f"UFM optimum, {args.loss}, K={args.num_classes}, beta={args.beta}"
    print(plot_utils.save_mixup_projection(snap, out, title))
    print(json.dumps(mixup_geometry.mixup_geometry_summary(snap)))


def add_mixup_commands(subparsers):
    """Register the mixup replot commands on the CLI's subparsers."""
    def add(name, fn, help_text):
        p = subparsers.add_parser(name, help=help_text, description=fn.__doc__)
        p.set_defaults(func=fn)
        p.add_argument("--out", default=None, help="output PNG (default: where mixup_main writes it, "
                                                     "<plot_dir>/<run folder name>/)")
        p.add_argument("--plot_dir", default="plots", help="figures folder, as mixup_main's --plot_dir (default plots)")
        return p

    p = add("mixup-projection", cmd_mixup_projection, "projection of one snapshot .npz")
    p.add_argument("snapshot")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    p = add("mixup-grid", cmd_mixup_grid, "grid of a run's snapshots over epochs")
    p.add_argument("run_dir")
    p.add_argument("--dpi", type=int, default=110, help="resolution (default 110; the README's picture uses 80)")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    for name, fn, what in [("mixup-loss", cmd_mixup_loss, "loss curves"),
                           ("mixup-accuracy", cmd_mixup_accuracy, "accuracy and ECE curves"),
                           ("mixup-compare", cmd_mixup_compare, "runs side by side, summaries averaged over seeds")]:
        p = add(name, fn, what)
        p.add_argument("run_dirs", nargs="+")
        p.add_argument("--label", default="loss", help="config key that names (and groups) the runs")
        if name == "mixup-compare":
            p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
            p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    p = add("mixup-ufm", cmd_mixup_ufm, "free-feature mixup optimum of a loss")
    p.add_argument("--loss", default="cross_entropy")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--learned", action="store_true", help="learn the classifier instead of a fixed ETF")



def cmd_prepare(args):
    """Build (downloading if needed) and cache a training subset; print its path and per-class counts."""
    dataset = utils.check_dataset(args.dataset)
    data = utils.get_data(dataset, args.sizes, args.seed, args.data_dir, args.allow_test_fill)
    path, _ = utils.subset_cache_path(dataset, data.sizes, args.seed, args.data_dir, args.allow_test_fill)
    counts = np.bincount(data.y_train.numpy(), minlength=data.num_classes).tolist()
    test_counts = np.bincount(data.y_test.numpy(), minlength=data.num_classes).tolist()
    print(path if dataset != "synthetic" else "(synthetic data is generated on the fly, not cached)")
    print(f"train per class: {counts}")
    print(f"test per class:  {test_counts}")


def cmd_replot_figure(args):
    """Redraw an imbalanced-NC figure (block, minority_l, minority_n, limit) or opt_main's Z from its JSON,
    without retraining or solving."""
    if not os.path.isfile(args.json):
        raise UserError(f"replot-figure: no such file {args.json}")
    print(plot_utils.plot_figure_json(args.json, args.out))


def main(argv=None):
    parser = utils.ArgumentParser(prog="python utils.py", description="Data preparation and replotting from saved results.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("prepare", help="build and cache an imbalanced training subset (run where there is internet)")
    p.add_argument("--dataset", required=True, help=" | ".join(utils.DATASETS))
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="data")
    p.add_argument("--allow_test_fill", action="store_true", help="top up short classes from the test split")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("replot-figure", help="redraw a figure of block/minority_l/minority_n/limit_main, or opt_main's Z, from its JSON")
    p.add_argument("json", help="the JSON written beside the figure")
    p.add_argument("--out", default=None, help="output PNG (default: beside the JSON)")
    p.set_defaults(func=cmd_replot_figure)
    add_mixup_commands(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)




if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
