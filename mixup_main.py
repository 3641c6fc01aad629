"""Mixup and neural collapse (theory.md section 5): train with mixup, snapshot the last-layer
features of mixed-up training examples from three classes, project them to 2-D, summarise the
geometry, and plot it against the free-feature (UFM) optimum of the same loss.

--study runs the study grid (datasets x models x losses x with/without mixup x seeds, each cell a
run as above) and writes one table with mean, std and 95% t-interval over seeds, and its figures."""
import argparse
import itertools
import os
import sys

import numpy as np

import ana_utils
import arg_combinations
import datasets
import figure_args
import figure_store
import fit_checks
import job_launch
import losses
import mixup_geometry
import nc_layers
import networks
import plot_utils
import point_records
import read_back
import recipes
import residual_split
import snapshot_files
import sweep
import threads
import train_utils
import utils
from utils import UserError

# Full balanced training sets by default (datasets.TRAIN_PER_CLASS; synthetic: 100 per class).
SYNTHETIC_PER_CLASS = 100
# --quick: bundled 8x8 digits and a small MLP, a CPU preview of under a minute with no download, trained with
# the network's CPU recipe (recipes.py: mlp_cpu, 200 epochs at weight decay 1e-2); eval-mode collection, since
# batch statistics of mixed batches from three classes blur a small network's features.
QUICK = dict(dataset="digits", model="mlp", snapshot_size=900, feature_mode="eval")
# --study --quick: a CPU grid of a few minutes (2 datasets x 2 networks x 2 losses x with/without mixup x
# 2 seeds, and label smoothing and focal on the first dataset and network) on 60 images per class (10 synthetic
# classes), each network with its CPU recipe shortened to 60 epochs at weight decay 5e-2, which collapses the
# features that fast; every cell then fits its training data and its NC1 falls (docs/mixup_study.md).
STUDY_QUICK = dict(QUICK, datasets=["digits", "synthetic"], models=["mlp", "cnn"], seeds=[0, 1], epochs=60,
                   train_per_class=60, num_classes=10, image_size=16, weight_decay=5e-2, snapshot_size=600)
# the networks of the --quick previews: seconds on the CPU (others are warned about, with their estimate)
QUICK_NETWORKS = ("mlp", "cnn")
# The study's table: the per-seed numbers of a cell, and what keys a row.
STUDY_KEYS = ("dataset", "model", "loss", "mixup")
STUDY_METRICS = ("test_acc", "test_ece", "same_angle_deg_mean", "diff_logit_gap_vs_log_odds_spearman",
                 "diff_convex_residual_mean", "diff_convex_residual_binned", "same_spread")
# the residual's parts in the classifier's row space and orthogonal to it (residual_split), after the above
SPLIT_METRICS = ("diff_residual_row_space", "diff_residual_orthogonal")
# the metrics the snapshots' geometry JSONs hold (mixup_geometry.mixup_geometry_summary)
GEOMETRY_METRICS = STUDY_METRICS[2:]
STUDY_METRICS += SPLIT_METRICS


def parse_args(argv):
    p = utils.ArgumentParser(description=__doc__, epilog="--quick: " + utils.measured_time("mixup --quick")
                             + "; --study --quick: " + utils.measured_time("study --quick") + ".")
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
    figure_args.retire_flag(p, "--lam", "not a flag of this script: mixup training has no lambda of the convex "
                            "program; the mixup coefficient is drawn from Beta(--alpha, --alpha), per batch or "
                            "sample (--mix_per)")
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
    s.add_argument("--assemble", action="store_true", help="train nothing: table and figures of the finished cells")
    figure_args.add_launch_args(p)
    utils.add_common_args(p)
    study = p.parse_args(argv).study
    return utils.parse_with_presets(p, argv, STUDY_QUICK if study else QUICK)


