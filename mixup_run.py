"""One mixup run: its arguments checked and recipe applied, its configuration, training with snapshots, its dry run."""
import os

import numpy as np

import ana_utils
import cpu_threads
import data_parallel
import datasets
import losses
import mixup_batches
import mixup_geometry
import nc_layers
import networks
import read_back
import recipes
import result_files
import snapshot_files
import train_utils
import utils
from utils import UserError

# Full balanced training sets by default (datasets.TRAIN_PER_CLASS; synthetic: 100 per class).
SYNTHETIC_PER_CLASS = 100


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
        if key == "momentum" and str(args.optimizer).lower() != "sgd":   # sgd only: a study cell of an Adam recipe
            given = None                                   # keeps its recipe's (arg_combinations says so)
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
    utils.check_choice("--mix_per", args.mix_per, mixup_batches.MIX_PER)
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
    result_files.ensure_writable_dir(args.plot_dir, "--plot_dir")
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
    mixed-feature snapshot (.npz) and its geometry summary (.json) in the run folder. Under torchrun every rank
    computes the columns (per-layer NC from its shard, summed over ranks), rank 0 alone the snapshots."""
    def on_eval(model, epoch, run_dir):
        _, logits = ana_utils.extract_features(model, data.x_test.to(device))
        row = {"test_loss": loss_fn(logits, data.y_test).mean().item(),
               "test_ece": mixup_geometry.expected_calibration_error(logits, data.y_test, loss=cfg["loss"],
                                                                     mse_scale=cfg["mse_scale"])}
        if cfg.get("nc_layers"):
            shard = data_parallel.shard
            row.update(nc_layers.layer_nc(model, cfg["nc_layers"],
                                          (shard(data.x_train).to(device), shard(data.y_train).to(device)),
                                          (shard(data.x_test).to(device), shard(data.y_test).to(device))))
        if epoch in cfg["snapshots"] and data_parallel.is_rank0():
            rng = np.random.default_rng([cfg["seed"], epoch])
            snap = mixup_geometry.collect_mixup_features(model, data.x_train, data.y_train, cfg["classes"],
                                                    cfg["snapshot_size"], cfg["alpha"], rng,
                                                    train_mode=cfg["feature_mode"] == "train")
            result_files.atomic_savez(snapshot_files.mixup_snapshot_path(run_dir, epoch), epoch=epoch, **snap)
            result_files.atomic_write_json(snapshot_files.mixup_snapshot_path(run_dir, epoch, "json"),
                                    mixup_geometry.mixup_geometry_summary(snap))
        return row
    return on_eval


def run_inputs(cfg, dataset, per_class, K, device, args):
    """(per-sample loss, data, mixup objective) of the run `cfg` on a balanced subset of `dataset`;
    on the CPU, sets the threads for the run's step size and the free cores (--threads wins)."""
    loss_fn = losses.get_loss(cfg["loss"], cfg["mse_scale"], cfg["smoothing"], cfg["focal_gamma"])
    data = datasets.get_data(dataset, [per_class] * K, cfg["seed"], args.data_dir, synthetic=cfg["synthetic"])
    if device.type == "cpu":
        cpu_threads.set_threads(networks.step_work_size(cfg["network"], min(cfg["batch_size"], len(data.y_train)),
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


def training_summary(cfg):
    """A run's recipe and the settings it trains with, as one line of text."""
    schedule = (f"x{cfg['lr_gamma']:g} after epochs {','.join(map(str, cfg['lr_milestones']))}"
                if cfg["lr_schedule"] == "step" and cfg["lr_milestones"] else cfg["lr_schedule"])
    return (f"recipe {recipe_label(cfg['recipe'])}: {cfg['optimizer']} lr {cfg['lr']:g} {schedule}, warm-up "
            f"{cfg['warmup_epochs']}, weight decay {cfg['weight_decay']:g}, batch {cfg['batch_size']}, "
            f"{cfg['epochs']} epochs")
