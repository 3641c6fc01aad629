"""Mixup and neural collapse (theory.md section 5): train with mixup, snapshot the last-layer
features of mixed-up training examples from three classes, project them to 2-D, summarise the
geometry, and plot it against the free-feature (UFM) optimum of the same loss.

--study runs the study grid (datasets x models x losses x with/without mixup x seeds, each cell a
run as above) and writes one table with mean, std and 95% t-interval over seeds, and its figures."""
import os

import arg_combinations
import data_parallel
import datasets
import devices
import figure_args
import losses
import mixup_geometry
import mixup_plots
import mixup_run
import mixup_study
import nc_layers
import networks
import recipes
import result_files
import snapshot_files
import utils
from utils import UserError

# --quick: bundled 8x8 digits and a small MLP, a CPU preview with no download, trained with
# the network's CPU recipe (recipes.py: mlp_cpu, 200 epochs at weight decay 1e-2); eval-mode collection, since
# batch statistics of mixed batches from three classes blur a small network's features.
QUICK = dict(dataset="digits", model="mlp", snapshot_size=900, feature_mode="eval")
# --study --quick: a CPU grid (2 datasets x 2 networks x 2 losses x with/without mixup x
# 2 seeds, and label smoothing and focal on the first dataset and network) on 60 images per class (10 synthetic
# classes), each network with its CPU recipe shortened to 60 epochs at weight decay 5e-2, which collapses the
# features that fast; every cell then fits its training data and its NC1 falls (docs/mixup_study.md).
STUDY_QUICK = dict(QUICK, datasets=["digits", "synthetic"], models=["mlp", "cnn"], seeds=[0, 1], epochs=60,
                   train_per_class=60, num_classes=10, image_size=16, weight_decay=5e-2, snapshot_size=600)
# the networks of the --quick previews: seconds on the CPU (others are warned about, with their estimate)
QUICK_NETWORKS = ("mlp", "cnn")


def parse_args(argv):
    p = utils.ArgumentParser(description=__doc__, epilog="--quick: " + utils.measured_time("mixup --quick")
                             + "; --study --quick: " + utils.measured_time("study --quick") + ".")
    add_run_args(p)
    figure_args.retire_flag(p, "--lam", "not a flag of this script: mixup training has no lambda of the convex "
                            "program; the mixup coefficient is drawn from Beta(--alpha, --alpha), per batch or "
                            "sample (--mix_per)")
    add_study_args(p)
    figure_args.add_launch_args(p)
    utils.add_common_args(p)
    study = p.parse_args(argv).study
    return utils.parse_with_presets(p, argv, STUDY_QUICK if study else QUICK)


