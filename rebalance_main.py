"""Minority collapse under re-balancing losses (theory.md section 9): for one two-cluster layout, the
minority spread against lambda under each loss, from the convex program (curve), the UFM and a trained
network (points at multiples of each loss's threshold lambda*), and whether each trained point collapses
on the same side of lambda* as the program.

    python rebalance_main.py                          # CIFAR-10, ResNet18, the paper's sizes (GPU)
    python rebalance_main.py --network UFM            # the UFM at full scale, on CPU
    python rebalance_main.py --quick                  # CPU preview (synthetic data, MLP_linear)
    python rebalance_main.py --quick --losses ldam --ldam_c 2 --oversample 1 5
"""
import argparse
import os
import sys

import numpy as np

import datasets
import figure_args
import figure_assembly
import figure_points
import figure_theory
import rebalance_plots
import rebalance_program
import result_files
import sweep
import utils
from utils import UserError

FIGURE = "rebalance"
QUICK = dict(dataset_t="synthetic", network="mlp_linear", mlp_width=64, lr=0.1, weight_decay=0.0, na=100, nb=20,
             train_epochs=200)
COLLAPSED_REL = 0.05  # a trained point counts as collapsed below this relative minority spread (as benchmark.py)


def parse_args(argv):
    p = utils.ArgumentParser(description="Minority collapse against lambda under re-balancing losses.",
                             epilog=figure_args.quick_epilog(QUICK, "a UFM and a network per loss and lambda; the "
                                                       "lambdas are multiples of each loss's threshold."))
    figure_args.add_figure_args(p, f"epochs (default 2000; --quick {QUICK['train_epochs']}; UFM 40 L-BFGS epochs)")
    p.add_argument("--na", type=int, default=500, help="samples per majority class (default 500)")
    p.add_argument("--nb", type=int, default=100, help="samples per minority class (default 100)")
    p.add_argument("--losses", nargs="+", default=list(rebalance_program.LOSS_NAMES),
                   help="the losses compared (default all five); with --oversample, cross-entropy oversampled too")
    p.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.8, 1.25, 2.0],
                   help="trained lambdas as multiples of each loss's lambda* (default 0.5 0.8 1.25 2)")
    p.add_argument("--no_ufm", action="store_true", help="train no UFM points (the network's only)")
    p.set_defaults(train_epochs=2000)
    return utils.parse_with_presets(p, argv, QUICK)


def check_args(args):
    """Every argument checked before any training; returns (sizes, clusters, the loss entries)."""
    K = figure_args.check_figure_args(args)
    utils.check_positive_ints("--na/--nb", [args.na, args.nb])
    utils.check_positive("--factors", args.factors)
    if args.loss != "cross_entropy":
        raise UserError("--loss: rebalance_main compares several losses; name them with --losses")
    for name in args.losses:
        utils.check_choice("--losses", name, rebalance_program.LOSS_NAMES)
    sizes = [args.na] * args.ka + [args.nb] * (K - args.ka)
    clusters = [list(range(args.ka)), list(range(args.ka, K))]
    if K - args.ka < 2:
        raise UserError(f"--ka {args.ka}: the minority needs at least two classes to collapse")
    datasets.check_class_sizes(args.dataset_t, sizes, args.allow_test_fill, "--na/--nb", args.network)
    entries = [(name, None) for name in args.losses]
    if args.oversample is not None:
        entries.append(("cross_entropy", args.oversample))
    for name, over in entries:
        figure_points.point_loss(entry_args(args, name, over), sizes, clusters)   # parameters and --oversample checked
    return sizes, clusters, entries


def entry_args(args, name, over, network=None):
    """The arguments of one loss entry (and network): a copy of args with --loss / --oversample set."""
    a = argparse.Namespace(**vars(args))
    a.loss, a.oversample = name, over
    if network is not None:
        a.network = network
    return a


def label_of(name, over):
    return name if over is None else f"oversample {'-'.join(map(str, over))}"


def collapsed_flags(zs):
    """Per point: spread < COLLAPSED_REL max(||Z||, 5 % of the largest ||Z|| of its loss)."""
    scale = max([z["z_norm"] for z in zs if z is not None] + [0.0])
    return [None if z is None else bool(z["minority_spread"] < COLLAPSED_REL * max(z["z_norm"], 0.05 * scale, 1e-12))
            for z in zs]