def apply_recipe(args):
    """Fill the training settings the user did not give from the run's recipe (recipes.recipe_for:
    the network's, or --recipe); sets args.recipe to {"name", "overrides": the given values that
    differ from the recipe's}. Idempotent: a second call keeps the first one's overrides."""
    if isinstance(args.recipe, dict):
        return
    recipe = recipes.recipe_for(args.model, args.loss, cpu=args.quick, name=args.recipe)
    overrides = {}
    for key, value in recipe.settings().items():
        given = getattr(args, key)
        if key == "lr_milestones":  # the recipe's fractions of the epochs this run trains
            value = recipes.milestone_epochs(recipe.milestones, args.epochs)
        if given is None:
            setattr(args, key, value)
        elif given != value:
            overrides[key] = given
    args.recipe = {"name": recipe.name, "overrides": overrides}


def recipe_label(recipe):
    """A recipe record as one short text: the name, and the settings given instead of its own."""
    extra = ", ".join(f"{k}={v}" for k, v in recipe["overrides"].items())
    return recipe["name"] + (f" ({extra})" if extra else "")


def check_args(args):
    """Every bad argument fails here with one line, before any data is loaded or run folder made."""
    args.dataset = datasets.check_dataset(args.dataset)
    allowed = [n for n in networks.NETWORKS + tuple(networks.MIXUP_NETWORKS) if n != "ufm"]
    if args.model.lower() == "ufm":
        raise UserError("--network/--model ufm: mixing inputs needs a network; for the free-feature model run "
                        "`python utils.py mixup-ufm`")
    if args.model.lower() not in allowed:
        raise UserError(f"--network/--model {args.model}: allowed are {', '.join(allowed)}")
    utils.check_choice("--loss", args.loss, tuple(losses.LOSSES))
    utils.check_positive("--mse_scale", args.mse_scale)
    utils.check_fraction("--smoothing", args.smoothing)
    utils.check_nonneg("--focal_gamma", args.focal_gamma)
    apply_recipe(args)
    utils.check_choice("--optimizer", args.optimizer.lower(), ("sgd", "adam", "adamw"))
    utils.check_choice("--lr_schedule", args.lr_schedule, recipes.SCHEDULES)
    utils.check_choice("--mix_per", args.mix_per, train_utils.MIX_PER)
    if args.feature_mode not in ("train", "eval"):
        raise UserError(f"--feature_mode {args.feature_mode}: allowed are train, eval")
    utils.check_positive_ints("--epochs", [args.epochs])
    utils.check_nonneg("--warmup_epochs", args.warmup_epochs)   # one longer than the training never reaches --lr
    utils.check_positive_ints("--width/--depth", [v for v in (args.width, args.depth) if v is not None])
    utils.check_positive_ints("--snapshot_size", [args.snapshot_size])
    utils.check_positive("--theory_beta", args.theory_beta)
    if args.snapshot_size < 2:
        raise UserError("--snapshot_size: at least 2 mixed examples")
    utils.check_positive_ints("--image_size", [args.image_size])
    if args.dataset == "synthetic" and args.num_classes < 3:
        raise UserError(f"--num_classes {args.num_classes}: three classes are visualised, so at least 3")
    K = datasets.num_classes_of(args.dataset, [0] * args.num_classes)
    per_class = (args.train_per_class if args.train_per_class is not None
                 else datasets.TRAIN_PER_CLASS.get(args.dataset, SYNTHETIC_PER_CLASS))
    datasets.check_class_sizes(args.dataset, [per_class], False, "--train_per_class", fill_hint=False)
    if args.classes is None:
        args.classes = sorted(np.random.default_rng(args.seed).choice(K, 3, replace=False).tolist())
    if len(args.classes) != 3 or len(set(args.classes)) != 3 or not all(0 <= c < K for c in args.classes):
        raise UserError(f"--classes {args.classes}: give three distinct class indices in 0..{K - 1}")
    if args.snapshots is None:
        args.snapshots = sorted(set(np.unique(np.round(np.geomspace(1, args.epochs, 8))).astype(int).tolist()))
    bad = [e for e in args.snapshots if not 1 <= e <= args.epochs]
    if bad:
        raise UserError(f"--snapshots {bad}: snapshot epochs must lie in 1..{args.epochs}")
    train_utils.check_train_config(dict(train_utils.TRAIN_DEFAULTS, **train_config(args)), prefix="--")
    utils.ensure_writable_dir(args.plot_dir, "--plot_dir")
    return K, per_class


