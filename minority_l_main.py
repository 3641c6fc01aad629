"""Figures 5-6: minority collapse as the regularisation lambda grows.

k_A majority classes of n_A samples and K - k_A minority classes of n_B samples; one network
(or UFM) per lambda with lam_H = lambda/20, lam_W = 5 lambda (so lambda = 2 sqrt(lam_H lam_W) is
the lambda of the convex program, theory.md section 2). Theory: the minority classes collapse
(their columns of Z coincide) iff lambda >= sqrt(n_B) / N.

    python minority_l_main.py --ka 5 --lam 0.0027 0.0030 0.0033 0.0039 0.0045 0.0051 0.0057 0.0063 0.0069 0.0075
    python minority_l_main.py --ka 5 --network UFM          # the same sweep on the UFM, on CPU
    python minority_l_main.py --ka 5 --quick                # CPU preview (its time: --help)
"""
import sys

import datasets
import figure_args
import figure_assembly
import figure_points
import figure_theory
import sweep
import theory_formulas
import utils
from utils import UserError

FIGURE = "minority_l"
# The paper's lambda lists (README of the original code); other k_A: the k_A = 5 list as multiples of lambda*.
PAPER_LAMS = {5: [0.0027, 0.0030, 0.0033, 0.0039, 0.0045, 0.0051, 0.0057, 0.0063, 0.0069, 0.0075],
              3: [0.0037, 0.0041, 0.0045, 0.0053, 0.0062, 0.0070, 0.0078, 0.0086, 0.0094, 0.0102]}
PAPER_SIZES = (500, 100)  # the n_A, n_B of the paper's lambda lists
QUICK = dict(dataset_t="synthetic", network="mlp_linear", mlp_width=64, lr=0.1, weight_decay=0.0, na=100, nb=20,
             train_epochs=200)


def parse_args(argv):
    p = utils.ArgumentParser(
        description="Minority collapse against lambda (Figures 5-6 of Hong & Ling).",
        epilog=figure_args.quick_epilog(QUICK, "class sizes x 0.2 (n_A = 100, n_B = 20) and, without --lam, the "
                                  "paper's lambdas multiplied by lambda*(sizes trained) / lambda*(500, 100) (sqrt(5) "
                                  "at n_A = 100, n_B = 20), which leaves the UFM optimum (it depends on lambda "
                                  "sqrt(N) only) and so the expected picture unchanged; a --lam you give is "
                                  "trained as given; " + utils.measured_time("minority_l --quick") + ".") +
               " --network UFM trains the unconstrained feature model at full scale ("
               + utils.measured_time("minority_l UFM") + ").")
    figure_args.add_figure_args(p, f"epochs (default 2000; --quick {QUICK['train_epochs']}; UFM 40 L-BFGS epochs)")
    p.add_argument("--na", type=int, default=500, help="samples per majority class (default 500)")
    p.add_argument("--nb", type=int, default=100, help="samples per minority class (default 100)")
    p.add_argument("--lam", "--reg_z_l", dest="lams", type=float, nargs="+", default=None,
                   help="the lambdas of the convex program, one run each (default: the paper's list for --ka 5 or 3; "
                        "--reg_z_l: the original's name)")
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
    utils.check_positive_ints("--na/--nb", [args.na, args.nb])
    if args.nb > args.na:
        raise UserError(f"--nb {args.nb} with --na {args.na}: the minority classes would be larger than the majority "
                        "(minority collapse needs n_B < n_A); give --nb below --na")
    lam_star = theory_formulas.two_cluster_lambda_star(args.ka, args.na, K - args.ka, args.nb)
    lam_scale = 1.0  # --quick scales only the paper's list (never a typed --lam) to the sizes trained
    if args.lams:
        lams = args.lams
    elif args.ka in PAPER_LAMS:
        lams = PAPER_LAMS[args.ka]
        if args.quick:
            lam_scale = lam_star / theory_formulas.two_cluster_lambda_star(args.ka, PAPER_SIZES[0], K - args.ka,
                                                                     PAPER_SIZES[1])
    else:  # the k_A = 5 list as multiples of its lambda* = 1/300, moved to this k_A's lambda*
        lams = [round(lam * 300 * lam_star, 6) for lam in PAPER_LAMS[5]]
    utils.check_positive("--lam/--reg_z_l", lams)
    utils.check_distinct("--lam/--reg_z_l", lams)
    utils.check_fraction("--warm_frac", args.warm_frac)
    sizes = [args.na] * args.ka + [args.nb] * (K - args.ka)
    clusters = [list(range(args.ka)), list(range(args.ka, K))]
    datasets.check_class_sizes(args.dataset_t, sizes, args.allow_test_fill, "--na/--nb", args.network)

    # Points: one run per lambda (the paper's list scaled by --quick), keyed by its whole configuration.
    points = [figure_points.figure_point(FIGURE, args, sizes, clusters,
                                         dict(lam=lam * lam_scale, k_A=args.ka, n_A=args.na, n_B=args.nb),
                                         epochs=args.train_epochs, milestone_frac=2 / 3, weight_decay=0.0,
                                         warm_frac=args.warm_frac,
                                         scaled=figure_points.quick_scaled(args, lam=(lam, lam_scale)))
              for lam in lams]

    # Train the missing points here or as jobs (--launch), or only --point I; reuse the finished ones.
    records, missing = sweep.train_points(points, args, argv)

    # Analyse: every point against the convex program; the threshold and the theory curve.
    lam_star = figure_points.loss_threshold(args, sizes, clusters, args.reg_b)   # theory.md sections 2 and 9
    used = [pt["params"]["lam"] for pt in points]
    lo, hi = min(used + [lam_star]) * 0.9, max(used + [lam_star]) * 1.05
    grid = sorted(set([lo + (hi - lo) * i / 19 for i in range(20)] + [lam_star * 0.999, lam_star] + used))
    settings = dict(dataset=args.dataset_t, network=args.network, k_A=args.ka, n_A=args.na, n_B=args.nb,
                    lam_b=args.reg_b, quick=args.quick, x_key="lam", x_label="λ",
                    title=f"Minority collapse vs λ: {figure_args.figure_tag(args)}, k_A={args.ka}, "
                          f"n_A={args.na}, n_B={args.nb}")
    result = figure_assembly.assemble_figure(FIGURE, settings, points, records, missing, args.reg_b)
    result["threshold"] = lam_star
    loss = figure_points.point_loss(args, sizes, clusters)
    result["theory_curve"] = figure_theory.theory_curve(grid, lambda lam: (sizes, clusters, lam, args.reg_b, loss))

    # Plot: the grid of Z heat-maps and minority_spread against lambda, with the JSON beside it.
    figure_assembly.save_figure_result(result, args, f"{FIGURE}_{figure_args.figure_tag(args)}_ka{args.ka}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
