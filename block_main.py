"""Figures 1-2: NC1 during training, and the block structure of Z.

Classes in three clusters of equal size within each cluster (structure 1: classes 0-3 with 5000
samples, 4-6 with 4000, 7-9 with 3000; structure 2: 0-3 with 5000, 4-5 with 3000, 6-9 with 1000),
trained with lam_H = --reg_h, lam_W = --reg_w, lam_b = --reg_b (lambda = 2 sqrt(lam_H lam_W) in the
convex program, theory.md section 2). Plotted: the NC metrics against epoch (log axes) and the
heat-map of Z beside the convex program's Z for the same sizes and lambda.

    python block_main.py --dataset_t cifar10 --structure 1 --network ResNet18
    python block_main.py --structure 1 --network UFM     # the UFM at full scale, on CPU
    python block_main.py --structure 1 --quick           # CPU preview (its time: --help)
"""
import math
import sys

import datasets
import figure_args
import figure_assembly
import figure_points
import sweep
import utils
from utils import UserError

FIGURE = "block"
STRUCTURES = {1: [(4, 5000), (3, 4000), (3, 3000)], 2: [(4, 5000), (2, 3000), (4, 1000)]}
QUICK_SCALE = 0.02  # --quick: class sizes x 0.02 and lam_H, lam_W x sqrt(50): the UFM optimum is unchanged
QUICK = dict(dataset_t="synthetic", network="mlp_linear", mlp_width=64, lr=0.1, weight_decay=0.0, train_epochs=200)


def parse_args(argv):
    p = utils.ArgumentParser(
        description="NC1 against epoch and the block structure of Z (Figures 1-2 of Hong & Ling).",
        epilog=figure_args.quick_epilog(QUICK, "class sizes x 0.02 (100/80/60 or 100/60/20) and lam_H, lam_W "
                                        "multiplied by sqrt(50) (so lambda sqrt(N), hence the UFM optimum, is "
                                        "unchanged); a --reg_h, "
                                        "--reg_w or --lam you give is trained as given; "
                                        + utils.measured_time("block --quick") + ".") +
               " --network UFM trains the unconstrained feature model at full scale (full-batch L-BFGS; NC metrics "
               "per L-BFGS epoch; " + utils.measured_time("block UFM") + ").")
    figure_args.add_figure_args(p, f"epochs (default 1000; --quick {QUICK['train_epochs']}; UFM 40 L-BFGS epochs)",
                                ka=False)
    p.add_argument("--structure", type=int, default=1, help="class-size structure 1 or 2 (default 1)")
    p.add_argument("--reg_h", type=float, default=1e-6, help="lam_H, feature regularisation (default 1e-6)")
    p.add_argument("--reg_w", type=float, default=1e-3, help="lam_W, classifier regularisation (default 1e-3)")
    p.add_argument("--lam", type=float, default=None,
                   help="lambda of the convex program instead of lam_H, lam_W: they then follow from it in the ratio "
                        "--reg_w / --reg_h (default 2 sqrt(reg_h reg_w) = 6.3e-5)")
    p.set_defaults(train_epochs=1000)
    return utils.parse_with_presets(p, argv, QUICK)


def main(argv=None):
    # Arguments: paper settings by default, the CPU preview with --quick; all checked before training.
    args = parse_args(argv)
    figure_args.check_figure_args(args)
    utils.check_choice("--structure", args.structure, sorted(STRUCTURES))
    for name in ("--reg_h", "--reg_w"):
        utils.check_positive(name, getattr(args, name[2:]))
    if args.lam is not None:
        utils.check_positive("--lam", args.lam)
    scale = QUICK_SCALE if args.quick else 1.0
    groups = [(k, max(1, round(n * scale))) for k, n in STRUCTURES[args.structure]]
    sizes = [n for k, n in groups for _ in range(k)]
    K = datasets.num_classes_of(args.dataset_t, sizes)
    if K != len(sizes):
        raise UserError(f"--dataset {args.dataset_t}: has {K} classes; the structures need {len(sizes)}")
    datasets.check_class_sizes(args.dataset_t, sizes, args.allow_test_fill, "--structure", args.network)
    starts = [sum(k for k, _ in groups[:i]) for i in range(len(groups))]
    clusters = [list(range(s, s + k)) for s, (k, _) in zip(starts, groups)]
    # lambda of the convex program from lam_H, lam_W, each times sqrt(50) for --quick unless typed (a typed --lam
    # is trained as given); split back in their ratio.
    factors = {k: 1.0 if k in args.given else 1 / math.sqrt(scale) for k in ("reg_h", "reg_w")}
    lam_h, lam_w = args.reg_h * factors["reg_h"], args.reg_w * factors["reg_w"]
    lam = 2 * math.sqrt(lam_h * lam_w) if args.lam is None else args.lam
    scaled = figure_points.quick_scaled(args, sizes=([n for _, n in STRUCTURES[args.structure]], scale),
                                lam_h=(args.reg_h, factors["reg_h"]), lam_w=(args.reg_w, factors["reg_w"]))

    # One run (reused when finished), keeping its per-epoch NC metrics.
    point = figure_points.figure_point(FIGURE, args, sizes, clusters, dict(lam=lam, structure=args.structure),
                               epochs=args.train_epochs, milestone_frac=1 / 3, weight_decay=5e-4, history=True,
                               lam_ratio=lam_w / lam_h, scaled=scaled)
    records, missing = sweep.train_points([point], args, argv)

    # Analyse against the convex program with the same sizes and lambda.
    settings = dict(dataset=args.dataset_t, network=args.network, structure=args.structure, sizes=sizes,
                    lam_b=args.reg_b, quick=args.quick,
                    title=f"NC and block structure: {figure_args.figure_tag(args)}, structure {args.structure} "
                          f"(sizes {'/'.join(str(n) for _, n in groups)})")
    result = figure_assembly.assemble_figure(FIGURE, settings, [point], records, missing, args.reg_b)
    result["history"] = result["points"][0].pop("history")

    # Plot: NC metrics against epoch, trained Z beside the convex program's Z.
    figure_assembly.save_figure_result(result, args, f"{FIGURE}_{figure_args.figure_tag(args)}_s{args.structure}")
    return 0


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
