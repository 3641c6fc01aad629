"""Figures 7-8: minority collapse as the majority grows (lambda fixed).

k_A majority classes of n_A samples (n_A from the list) and K - k_A minority classes of n_B;
lambda = --lam with lam_H = lambda/20, lam_W = 5 lambda (theory.md section 2). Theory: the
minority collapses iff n_A >= n_A* = (sqrt(n_B)/lambda - k_B n_B) / k_A (433.3 for k_A = 3,
n_B = 100, lambda = 0.005).

    python minority_n_main.py --ka 5 --nalist 100 200 300 400 600 800 1000 1100 1200 1400
    python minority_n_main.py --ka 3 --network UFM        # the same sweep on the UFM, on CPU
    python minority_n_main.py --ka 3 --quick              # CPU preview (its time: --help)
"""
import math
import sys

import datasets
import figure_args
import figure_assembly
import figure_points
import figure_theory
import rebalance_program
import sweep
import utils

FIGURE = "minority_n"
PAPER_NA = {5: [100, 200, 300, 400, 600, 800, 1000, 1100, 1200, 1400],
            3: [100, 400, 450, 500, 700, 1000, 1600, 2200, 2500, 2800]}
QUICK_SCALE = 0.2  # --quick: class sizes x 0.2 and lambda / sqrt(0.2): the UFM optimum is unchanged
QUICK = dict(dataset_t="synthetic", network="mlp_linear", mlp_width=64, lr=0.1, weight_decay=0.0, nb=20,
             train_epochs=200)


def parse_args(argv):
    p = utils.ArgumentParser(
        description="Minority collapse against n_A (Figures 7-8 of Hong & Ling).",
        epilog=figure_args.quick_epilog(QUICK, "class sizes x 0.2 (n_B = 20, each n_A x 0.2, rounded) and lambda "
                                  "multiplied by sqrt(5), which leaves the UFM optimum (it depends on lambda sqrt(N) "
                                  "only) and so the expected picture unchanged; a --nalist or --lam you give is "
                                  "trained as given; " + utils.measured_time("minority_n --quick") + ".") +
               " --network UFM trains the unconstrained feature model at full scale ("
               + utils.measured_time("minority_n UFM") + ").")
    figure_args.add_figure_args(p, f"epochs (default 2000; --quick {QUICK['train_epochs']}; UFM 40 L-BFGS epochs)")
    p.add_argument("--nalist", type=int, nargs="+", default=None,
                   help="the n_A values, one run each (default: the paper's list for --ka 5 or 3)")
    p.add_argument("--nb", type=int, default=100, help="samples per minority class (default 100)")
    p.add_argument("--lam", "--reg_l", dest="lam", type=float, default=0.005,
                   help="lambda of the convex program (default 0.005; --reg_l: the original's name)")
    p.add_argument("--warm_frac", type=float, default=1 / 6,
                   help="fraction of training with the regularisation at lambda/10 (the warm phase), in [0, 1] "
                        "(default 1/6, as the original)")
    figure_args.retire_flag(p, "--ln_pro", "not a flag of this script: the warm phase's fraction is --warm_frac "
                      "(--ln_pro is lambda times N in limit_main.py, as in the original code)")
    p.set_defaults(train_epochs=2000)
    return utils.parse_with_presets(p, argv, QUICK)


def main(argv=None):
    # Arguments: paper settings by default, the CPU preview with --quick; all checked before training.
    args = parse_args(argv)
    K = figure_args.check_figure_args(args)
    # --quick scales only what it chose itself: the paper's n_A list and the default lambda, never a typed one
    chosen = args.nalist or PAPER_NA.get(args.ka, PAPER_NA[5])
    na_scale = QUICK_SCALE if args.quick and not args.nalist else 1.0
    nas = [max(1, round(n * na_scale)) for n in chosen] if na_scale != 1 else list(chosen)
    utils.check_positive_ints("--nalist", nas)
    utils.check_positive_ints("--nb", [args.nb])
    utils.check_distinct("--nalist", nas)
    below = [n for n in nas if n < args.nb]
    if below:
        print(f"warning: --nalist {' '.join(map(str, below))} below --nb {args.nb}: at those points the majority "
              "classes are the smaller ones (the minority spread is then measured on classes A)", file=sys.stderr)
    utils.check_positive("--lam/--reg_l", args.lam)
    utils.check_fraction("--warm_frac", args.warm_frac)
    datasets.check_class_sizes(args.dataset_t, nas + [args.nb], args.allow_test_fill, "--nalist/--nb", args.network)
    lam_scale = 1 / math.sqrt(QUICK_SCALE) if args.quick and "lam" not in args.given else 1.0
    lam = args.lam * lam_scale
    k_B = K - args.ka
    clusters = [list(range(args.ka)), list(range(args.ka, K))]

    def sizes_of(n_A):
        return [n_A] * args.ka + [args.nb] * k_B

    # Points: one run per n_A, keyed by its whole configuration.
    points = [figure_points.figure_point(FIGURE, args, sizes_of(n_A), clusters,
                                 dict(n_A=n_A, lam=lam, k_A=args.ka, n_B=args.nb),
                                 epochs=args.train_epochs, milestone_frac=2 / 3, weight_decay=0.0,
                                 warm_frac=args.warm_frac,
                                 scaled=figure_points.quick_scaled(args, n_A=(n0, na_scale), lam=(args.lam, lam_scale)))
              for n0, n_A in zip(chosen, nas)]

    # Train the missing points here or as jobs (--launch), or only --point I; reuse the finished ones.
    records, missing = sweep.train_points(points, args, argv)

    # Analyse: every point against the convex program; the threshold n_A* under --loss and the theory curve.
    def layout(n_A):
        loss = figure_points.point_loss(args, sizes_of(n_A), clusters)
        return loss["sizes"], loss
    crossings = (rebalance_program.size_threshold(layout, clusters[1], lam, args.reg_b, 1, 40 * max(nas + [args.nb]))
                 if k_B >= 2 else [])
    na_star = crossings[0] if crossings else None
    settings = dict(dataset=args.dataset_t, network=args.network, k_A=args.ka, n_B=args.nb, lam=lam,
                    lam_b=args.reg_b, quick=args.quick, x_key="n_A", x_label="n_A",
                    title=f"Minority collapse vs n_A: {figure_args.figure_tag(args)}, k_A={args.ka}, n_B={args.nb}, "
                          f"λ={lam:.4g}")
    result = figure_assembly.assemble_figure(FIGURE, settings, points, records, missing, args.reg_b)
    result["threshold"], result["threshold_crossings"] = na_star, crossings
    result["theory_curve"] = figure_theory.theory_curve(
        theory_grid(nas, na_star), lambda n_A: (sizes_of(n_A), clusters, lam, args.reg_b,
                           figure_points.point_loss(args, sizes_of(n_A), clusters)))

    # Plot: the grid of Z heat-maps and minority_spread against n_A, with the JSON beside it.
    figure_assembly.save_figure_result(result, args, f"{FIGURE}_{figure_args.figure_tag(args)}_ka{args.ka}")
    return 0


def theory_grid(nas, na_star):
    """The n_A of the convex program's curve: 20 across the points and the threshold, the points themselves,
    and the integers on both sides of n_A*."""
    ends = nas + ([max(na_star, 1)] if na_star else [])
    lo, hi = min(ends), max(ends)
    marks = [max(1, math.floor(na_star)), math.ceil(na_star)] if na_star else []
    return sorted(set([max(1, round(lo + (hi - lo) * i / 19)) for i in range(20)] + nas + marks))


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
