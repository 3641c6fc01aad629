"""Figure 9: the angles between classes as the sample size grows (lambda = lam_n / N).

k_A majority classes of n_A samples and K - k_A classes of n_B = n_A / ratio (an integer); for
each n_A one run with lambda = --lam_n / N, lam_H = lambda/20, lam_W = 5 lambda (theory.md
section 2). Plotted: the mean cosines between columns of Z (classes as columns) within A, within
B and across, against n_A, with the simplex-ETF value -1/(K-1) and the convex program's answer
(nearly flat over this range: lambda sqrt(N) = 0.1 / sqrt(N)).

    python limit_main.py --nalist 500 1000 1500 2000 2500 3000 3500 4000 4500 5000 5500 --allow_test_fill
    python limit_main.py --network UFM          # the same sweep on the UFM, on CPU
    python limit_main.py --quick                # CPU preview (its time: --help)
"""
import sys

import datasets
import figure_args
import figure_assembly
import figure_points
import figure_theory
import sweep
import utils
from utils import UserError

FIGURE = "limit"
PAPER_NA = [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500]
QUICK_SCALE = 0.05  # --quick: n_A x 0.05 (25 ... 275)
# width 128: at width 64 the preview's ||Z|| strays up to 6 % from the program's (2.4 % at 128)
QUICK = dict(dataset_t="synthetic", network="mlp_linear", mlp_width=128, lr=0.05, weight_decay=0.0, train_epochs=200)


def parse_args(argv):
    p = utils.ArgumentParser(
        description="Angles between classes against n_A (Figure 9 of Hong & Ling).",
        epilog=figure_args.quick_epilog(QUICK, "n_A x 0.05 (25 ... 275); lambda is --lam_n / N as always; "
                                  + utils.measured_time("limit --quick") + ".") +
               " --network UFM trains the unconstrained feature model at full scale ("
               + utils.measured_time("limit UFM") + "). n_A = 5500 "
               "exceeds CIFAR-10's 5000 training images per class: it is an error unless --allow_test_fill (as the "
               "original did, silently).")
    figure_args.add_figure_args(p, f"epochs (default 2000; --quick {QUICK['train_epochs']}; UFM 15 L-BFGS epochs: "
                                "far from any threshold the loss settles within 10)")
    p.add_argument("--nalist", type=int, nargs="+", default=None,
                   help="the n_A values, one run each (default 500 1000 ... 5500)")
    p.add_argument("--ratio", type=float, default=2.0, help="n_B = n_A / ratio, rounded down (default 2)")
    p.add_argument("--lam_n", "--ln_pro", dest="lam_n", type=float, default=0.1,
                   help="lambda times N: each point trains at lambda = lam_n / N, N its sample count (default 0.1; "
                        "--ln_pro: the original's name)")
    figure_args.retire_flag(p, "--reg_l", "not a flag of this script: lambda times N is --lam_n (or the original's "
                      "--ln_pro); --reg_l is lambda itself in minority_n_main.py")
    figure_args.retire_flag(p, "--lam", "not a flag of this script: lambda changes with N here; give lambda times N as "
                      "--lam_n (lambda = lam_n / N at each point)")
    p.set_defaults(train_epochs=2000)
    return utils.parse_with_presets(p, argv, QUICK)


def main(argv=None):
    # Arguments: paper settings by default, the CPU preview with --quick; all checked before training.
    args = parse_args(argv)
    K = figure_args.check_figure_args(args)
    chosen = args.nalist or PAPER_NA  # --quick scales only the paper's list, never a typed --nalist
    na_scale = QUICK_SCALE if args.quick and not args.nalist else 1.0
    nas = [max(1, round(n * na_scale)) for n in chosen] if na_scale != 1 else list(chosen)
    utils.check_positive_ints("--nalist", nas)
    utils.check_distinct("--nalist", nas)
    utils.check_positive("--ratio", args.ratio)
    utils.check_positive("--lam_n/--ln_pro", args.lam_n)
    k_B = K - args.ka

    def n_B_of(n_A):
        return int(n_A // args.ratio)

    small = [n for n in nas if n_B_of(n) < 1]
    if small:
        raise UserError(f"--nalist {small[0]}: n_B = n_A / ratio = {small[0] / args.ratio:.3g} rounds down to 0; "
                        f"use larger n_A or a smaller --ratio")
    datasets.check_class_sizes(args.dataset_t, nas, args.allow_test_fill, "--nalist", args.network)
    clusters = [list(range(args.ka)), list(range(args.ka, K))]

    def setting(n_A):  # (sizes, clusters, lambda, lam_b) of a point
        sizes = [n_A] * args.ka + [n_B_of(n_A)] * k_B
        return sizes, clusters, args.lam_n / sum(sizes), args.reg_b, figure_points.point_loss(args, sizes, clusters)

    # Points: one run per n_A, keyed by its whole configuration.
    points = []
    for n0, n_A in zip(chosen, nas):
        sizes, _, lam, _, _ = setting(n_A)
        points.append(figure_points.figure_point(FIGURE, args, sizes, clusters,
                                         dict(n_A=n_A, n_B=n_B_of(n_A), N=sum(sizes), lam=lam, k_A=args.ka),
                                         epochs=args.train_epochs, milestone_frac=1 / 3, weight_decay=5e-4,
                                         ufm_epochs=15, scaled=figure_points.quick_scaled(args, n_A=(n0, na_scale))))

    # Train the missing points here or as jobs (--launch), or only --point I; reuse the finished ones.
    records, missing = sweep.train_points(points, args, argv)

    # Analyse: cosines of columns of Z at every point, against the convex program.
    lo, hi = min(nas), max(nas)
    grid = sorted(set([max(1, round(lo + (hi - lo) * i / 10)) for i in range(11)] + nas))
    settings = dict(dataset=args.dataset_t, network=args.network, k_A=args.ka, ratio=args.ratio, lam_n=args.lam_n,
                    lam_b=args.reg_b, quick=args.quick, num_classes=K, etf_cosine=-1 / (K - 1),
                    title=f"Angles vs n_A: {figure_args.figure_tag(args)}, k_A={args.ka}, n_B=n_A/{args.ratio:g}, "
                          f"λ={args.lam_n:g}/N")
    result = figure_assembly.assemble_figure(FIGURE, settings, points, records, missing, args.reg_b)
    result["theory_curve"] = figure_theory.theory_curve(grid, setting)

    # Plot: cosines within A, within B and across against n_A, with the JSON beside it.
    figure_assembly.save_figure_result(result, args, f"{FIGURE}_{figure_args.figure_tag(args)}_ka{args.ka}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