def train_config(args):
    """The configuration that keys the run (train_utils.train_run plus the mixup settings)."""
    name = f"mixup_{args.dataset}_{args.model.lower()}_{args.loss}"
    name += ("_nomix" if args.no_mixup else "") + ("_etf" if args.fixed_etf else "")
    return dict(name=name, network=args.model.lower(), width=args.width, depth=args.depth, epochs=args.epochs,
                optimizer=args.optimizer.lower(), lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, lr_milestones=args.lr_milestones, lr_gamma=args.lr_gamma,
                lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs, recipe=args.recipe,
                batch_size=args.batch_size, eval_epochs=list(range(1, args.epochs + 1)), seed=args.seed,
                amp=args.amp, loss=args.loss, mse_scale=args.mse_scale, smoothing=args.smoothing,
                focal_gamma=args.focal_gamma, alpha=args.alpha, mixup=not args.no_mixup, lam_per=args.mix_per,
                fixed_etf=args.fixed_etf, classes=args.classes, snapshots=args.snapshots,
                snapshot_size=args.snapshot_size, feature_mode=args.feature_mode,
                synthetic={"image_size": args.image_size} if args.dataset == "synthetic" else None)


def make_on_eval(cfg, data, loss_fn, device):
    """Per evaluated epoch: test loss and ECE (15 bins, on the confidence the loss defines:
    mixup_geometry.loss_probabilities) as CSV columns; at snapshot epochs, the
    mixed-feature snapshot (.npz) and its geometry summary (.json) in the run folder."""
    def on_eval(model, epoch, run_dir):
        _, logits = ana_utils.extract_features(model, data.x_test.to(device))
        row = {"test_loss": loss_fn(logits, data.y_test).mean().item(),
               "test_ece": mixup_geometry.expected_calibration_error(logits, data.y_test, loss=cfg["loss"],
                                                                     mse_scale=cfg["mse_scale"])}
        if cfg.get("nc_layers"):
            row.update(nc_layers.layer_nc(model, cfg["nc_layers"], (data.x_train.to(device), data.y_train.to(device)),
                                          (data.x_test.to(device), data.y_test.to(device))))
        if epoch in cfg["snapshots"]:
            rng = np.random.default_rng([cfg["seed"], epoch])
            snap = mixup_geometry.collect_mixup_features(model, data.x_train, data.y_train, cfg["classes"],
                                                    cfg["snapshot_size"], cfg["alpha"], rng,
                                                    train_mode=cfg["feature_mode"] == "train")
            utils.atomic_savez(snapshot_files.mixup_snapshot_path(run_dir, epoch), epoch=epoch, **snap)
            utils.atomic_write_json(snapshot_files.mixup_snapshot_path(run_dir, epoch, "json"),
                                    mixup_geometry.mixup_geometry_summary(snap))
        return row
    return on_eval


def run_inputs(cfg, dataset, per_class, K, device, args):
    """(per-sample loss, data, mixup objective) of the run `cfg` on a balanced subset of `dataset`;
    on the CPU, sets the threads for the run's step size and the free cores (--threads wins)."""
    loss_fn = losses.get_loss(cfg["loss"], cfg["mse_scale"], cfg["smoothing"], cfg["focal_gamma"])
    data = datasets.get_data(dataset, [per_class] * K, cfg["seed"], args.data_dir, synthetic=cfg["synthetic"])
    if device.type == "cpu":
        threads.set_threads(networks.step_work_size(cfg["network"], min(cfg["batch_size"], len(data.y_train)),
                                                  data.x_train[0].numel(), cfg["width"]), args.threads)
    return loss_fn, data, train_utils.make_mixup_objective(loss_fn, cfg["alpha"], mixup=cfg["mixup"],
                                                           mix_per=cfg["lam_per"])