def add_run_args(p):
    """The flags of one run: data, network, loss, training recipe, mixup, snapshots, --dry_run."""
    p.add_argument("--dataset", default="cifar10", help=" | ".join(datasets.DATASETS))
    p.add_argument("--network", "--model", dest="model", default="resnet18",
                   help=" | ".join(n for n in networks.NETWORKS + tuple(networks.MIXUP_NETWORKS) if n != "ufm")
                   + " (--model: the original's name)")
    p.add_argument("--width", type=int, default=None, help="network width (wrn: widening factor 10; vit: 192)")
    p.add_argument("--depth", type=int, default=None, help="wrn depth (40) or vit blocks (6)")
    p.add_argument("--loss", default="cross_entropy", help=" | ".join(losses.LOSSES))
    p.add_argument("--mse_scale", type=float, default=1.0, help="mse: target scale")
    p.add_argument("--smoothing", type=float, default=0.1, help="label_smoothing: epsilon")
    p.add_argument("--focal_gamma", type=float, default=2.0, help="focal: gamma")
    p.add_argument("--recipe", default=None, help=f"{' | '.join(recipes.RECIPES)}: the training recipe (default: the "
                   "network's, recipes.py; --quick: its CPU recipe); the flags below, when given, win over it")
    p.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=None,
                   help="default: the recipe's (sgd_step, vit_adamw: 500)")
    p.add_argument("--optimizer", default=None, help="sgd | adam | adamw (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's (sgd_step 0.1)")
    p.add_argument("--momentum", type=float, default=None, help="sgd (default: the recipe's, 0.9)")
    p.add_argument("--weight_decay", type=float, default=None, help="default: the recipe's (sgd_step 1e-4)")
    p.add_argument("--lr_schedule", default=None, help="step | cosine (default: the recipe's)")
    p.add_argument("--warmup_epochs", type=int, default=None, help="linear lr warm-up epochs (default: the recipe's)")
    p.add_argument("--lr_milestones", type=int, nargs="*", default=None,
                   help="step schedule: epochs after which the lr is multiplied by --lr_gamma (default: the recipe's "
                        "fractions of training, sgd_step 30%%, 50%%, 90%%)")
    p.add_argument("--lr_gamma", type=float, default=None, help="default: the recipe's (0.1)")
    p.add_argument("--batch_size", type=int, default=None, help="default: the recipe's (sgd_step, vit_adamw: 128)")
    p.add_argument("--alpha", type=float, default=1.0, help="mixup coefficient ~ Beta(alpha, alpha)")
    p.add_argument("--mix_per", "--lam_per", dest="mix_per", default="batch",
                   help="batch (one mixup coefficient per batch, as the original mixup code and timm) | sample (one "
                        "per example); --lam_per: the older name")
    p.add_argument("--no_mixup", action="store_true", help="plain training (baseline)")
    p.add_argument("--fixed_etf", action="store_true", help="a fixed simplex-ETF classifier")
    p.add_argument("--train_per_class", type=int, default=None, help="training images per class (default: all)")
    p.add_argument("--num_classes", type=int, default=4, help="synthetic data only: number of classes")
    p.add_argument("--image_size", type=int, default=32, help="synthetic data only: image side (default 32)")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="the three classes to visualise (default: drawn from the seed)")
    p.add_argument("--snapshots", type=int, nargs="+", default=None,
                   help="epochs to snapshot features (default: 8 roughly log-spaced, ending at the last)")
    p.add_argument("--snapshot_size", type=int, default=1500, help="mixed examples per snapshot")
    p.add_argument("--feature_mode", default="train", help="train (batch-norm batch statistics, as the paper) | eval")
    p.add_argument("--theory_beta", type=float, default=0.01, help="beta of the UFM overlay")
    p.add_argument("--nc_layers", nargs="+", default=None, metavar="LAYER",
                   help="per-layer NC1 (trace ratio) and NCC accuracy at every evaluated epoch, and the depth "
                        "figure: module names of the network, or `all` (its blocks / stages / hidden layers)")
    p.add_argument("--dry_run", action="store_true",
                   help="train nothing: print the run folder, whether it is finished, and an estimate of the time "
                        "left (from its recorded seconds per epoch, else a 3-epoch probe)")


def add_study_args(p):
    """The flags of the study grid (--study): its datasets, networks, losses, seeds and which runs to train."""
    s = p.add_argument_group("the study (--study): a grid of runs, summarised over seeds")
    s.add_argument("--study", action="store_true", help="run the study grid instead of one run")
    s.add_argument("--datasets", nargs="+", default=["fashion_mnist", "cifar10", "cifar100"])
    s.add_argument("--networks", "--models", dest="models", nargs="+", default=["wrn", "vit_b4"])
    s.add_argument("--losses", nargs="+", default=["cross_entropy", "mse"])
    s.add_argument("--panel_losses", nargs="*", default=["label_smoothing", "focal"],
                   help="losses trained too, with mixup, on the first dataset and network only (the per-loss figure)")
    s.add_argument("--seeds", type=utils.seed_type, nargs="+", default=[0, 1, 2])
    s.add_argument("--no_baselines", action="store_true", help="skip the cells without mixup (calibration baselines)")
    s.add_argument("--point", type=int, default=None,
                   metavar="I", help="train only run I, then assemble what is finished. I is a run index (0-based) "
                   "in grid order: dataset, network, loss, mixup then not, seed (--seeds: one run per seed); panel "
                   "losses last")
    s.add_argument("--assemble", action="store_true",
                   help="train nothing: table and figures of the finished cells; fails naming the missing cells "
                        "unless --partial")
    s.add_argument("--partial", action="store_true",
                   help="with --assemble or --launch ... --wait: write the table and figures even when cells are "
                        "missing (listed in the JSON)")


