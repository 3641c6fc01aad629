"""The `python utils.py <command>` commands: prepare a dataset subset, redraw a figure from its
JSON, collect finished runs into one CSV, and the mixup replot commands (projection, grid, loss,
accuracy, compare, ufm)."""
import csv
import io
import json
import os
import sys

import numpy as np

import datasets
import losses
import mixup_geometry
import mixup_plots
import plot_utils
import read_back
import result_files
import seed_stats
import snapshot_files
import utils
from utils import UserError


def _run_config(run_dir):
    return read_back.run_config(run_dir)


def _run_label(cfg, key):
    return f"{cfg.get(key, '?')} s{cfg.get('seed', '?')}"


def cmd_mixup_projection(args):
    """Redraw the projection of one snapshot .npz."""
    snap = read_back.load_snapshot(args.snapshot)
    run_dir = os.path.dirname(os.path.abspath(args.snapshot))
    theory = None
    if not args.no_theory:
        cfg = read_back.run_config(run_dir) if os.path.isfile(os.path.join(run_dir, "config.json")) else {}
        theory = mixup_geometry.ufm_overlay(cfg, len(snap["b"]), snap["classes"], args.beta)
    epoch = int(snap["epoch"]) if "epoch" in snap else None
    name = (f"projection_e{epoch:04d}.png" if epoch is not None
            else os.path.splitext(os.path.basename(args.snapshot))[0] + ".png")
    out = args.out or mixup_plots.mixup_plot_path(args.plot_dir, run_dir, name)
    title = f"{os.path.basename(run_dir)}, epoch {epoch}" if epoch is not None else os.path.basename(args.snapshot)
    print(mixup_plots.save_mixup_projection(snap, out, title, theory))


def cmd_mixup_grid(args):
    """Redraw the grid of a run's snapshots over epochs."""
    utils.check_positive_ints("--dpi", [args.dpi])
    snaps = snapshot_files.mixup_snapshots(args.run_dir)
    loaded = [read_back.load_snapshot(p, "the grid of projections") for _, p in snaps]
    theory = None if args.no_theory else mixup_geometry.ufm_overlay(
        _run_config(args.run_dir), len(loaded[0]["b"]), loaded[0]["classes"], args.beta)
    out = args.out or mixup_plots.mixup_plot_path(args.plot_dir, args.run_dir, "projection_grid.png")
    cfg = _run_config(args.run_dir)
    print(mixup_plots.save_mixup_grid(loaded, [f"epoch {e}" for e, _ in snaps], out, theory,
                                     suptitle=f"{cfg.get('name', os.path.basename(args.run_dir))}: mixed features of "
                                              f"classes {[int(c) for c in loaded[0]['classes']]} over training",
                                     dpi=args.dpi))


def _cmd_curves(args, kind):
    runs = {_run_label(_run_config(d), args.label): os.path.join(d, "summary.csv") for d in args.run_dirs}
    columns = {"loss": ["epoch", "loss"], "accuracy": ["epoch", "train_acc", "test_acc"]}[kind]
    for path in runs.values():
        read_back.read_csv(path, columns, f"the {kind} curves")
    out = args.out or mixup_plots.mixup_plot_path(args.plot_dir, args.run_dirs[0], f"{kind}.png")
    print(mixup_plots.save_mixup_curves(runs, out, kind))


def cmd_mixup_loss(args):
    """Loss curves (train and test) of one or more runs."""
    _cmd_curves(args, "loss")


def cmd_mixup_accuracy(args):
    """Accuracy (and ECE) curves of one or more runs."""
    _cmd_curves(args, "accuracy")


def cmd_mixup_compare(args):
    """Last-snapshot projections of several runs side by side (each with its UFM overlay and summary
    numbers), and per group of runs (the config value `--label`; split by network when the runs span
    several) every geometry summary number's mean, std and 95% t-interval over the group's runs (its
    seeds). Summary numbers are averaged, never features, and never across networks."""
    snaps, titles, groups, theories, notes = [], [], {}, [], []
    configs = [_run_config(d) for d in args.run_dirs]
    several_networks = len({cfg.get("network") for cfg in configs}) > 1
    for d, cfg in zip(args.run_dirs, configs):
        epoch, path = snapshot_files.mixup_snapshots(d)[-1]
        summary = read_back.read_json(snapshot_files.mixup_snapshot_path(d, epoch, "json"), {},
                                      "the compared summaries")
        snaps.append(read_back.load_snapshot(path, "the compared projections"))
        titles.append(f"{_run_label(cfg, args.label)} e{epoch}")
        notes.append(mixup_plots.summary_note(summary))
        theories.append(None if args.no_theory else mixup_geometry.ufm_overlay(
            cfg, len(snaps[-1]["b"]), snaps[-1]["classes"], args.beta))
        group = str(cfg.get(args.label)) + (f" ({cfg.get('network')})" if several_networks else "")
        groups.setdefault(group, []).append(result_files.flatten(summary))
    stats = {}
    for label, summaries in groups.items():
        names = dict.fromkeys(k for s in summaries for k, v in s.items() if isinstance(v, (int, float, type(None)))
                              and not isinstance(v, bool))
        stats[label] = {"n_runs": len(summaries),
                        **{k: seed_stats.mean_std_interval([s.get(k) for s in summaries], seed_stats.quantity_range(k))
                           for k in names}}
    out = args.out or os.path.join(args.plot_dir, "mixup_compare.png")
    print(mixup_plots.save_mixup_grid(snaps, titles, out, theories, notes=notes,
                                     suptitle=f"last snapshots of {len(snaps)} runs by {args.label}"))
    json_out = os.path.splitext(out)[0] + ".json"
    result_files.atomic_write_json(json_out, stats)
    print(json_out)
    for label, group in stats.items():
        print(f"{args.label}={label} ({group['n_runs']} runs): mean ± std [95% t-interval, clipped to the "
              f"quantity's range; with 2 runs the range min, max]")
        for k, st in group.items():
            if k != "n_runs":
                print(f"  {k}: {_format_stat(st)}")