def train(cfg, inputs, device, models_dir):
    """Train (or reuse, or resume) the mixup run `cfg` on its run_inputs."""
    loss_fn, data, objective = inputs
    return train_utils.train_run(cfg, data, device, models_dir, objective=objective,
                                 on_eval=make_on_eval(cfg, data, loss_fn, device))


def dry_run(cfg, data, device, objective, models_dir):
    """--dry_run: the run's folder, finished or how far, and the training time left, from the
    recorded seconds per epoch or a 3-epoch probe in a throw-away folder (evaluation excluded)."""
    run_dir = train_utils.run_dir_of({**train_utils.TRAIN_DEFAULTS, **cfg}, data, models_dir)
    csv_path = os.path.join(run_dir, "summary.csv")
    rows = read_back.read_csv(csv_path, ["epoch", "seconds_per_epoch"], "the dry run's estimate",
                              empty_ok=True) if os.path.isfile(csv_path) else []
    if os.path.exists(os.path.join(run_dir, "final.json")):
        print(f"{run_dir}: finished, nothing to train")
        return 0
    if rows:
        sec, how = np.mean([r["seconds_per_epoch"] for r in rows]), "its recorded seconds per epoch"
    else:
        sec = train_utils.probe_seconds_per_epoch(dict(cfg, snapshots=[]), data, device, objective)
        how = "a 3-epoch probe"
    done = rows[-1]["epoch"] if rows else 0
    print(f"{run_dir}: {'at epoch ' + str(done) if done else 'not started'} of {cfg['epochs']}; estimate for the "
          f"rest: {sec * (cfg['epochs'] - done) / 60:.1f} min on {device} (training only, from {how})")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.study and args.nc_layers:
        raise UserError("--nc_layers: measures one run (without --study)")
    if not args.study and (args.point is not None or args.assemble or args.launch):
        raise UserError("--point/--assemble/--launch: they select or launch cells of the study grid; add --study")
    arg_combinations.check_mixup_combinations(args)
    if args.study:
        return study(args, argv)
    K, per_class = check_args(args)
    device = figure_args.figure_device(args)
    cfg = train_config(args)
    if not args.dry_run:
        arg_combinations.check_output_dirs(args)
    inputs = run_inputs(cfg, args.dataset, per_class, K, device, args)
    if args.nc_layers:   # names checked on the network itself, before any training; part of the run's key
        net = networks.build_model(cfg["network"], K, inputs[1].in_channels, width=cfg["width"], depth=cfg["depth"],
                                   image_size=inputs[1].x_train.shape[-1])
        cfg["nc_layers"] = nc_layers.resolve_layers(net, args.nc_layers)
    print(utils.describe_device(device, args.amp), file=sys.stderr)
    if args.quick and device.type == "cpu" and cfg["network"] not in QUICK_NETWORKS and not args.dry_run:
        arg_combinations.warn_slow_run_preview(cfg, inputs[1])
    print(training_summary(cfg), file=sys.stderr)
    if args.dry_run:
        return dry_run(cfg, inputs[1], device, inputs[2], args.models_dir)
    result = train(cfg, inputs, device, args.models_dir)
    run_dir = result["run_dir"]
    if result["reused"]:
        print(f"reusing finished run {run_dir}")

    snaps = [(e, snapshot_files.load_snapshot(p)) for e, p in snapshot_files.mixup_snapshots(run_dir)]
    summaries = {e: utils.read_json(snapshot_files.mixup_snapshot_path(run_dir, e, "json")) for e, _ in snaps}
    theory = mixup_geometry.ufm_overlay(cfg, K, args.classes, args.theory_beta)

    written = [snapshot_files.mixup_snapshot_path(run_dir, e) for e, _ in snaps]
    for e, snap in snaps:
        written.append(plot_utils.save_mixup_projection(
            snap, plot_utils.mixup_plot_path(args.plot_dir, run_dir, f"projection_e{e:04d}.png"),
            f"{cfg['name']}, epoch {e}", theory))
    written.append(plot_utils.save_mixup_grid(
        [s for _, s in snaps], [f"epoch {e}" for e, _ in snaps],
        plot_utils.mixup_plot_path(args.plot_dir, run_dir, "projection_grid.png"), theory,
        suptitle=f"{cfg['name']}: mixed features of classes {args.classes} over training"))
    label = {cfg["name"]: os.path.join(run_dir, "summary.csv")}
    for kind in ("loss", "accuracy"):
        written.append(plot_utils.save_mixup_curves(label,
                                                    plot_utils.mixup_plot_path(args.plot_dir, run_dir, f"{kind}.png"),
                                                    kind))
    if cfg.get("nc_layers"):
        written.append(plot_utils.save_nc_depth(label[cfg["name"]], plot_utils.mixup_plot_path(
            args.plot_dir, run_dir, "nc_depth.png"), f"{cfg['name']}: NC against depth"))
    geometry_path = plot_utils.mixup_plot_path(args.plot_dir, run_dir, "geometry.json")
    utils.atomic_write_json(geometry_path, {"run_dir": run_dir, "classes": args.classes, "by_epoch": summaries,
                                            "ufm_optimum": mixup_geometry.mixup_geometry_summary(theory)})
    written.append(geometry_path)

    last = summaries[max(summaries)]
    print(f"epoch {max(summaries)} geometry: " + ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    for path in [os.path.join(run_dir, "summary.csv")] + written:
        print(path)


# ======================================================================================
# The study: a grid of runs, a table over seeds, its figures
# ======================================================================================


def study_cells(args):
    """Every cell of the grid as a sweep point (checked before anything trains): datasets x
    networks x losses x (mixup, no mixup unless --no_baselines) x seeds, then the panel losses with mixup on the first
    dataset and network. Each cell is a single run with these five settings replaced."""
    combos = [(d, m, loss, mix) for d in args.datasets for m in args.models for loss in args.losses
              for mix in ((True,) if args.no_baselines else (True, False))]
    combos += [(args.datasets[0], args.models[0], loss, True) for loss in args.panel_losses if loss not in args.losses]
    points = []
    for (dataset, model, loss, mix), seed in itertools.product(combos, args.seeds):
        cell = argparse.Namespace(**dict(vars(args), dataset=dataset, model=model, loss=loss, no_mixup=not mix,
                                         seed=seed))
        K, per_class = check_args(cell)
        # NC metrics at epochs 1-5, every 10th, the last and the snapshots, not at every epoch as a single run
        train = dict(train_config(cell), eval_epochs=sorted(set(train_utils.default_eval_epochs(cell.epochs))
                                                            | set(cell.snapshots)))
        points.append(dict(figure="mixup_study", params=dict(dataset=cell.dataset, model=cell.model.lower(),
                                                             loss=loss, mixup=mix, seed=seed),
                           per_class=per_class, K=K, train=train))
    return points


def study_cell(point, device, args):
    """Train (or reuse) one cell; its record: the per-seed numbers of the table (last row of
    summary.csv, last snapshot's geometry) and the curves over epochs."""
    p, recipe = point["params"], recipe_label(point["train"]["recipe"])
    try:
        inputs = run_inputs(point["train"], p["dataset"], point["per_class"], point["K"], device, args)
        run_dir = train(point["train"], inputs, device, args.models_dir)["run_dir"]
    except UserError as e:  # a diverged cell is a result of the grid (kept, reported), not the end of the study
        if not str(e).startswith("training diverged"):
            raise
        print(f"cell {describe(p)}: {e}", file=sys.stderr)
        return dict(p, recipe=recipe, diverged=str(e), failed=None, terminal=False, **{m: None for m in STUDY_METRICS})
    rows = read_back.read_csv(os.path.join(run_dir, "summary.csv"), ["epoch", "test_acc", "test_ece"],
                              "the study's table")
    snaps = snapshot_files.mixup_snapshots(run_dir)
    geometry = [read_back.read_json(snapshot_files.mixup_snapshot_path(run_dir, e, "json"),
                                    dict.fromkeys(GEOMETRY_METRICS, read_back.NUM_OR_NULL), "the study's table")
                for e, _ in snaps]
    curves = {k: [r.get(k) for r in rows] for k in ("nc1", "nc1_trace", "nc3") if k in rows[0]}
    failed = fit_checks.failure(rows, point["K"])
    if failed:
        print(f"cell {describe(p)}: failed to learn: {failed}", file=sys.stderr)
    return dict(p, recipe=recipe, failed=failed, terminal=fit_checks.terminal_phase(rows), run_dir=run_dir,
                last_snapshot=snaps[-1][1], K=point["K"], classes=point["train"]["classes"],
                train_acc=rows[-1]["train_acc"], nc1=rows[-1].get("nc1"),
                test_acc=rows[-1]["test_acc"], test_ece=rows[-1]["test_ece"],
                **{k: geometry[-1][k] for k in GEOMETRY_METRICS},
                **dict(zip(SPLIT_METRICS, residual_split.residual_split(snapshot_files.load_snapshot(snaps[-1][1])))),
                epochs=[r["epoch"] for r in rows], curves=curves, snapshot_epochs=[e for e, _ in snaps],
                residual=[g["diff_convex_residual_mean"] for g in geometry])


def describe(params):
    return ", ".join(f"{k}={v}" for k, v in params.items())


def learned(record):
    """Whether a cell's record counts in the means: trained, neither diverged nor failed to learn."""
    return record is not None and "diverged" not in record and not record.get("failed")


def study_table(records):
    """The table over seeds (ana_utils.table_over_seeds) of the cells that learned; per row also
    the recipe, n_diverged, n_failed (fit_checks.failure), n_averaged and n_terminal
    (fit_checks.terminal_phase). A row of cells that all failed keeps NaN means."""
    cells = [r for r in records if r is not None]
    table = ana_utils.table_over_seeds([r if learned(r) else dict(r, **{m: None for m in STUDY_METRICS})
                                        for r in cells], STUDY_KEYS, STUDY_METRICS)
    for row in table:
        rs = [r for r in cells if all(r[k] == row[k] for k in STUDY_KEYS)]
        row["recipe"] = "; ".join(dict.fromkeys(r.get("recipe", "?") for r in rs))
        row.update(n_diverged=sum("diverged" in r for r in rs), n_failed=sum(bool(r.get("failed")) for r in rs),
                   n_averaged=sum(learned(r) for r in rs), n_terminal=sum(bool(r.get("terminal")) for r in rs))
    return table


def study_dynamics(records, dataset, model):
    """Per loss (with mixup, on one dataset and network): nc curves and the convex-combination
    residual against epoch, as mean and min-max band over seeds."""
    out = {}
    for loss in dict.fromkeys(r["loss"] for r in records):
        rs = [r for r in records if (r["dataset"], r["model"], r["loss"], r["mixup"]) == (dataset, model, loss, True)]
        if rs:
            out[loss] = dict(epochs=rs[0]["epochs"], snapshot_epochs=rs[0]["snapshot_epochs"],
                             residual=ana_utils.band_over_seeds([r["residual"] for r in rs]),
                             **{k: ana_utils.band_over_seeds([r["curves"][k] for r in rs]) for k in rs[0]["curves"]})
    return out


def projection_panel(records, args, dataset, model, loss):
    """(snapshot, UFM overlay) of the first seed's last snapshot of a cell with mixup, None if not
    trained, or "diverged" / "failed to learn" (marked, not drawn): one network's features, never
    pooled across networks."""
    for r in records:
        if (r["dataset"], r["model"], r["loss"], r["mixup"], r["seed"]) == (dataset, model, loss, True, args.seeds[0]):
            if not learned(r):
                return "diverged" if "diverged" in r else "failed to learn"
            cfg = dict(loss=loss, mse_scale=args.mse_scale, smoothing=args.smoothing, focal_gamma=args.focal_gamma)
            snap = read_back.load_snapshot(r["last_snapshot"], "the study's projections")
            return snap, mixup_geometry.ufm_overlay(cfg, r["K"], r["classes"], args.theory_beta)
    return None


def training_summary(cfg):
    """A run's recipe and the settings it trains with, as one line of text."""
    schedule = (f"x{cfg['lr_gamma']:g} after epochs {','.join(map(str, cfg['lr_milestones']))}"
                if cfg["lr_schedule"] == "step" and cfg["lr_milestones"] else cfg["lr_schedule"])
    return (f"recipe {recipe_label(cfg['recipe'])}: {cfg['optimizer']} lr {cfg['lr']:g} {schedule}, warm-up "
            f"{cfg['warmup_epochs']}, weight decay {cfg['weight_decay']:g}, batch {cfg['batch_size']}, "
            f"{cfg['epochs']} epochs")


def probe_cell_seconds(point, device, args):
    """Training seconds per epoch of a cell from a 3-epoch probe, or the reason there is none (its
    data are missing and cannot be downloaded)."""
    p, cfg = point["params"], dict(point["train"], snapshots=[])
    try:
        _, data, objective = run_inputs(cfg, p["dataset"], point["per_class"], point["K"], device, args)
    except UserError as e:
        return str(e)
    return train_utils.probe_seconds_per_epoch(cfg, data, device, objective)


def study_dry_run(points, args, device):
    """--study --dry_run: every cell with its recipe, finished or to train, and the training time
    of each to train and of all, from a 3-epoch probe per (dataset, network, recipe) (losses and
    seeds cost the same); a cell whose data are missing is listed without an estimate."""
    seconds, total, todo, unknown = {}, 0.0, 0, 0
    for i, point in enumerate(points):
        done = point_records.finished_record(args.models_dir, point) is not None
        p, cfg = point["params"], point["train"]
        state = "finished"
        if not done and args.point in (None, i):
            key = (p["dataset"], p["model"], recipe_label(cfg["recipe"]))
            if key not in seconds:
                seconds[key] = probe_cell_seconds(point, device, args)
            todo += 1
            if isinstance(seconds[key], str):
                unknown += 1
                state = "to train, no estimate (below)"
            else:
                total += seconds[key] * cfg["epochs"]
                state = f"to train, {seconds[key] * cfg['epochs'] / 60:.1f} min"
        elif not done:
            state = "to train"
        print(f"cell {i + 1} of {len(points)} (--point {i}): {describe(p)}, {training_summary(cfg)}: {state}")
    for key, reason in seconds.items():
        if isinstance(reason, str):
            print(f"no estimate for {key[0]}, {key[1]}: {reason}")
    print(f"estimate for the {todo - unknown} cells to train with an estimate: {total / 60:.1f} min on {device} "
          f"(training only, from 3-epoch probes)" + (f"; {unknown} without one" if unknown else "")
          if todo else "nothing to train")
    return 0


def study(args, argv=None):
    """The study recipe: cells -> train or reuse (--point, --assemble) or launch them as jobs
    (--launch, each job this command with --point I) -> table over seeds -> figures."""
    args.datasets = [datasets.check_dataset(d, "--datasets") for d in args.datasets]
    for loss in args.losses + args.panel_losses:
        utils.check_choice("--losses/--panel_losses", loss, tuple(losses.LOSSES))
    figure_args.check_launch_args(args)
    points = study_cells(args)
    arg_combinations.check_point_index(args.point, len(points), "cells")
    device = figure_args.figure_device(args)
    if not (args.dry_run or args.assemble or args.launch):
        arg_combinations.check_output_dirs(args)
    if args.dry_run:
        return study_dry_run(points, args, device)
    if args.launch:
        job_launch.launch_points(points, args, sys.argv[1:] if argv is None else list(argv),
                            script=os.path.abspath(__file__))
        records, missing = sweep.run_sweep(points, None, args.models_dir, assemble_only=True)
    else:
        records, missing = sweep.run_sweep(points, lambda pt: study_cell(pt, device, args), args.models_dir,
                                           args.point, args.assemble)
    if args.point is not None:  # a job of the grid writes no table: --assemble does, or the next full run
        print(f"cell {args.point} finished; {len(missing)} of {len(points)} cells still missing; no table written",
              file=sys.stderr)
        return 0
    cells = [r for r in records if r is not None]
    table = study_table(records)
    d0, m0 = args.datasets[0], args.models[0].lower()
    models = [m.lower() for m in args.models]
    result = {"figure": "mixup_study", "argv": sys.argv[1:], "level": 0.95, "keys": STUDY_KEYS,
              "metrics": STUDY_METRICS, "table": table, "cells": cells,
              "missing": [points[i]["params"] for i in missing],
              "dynamics": study_dynamics([r for r in cells if learned(r)], d0, m0)}
    result.update(key=figure_store.runs_key(points), runs=dict(finished=len(points) - len(missing), total=len(points)))
    name, held = figure_store.choose_stem(args.plot_dir, "mixup_study" + ("_quick" if args.quick else ""), result)
    if name is None:  # this grid's table is there already, as full or fuller
        print(held)
        return 0
    stem = os.path.join(args.plot_dir, name)
    written = [stem + ".json", stem + ".csv"]
    utils.atomic_write_json(written[0], result)
    utils.atomic_write_csv(written[1], table)
    all_losses = list(dict.fromkeys(args.losses + args.panel_losses))
    written += [
        plot_utils.save_projection_table(
            [[projection_panel(cells, args, d, m, args.losses[0]) for m in models] for d in args.datasets],
            args.datasets, models, stem + "_projections.png", f"{args.losses[0]}, with mixup, last epoch"),
        plot_utils.save_projection_table([[projection_panel(cells, args, d0, m0, loss) for loss in all_losses]],
                                         [f"{d0}, {m0}"], all_losses, stem + "_losses.png", "with mixup, last epoch"),
        plot_utils.save_study_dynamics(result["dynamics"], stem + "_dynamics.png", f"{d0}, {m0}, with mixup"),
        plot_utils.save_study_calibration(table, stem + "_calibration.png")]
    for row in table:
        print(" ".join(f"{row[k]}" for k in STUDY_KEYS) + f" [{row['recipe']}] (n={row['n_seeds']}, diverged "
              f"{row['n_diverged']}, failed {row['n_failed']}, terminal phase {row['n_terminal']}): "
              + "; ".join(f"{m} {row[m + '_mean']:.3g} ± {row[m + '_std']:.2g} " + (
                  f"[{row[m + '_ci_lo']:.3g}, {row[m + '_ci_hi']:.3g}]" if np.isfinite(row[m + "_ci_lo"])
                  else f"range [{row[m + '_min']:.3g}, {row[m + '_max']:.3g}]") for m in STUDY_METRICS))
    for path in written:
        print(path)


if __name__ == "__main__":
    utils.cli(main)