def main(argv=None):
    # Arguments: the paper's layout by default, the CPU preview with --quick; all checked before training.
    args = parse_args(argv)
    sizes, clusters, entries = check_args(args)
    networks = [args.network] + ([] if args.no_ufm or args.network == "ufm" else ["ufm"])

    # Points: per loss entry and network, one run per factor x that loss's lambda*.
    thresholds, points = [], []
    for name, over in entries:
        lam_star = figure_points.loss_threshold(entry_args(args, name, over), sizes, clusters, args.reg_b)
        thresholds.append(lam_star)
        for net in networks:
            a = entry_args(args, name, over, net)
            points += [figure_points.figure_point(FIGURE, a, sizes, clusters,
                                                  dict(lam=f * lam_star, loss=label_of(name, over), factor=f,
                                                       network=net),
                                                  epochs=args.train_epochs, milestone_frac=2 / 3, weight_decay=0.0)
                       for f in args.factors]

    # Train the missing points here or as jobs (--launch), or only --point I; reuse the finished ones.
    records, missing = sweep.train_points(points, args, argv)

    # Analyse: each point against the program (same side of lambda*?); the program's curve per loss.
    result = figure_assembly.assemble_figure(FIGURE, dict(dataset=args.dataset_t, network=args.network, k_A=args.ka,
                                                n_A=args.na, n_B=args.nb, lam_b=args.reg_b, quick=args.quick),
                                   points, records, missing, args.reg_b)
    result["losses"] = [loss_summary(args, name, over, lam_star, result["points"], sizes, clusters, networks)
                        for (name, over), lam_star in zip(entries, thresholds)]
    result["title"] = (f"Minority collapse under re-balancing losses: {figure_args.figure_tag(args)}, k_A={args.ka}, "
                       f"n_A={args.na}, n_B={args.nb}, λ_b={args.reg_b:g}")
    for e in result["losses"]:
        for net, agree in e["agree"].items():
            print(f"{e['name']}: lambda* = {e['threshold']:.6g}; {net}: collapses on the program's side of lambda* at "
                  f"{sum(a for a in agree if a is not None)} of {sum(a is not None for a in agree)} lambdas")

    # Plot: one panel per loss, with the JSON beside it.
    stem = f"{FIGURE}_{figure_args.figure_tag(args)}_ka{args.ka}" + ("_quick" if args.quick else "")
    png, js = os.path.join(args.plot_dir, stem + ".png"), os.path.join(args.plot_dir, stem + ".json")
    result_files.atomic_write_json(js, result)
    rebalance_plots.save_rebalance_figure(result, png)
    print(png + "\n" + js)
    return 0


def loss_summary(args, name, over, lam_star, pts, sizes, clusters, networks):
    """One loss's panel: the program's curve on 0.3 .. 2.5 lambda*, and per network its points' spreads,
    collapse flags and agreement with the program's side of lambda*."""
    label = label_of(name, over)
    grid = sorted(set(np.geomspace(0.3, 2.5, 25).tolist() + list(args.factors)))
    loss = figure_points.point_loss(entry_args(args, name, over), sizes, clusters)
    curve = figure_theory.theory_curve([g * lam_star for g in grid], lambda lam: (sizes, clusters, lam,
                                                                                      args.reg_b, loss))
    out = dict(name=label, threshold=lam_star, curve={"lam": curve["x"], "spread": curve["minority_spread"]},
               lam=[f * lam_star for f in args.factors], agree={}, spread={}, collapsed={}, distances={})
    for net in networks:
        mine = {p["params"]["factor"]: p for p in pts if p["params"]["loss"] == label and p["params"]["network"] == net}
        zs = [mine.get(f) for f in args.factors]
        flags = collapsed_flags(zs)
        out["spread"][net] = [None if z is None else z["minority_spread"] for z in zs]
        out["collapsed"][net] = flags
        out["agree"][net] = [None if c is None else c == (f >= 1) for c, f in zip(flags, args.factors)]
        out["distances"][net] = [None if z is None else z.get("distances") for z in zs]
    return out


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