def _format_stat(st):
    """'mean ± std [lo, hi]' of seed_stats.mean_std_interval (the range with two values, said so);
    'undefined' without values."""
    if st["mean"] is None:
        return "undefined (no values)"
    if st["std"] is None:
        return f"{st['mean']:.4g} (one run: no std or interval)"
    lo, hi, _ = seed_stats.interval_of(st)
    return f"{st['mean']:.4g} ± {st['std']:.2g} {'' if st['ci95'] else 'range '}[{lo:.4g}, {hi:.4g}] (n={st['n']})"


def cmd_collect(args):
    """One CSV row per finished run (a folder with final.json) under DIR: the run folder, its
    configuration (lists as space-separated values) and its final metrics (the last evaluated epoch)."""
    if not os.path.isdir(args.dir):
        raise UserError(f"collect: no such folder {args.dir}")
    rows = []
    for root, dirs, files in os.walk(args.dir):
        dirs.sort()
        if "final.json" not in files:
            continue
        final = read_back.read_json(os.path.join(root, "final.json"), {"config": dict, "final": (dict, type(None))},
                                    "collect (the run's configuration and final metrics)")
        config = dict(final.get("config", {}), data=final.get("data"), sizes=final.get("sizes"))
        row = {"run_dir": root}
        row.update({f"config.{k}": " ".join(map(str, v)) if isinstance(v, list) else v for k, v in config.items()})
        row.update({f"final.{k}": v for k, v in (final.get("final") or {}).items()})
        rows.append(row)
    if not rows:
        raise UserError(f"collect: no finished run (a folder with final.json) under {args.dir}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out = args.out or os.path.join(args.dir, "runs.csv")
    result_files.atomic_write(out, lambda f: f.write(text.getvalue().encode()))
    print(out)
    print(f"{len(rows)} finished runs, {len(columns)} columns", file=sys.stderr)


def cmd_mixup_ufm(args):
    """Plot the free-feature (UFM) mixup optimum of a loss in the projection (no training)."""
    if args.num_classes < 3:
        raise UserError(f"--num_classes: needs >= 3, got {args.num_classes}")
    utils.check_positive("--beta", args.beta)
    classes = [0, 1, 2]
    if args.learned or args.loss not in mixup_geometry.MIXUP_CLOSED_FORM_LOSSES:
        snap = mixup_geometry.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes,
                                            loss_fn=losses.get_loss(args.loss), learned=args.learned,
                                            n_mix=11 if args.learned else 41)
    else:
        snap = mixup_geometry.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes)
    out = args.out or os.path.join(args.plot_dir, f"mixup_ufm_{args.loss}{'_learned' if args.learned else ''}.png")
    title = f"UFM optimum, {args.loss}, K={args.num_classes}, beta={args.beta}"
    print(mixup_plots.save_mixup_projection(snap, out, title))
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
                           ("mixup-compare", cmd_mixup_compare,
                            "runs side by side; summaries' mean ± std and 95%% interval over seeds")]:
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
    dataset = datasets.check_dataset(args.dataset)
    if (args.sizes is None) == (args.profile is None):
        raise UserError("--sizes or --profile: give one of them (--profile exp|step with --ratio --num_classes "
                        "--n_max)")
    if args.profile is not None:
        args.sizes = utils.profile_sizes(args.profile, args.ratio, args.num_classes, args.n_max)
    data = datasets.get_data(dataset, args.sizes, args.seed, args.data_dir, args.allow_test_fill)
    path, _ = datasets.subset_cache_path(dataset, data.sizes, args.seed, args.data_dir, args.allow_test_fill)
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
    read_back.check_figure_json(args.json, result_files.read_json(args.json))
    print(plot_utils.plot_figure_json(args.json, args.out))


def main(argv=None):
    parser = utils.ArgumentParser(prog="python utils.py",
                                  description="Data preparation and replotting from saved results.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("prepare", help="build and cache an imbalanced training subset (run where there is internet)")
    p.add_argument("--dataset", required=True, help=" | ".join(datasets.DATASETS))
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training images per class")
    p.add_argument("--profile", default=None, help="exp | step: long-tailed sizes (Cao et al.) instead of --sizes")
    p.add_argument("--ratio", type=float, default=100.0, help="--profile: n_max / n_min (default 100)")
    p.add_argument("--num_classes", type=int, default=10, help="--profile: classes (default 10)")
    p.add_argument("--n_max", type=int, default=5000, help="--profile: the largest class (default 5000)")
    p.add_argument("--seed", type=utils.seed_type, default=0)
    p.add_argument("--data_dir", default="data")
    p.add_argument("--allow_test_fill", action="store_true", help="top up short classes from the test split")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("replot-figure",
                       help="redraw a figure of block/minority_l/minority_n/limit_main, or opt_main's Z, from its JSON")
    p.add_argument("json", help="the JSON written beside the figure")
    p.add_argument("--out", default=None, help="output PNG (default: beside the JSON)")
    p.set_defaults(func=cmd_replot_figure)
    p = sub.add_parser("collect", help="one CSV row per finished run under DIR (configuration and final metrics)")
    p.add_argument("dir", help="a folder holding run folders, e.g. models")
    p.add_argument("--out", default=None, help="output CSV (default: DIR/runs.csv)")
    p.set_defaults(func=cmd_collect)
    add_mixup_commands(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)




if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