def main(argv=None):
    args = parse_args(argv)
    if args.study and args.nc_layers:
        raise UserError("--nc_layers: measures one run (without --study)")
    if not args.study and (args.point is not None or args.assemble or args.launch):
        raise UserError("--point/--assemble/--launch: they select or launch cells of the study grid; add --study")
    arg_combinations.check_mixup_combinations(args)
    for flag, why in (("study", "the study grid's cells are not data-parallel; train one cell without --study"),
                      ("dry_run", "its probe trains in a folder of each process's own")):
        if getattr(args, flag):
            data_parallel.refuse("--" + flag, why)
    if args.study:
        return mixup_study.study(args, argv)
    K, per_class = mixup_run.check_args(args)
    device = figure_args.figure_device(args)   # under torchrun: this rank's, in the process group
    cfg = mixup_run.train_config(args)
    if not args.dry_run:
        arg_combinations.check_output_dirs(args)
    inputs = mixup_run.run_inputs(cfg, args.dataset, per_class, K, device, args)
    if args.nc_layers:   # names checked on the network itself, before any training; part of the run's key
        net = networks.build_model(cfg["network"], K, inputs[1].in_channels, width=cfg["width"], depth=cfg["depth"],
                                   image_size=inputs[1].x_train.shape[-1])
        cfg["nc_layers"] = nc_layers.resolve_layers(net, args.nc_layers)
    data_parallel.say(devices.describe_device(device, args.amp))
    if args.quick and device.type == "cpu" and cfg["network"] not in QUICK_NETWORKS and not args.dry_run:
        arg_combinations.warn_slow_run_preview(cfg, inputs[1])
    data_parallel.say(mixup_run.training_summary(cfg))
    if args.dry_run:
        return mixup_run.dry_run(cfg, inputs[1], device, inputs[2], args.models_dir)
    result = mixup_run.train(cfg, inputs, device, args.models_dir)
    if not data_parallel.is_rank0():   # under torchrun rank 0 alone draws and writes the figures
        return 0
    run_dir = result["run_dir"]
    if result["reused"]:
        print(f"reusing finished run {run_dir}")
    save_run_figures(args, cfg, K, run_dir)


def save_run_figures(args, cfg, K, run_dir):
    """A finished run's figures (projections per snapshot and their grid, loss and accuracy curves, NC against
    depth) and its geometry.json, each path printed, with its summary.csv, after the last epoch's geometry."""
    snaps = [(e, snapshot_files.load_snapshot(p)) for e, p in snapshot_files.mixup_snapshots(run_dir)]
    summaries = {e: result_files.read_json(snapshot_files.mixup_snapshot_path(run_dir, e, "json")) for e, _ in snaps}
    theory = mixup_geometry.ufm_overlay(cfg, K, args.classes, args.theory_beta)

    written = [snapshot_files.mixup_snapshot_path(run_dir, e) for e, _ in snaps]
    for e, snap in snaps:
        written.append(mixup_plots.save_mixup_projection(
            snap, mixup_plots.mixup_plot_path(args.plot_dir, run_dir, f"projection_e{e:04d}.png"),
            f"{cfg['name']}, epoch {e}", theory))
    written.append(mixup_plots.save_mixup_grid(
        [s for _, s in snaps], [f"epoch {e}" for e, _ in snaps],
        mixup_plots.mixup_plot_path(args.plot_dir, run_dir, "projection_grid.png"), theory,
        suptitle=f"{cfg['name']}: mixed features of classes {args.classes} over training"))
    label = {cfg["name"]: os.path.join(run_dir, "summary.csv")}
    for kind in ("loss", "accuracy"):
        written.append(mixup_plots.save_mixup_curves(label,
                                                    mixup_plots.mixup_plot_path(args.plot_dir, run_dir, f"{kind}.png"),
                                                    kind))
    if cfg.get("nc_layers"):
        written.append(mixup_plots.save_nc_depth(label[cfg["name"]], mixup_plots.mixup_plot_path(
            args.plot_dir, run_dir, "nc_depth.png"), f"{cfg['name']}: NC against depth"))
    geometry_path = mixup_plots.mixup_plot_path(args.plot_dir, run_dir, "geometry.json")
    result_files.atomic_write_json(geometry_path, {"run_dir": run_dir, "classes": args.classes, "by_epoch": summaries,
                                            "ufm_optimum": mixup_geometry.mixup_geometry_summary(theory)})
    written.append(geometry_path)

    last = summaries[max(summaries)]
    print(f"epoch {max(summaries)} geometry: " + ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    for path in [os.path.join(run_dir, "summary.csv")] + written:
        print(path)


if __name__ == "__main__":
    utils.cli(main)
