"""Mixup and neural collapse (theory.md section 5): train with mixup, snapshot the last-layer
features of mixed-up training examples from three classes, project them to 2-D, summarise the
geometry, and plot it against the free-feature (UFM) optimum of the same loss."""
import os

import numpy as np

import ana_utils
import mixup_geometry
import networks
import plot_utils
import train_utils
import utils
from utils import UserError

# Full balanced training sets by default (utils.TRAIN_PER_CLASS; synthetic: 100 per class).
SYNTHETIC_PER_CLASS = 100
# --quick: bundled 8x8 digits and a small MLP, a CPU preview of under a minute with no download. Weight
# decay 1e-2 at batch 64 makes the features collapse within 200 epochs (1e-4 barely acts in 2,000 steps);
# eval-mode collection, since batch statistics of mixed batches from three classes blur a small network's features.
QUICK = dict(dataset="digits", model="mlp", epochs=200, batch_size=64, lr=0.05, weight_decay=1e-2,
             snapshot_size=900, feature_mode="eval")


def parse_args(argv):
    p = utils.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="cifar10", help=" | ".join(utils.DATASETS))
    p.add_argument("--model", default="resnet18",
                   help=" | ".join(n for n in networks.NETWORKS + tuple(networks.MIXUP_NETWORKS) if n != "ufm"))
    p.add_argument("--width", type=int, default=None, help="network width (wrn: widening factor 10; vit: 192)")
    p.add_argument("--depth", type=int, default=None, help="wrn depth (40) or vit blocks (6)")
    p.add_argument("--loss", default="cross_entropy", help=" | ".join(train_utils.LOSSES))
    p.add_argument("--mse_scale", type=float, default=1.0, help="mse: target scale")
    p.add_argument("--smoothing", type=float, default=0.1, help="label_smoothing: epsilon")
    p.add_argument("--focal_gamma", type=float, default=2.0, help="focal: gamma")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--optimizer", default="sgd", help="sgd | adam | adamw")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--lr_milestones", type=int, nargs="*", default=None,
                   help="epochs after which the lr is multiplied by --lr_gamma (default: 30%%, 50%%, 90%% of training)")
    p.add_argument("--lr_gamma", type=float, default=0.1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--alpha", type=float, default=1.0, help="mixup coefficient ~ Beta(alpha, alpha)")
    p.add_argument("--no_mixup", action="store_true", help="plain training (baseline)")
    p.add_argument("--fixed_etf", action="store_true", help="a fixed simplex-ETF classifier")
    p.add_argument("--train_per_class", type=int, default=None, help="training images per class (default: all)")
    p.add_argument("--num_classes", type=int, default=4, help="synthetic data only: number of classes")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="the three classes to visualise (default: drawn from the seed)")
    p.add_argument("--snapshots", type=int, nargs="+", default=None,
                   help="epochs to snapshot features (default: 8 roughly log-spaced, ending at the last)")
    p.add_argument("--snapshot_size", type=int, default=1500, help="mixed examples per snapshot")
    p.add_argument("--feature_mode", default="train", help="train (batch-norm batch statistics, as the paper) | eval")
    p.add_argument("--theory_beta", type=float, default=0.01, help="beta of the UFM overlay")
    utils.add_common_args(p)
    return utils.parse_with_presets(p, argv, QUICK)


def check_args(args):
    """Every bad argument fails here with one line, before any data is loaded or run folder made."""
    args.dataset = utils.check_dataset(args.dataset)
    allowed = [n for n in networks.NETWORKS + tuple(networks.MIXUP_NETWORKS) if n != "ufm"]
    if args.model.lower() == "ufm":
        raise UserError("--model ufm: mixing inputs needs a network; for the free-feature model run "
                        "`python utils.py mixup-ufm`")
    if args.model.lower() not in allowed:
        raise UserError(f"--model {args.model}: allowed are {', '.join(allowed)}")
    utils.check_choice("--loss", args.loss, tuple(train_utils.LOSSES))
    utils.check_positive("--mse_scale", args.mse_scale)
    utils.check_fraction("--smoothing", args.smoothing)
    utils.check_nonneg("--focal_gamma", args.focal_gamma)
    utils.check_choice("--optimizer", args.optimizer.lower(), ("sgd", "adam", "adamw"))
    if args.feature_mode not in ("train", "eval"):
        raise UserError(f"--feature_mode {args.feature_mode}: allowed are train, eval")
    utils.check_positive_ints("--epochs", [args.epochs])
    utils.check_positive_ints("--width/--depth", [v for v in (args.width, args.depth) if v is not None])
    utils.check_positive_ints("--snapshot_size", [args.snapshot_size])
    utils.check_positive("--theory_beta", args.theory_beta)
    if args.snapshot_size < 2:
        raise UserError("--snapshot_size: at least 2 mixed examples")
    if args.dataset == "synthetic" and args.num_classes < 3:
        raise UserError(f"--num_classes {args.num_classes}: three classes are visualised, so at least 3")
    K = utils.num_classes_of(args.dataset, [0] * args.num_classes)
    per_class = (args.train_per_class if args.train_per_class is not None
                 else utils.TRAIN_PER_CLASS.get(args.dataset, SYNTHETIC_PER_CLASS))
    utils.check_positive_ints("--train_per_class", [per_class])
    if args.classes is None:
        args.classes = sorted(np.random.default_rng(args.seed).choice(K, 3, replace=False).tolist())
    if len(args.classes) != 3 or len(set(args.classes)) != 3 or not all(0 <= c < K for c in args.classes):
        raise UserError(f"--classes {args.classes}: give three distinct class indices in 0..{K - 1}")
    if args.snapshots is None:
        args.snapshots = sorted(set(np.unique(np.round(np.geomspace(1, args.epochs, 8))).astype(int).tolist()))
    bad = [e for e in args.snapshots if not 1 <= e <= args.epochs]
    if bad:
        raise UserError(f"--snapshots {bad}: snapshot epochs must lie in 1..{args.epochs}")
    if args.lr_milestones is None:
        args.lr_milestones = sorted({max(1, round(f * args.epochs)) for f in (0.3, 0.5, 0.9)})
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
                batch_size=args.batch_size, eval_epochs=list(range(1, args.epochs + 1)), seed=args.seed,
                amp=args.amp, loss=args.loss, mse_scale=args.mse_scale, smoothing=args.smoothing,
                focal_gamma=args.focal_gamma, alpha=args.alpha, mixup=not args.no_mixup,
                fixed_etf=args.fixed_etf, classes=args.classes, snapshots=args.snapshots,
                snapshot_size=args.snapshot_size, feature_mode=args.feature_mode)


def make_on_eval(cfg, data, loss_fn, device):
    """Per evaluated epoch: test loss and ECE (15 bins) as CSV columns; at snapshot epochs, the
    mixed-feature snapshot (.npz) and its geometry summary (.json) in the run folder."""
    def on_eval(model, epoch, run_dir):
        _, logits = ana_utils.extract_features(model, data.x_test.to(device))
        row = {"test_loss": loss_fn(logits, data.y_test).mean().item(),
               "test_ece": mixup_geometry.expected_calibration_error(logits, data.y_test)}
        if epoch in cfg["snapshots"]:
            rng = np.random.default_rng([cfg["seed"], epoch])
            snap = mixup_geometry.collect_mixup_features(model, data.x_train, data.y_train, cfg["classes"],
                                                    cfg["snapshot_size"], cfg["alpha"], rng,
                                                    train_mode=cfg["feature_mode"] == "train")
            utils.atomic_savez(utils.mixup_snapshot_path(run_dir, epoch), epoch=epoch, **snap)
            utils.atomic_write_json(utils.mixup_snapshot_path(run_dir, epoch, "json"),
                                    mixup_geometry.mixup_geometry_summary(snap))
        return row
    return on_eval


def main(argv=None):
    args = parse_args(argv)
    K, per_class = check_args(args)
    device = utils.get_device(args.device)
    cfg = train_config(args)
    loss_fn = train_utils.get_loss(args.loss, args.mse_scale, args.smoothing, args.focal_gamma)

    data = utils.get_data(args.dataset, [per_class] * K, args.seed, args.data_dir)
    if device.type == "cpu":  # small layers run fastest single-threaded on a shared CPU
        utils.set_threads(networks.step_work_size(cfg["network"], min(cfg["batch_size"], len(data.y_train)),
                                                  data.x_train[0].numel(), cfg["width"]), args.threads)
    objective = train_utils.make_mixup_objective(loss_fn, args.alpha, mixup=not args.no_mixup)
    result = train_utils.train_run(cfg, data, device, args.models_dir, objective=objective,
                                   on_eval=make_on_eval(cfg, data, loss_fn, device))
    run_dir = result["run_dir"]
    if result["reused"]:
        print(f"reusing finished run {run_dir}")

    snaps = [(e, utils.load_snapshot(p)) for e, p in utils.mixup_snapshots(run_dir)]
    summaries = {e: utils.read_json(utils.mixup_snapshot_path(run_dir, e, "json")) for e, _ in snaps}
    theory = train_utils.ufm_overlay(cfg, K, args.classes, args.theory_beta)

    out_dir = os.path.join(args.plot_dir, os.path.basename(run_dir))
    written = [utils.mixup_snapshot_path(run_dir, e) for e, _ in snaps]
    for e, snap in snaps:
        written.append(plot_utils.save_mixup_projection(snap, os.path.join(out_dir, f"projection_e{e:04d}.png"),
                                                   f"{cfg['name']}, epoch {e}", theory))
    written.append(plot_utils.save_mixup_grid([s for _, s in snaps], [f"epoch {e}" for e, _ in snaps],
                                          os.path.join(out_dir, "projection_grid.png"), theory))
    label = {cfg["name"]: os.path.join(run_dir, "summary.csv")}
    for kind in ("loss", "accuracy"):
        written.append(plot_utils.save_mixup_curves(label, os.path.join(out_dir, f"{kind}.png"), kind))
    geometry_path = os.path.join(out_dir, "geometry.json")
    utils.atomic_write_json(geometry_path, {"run_dir": run_dir, "classes": args.classes, "by_epoch": summaries,
                                            "ufm_optimum": mixup_geometry.mixup_geometry_summary(theory)})
    written.append(geometry_path)

    last = summaries[max(summaries)]
    print(f"epoch {max(summaries)} geometry: " + ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    for path in [os.path.join(run_dir, "summary.csv")] + written:
        print(path)


if __name__ == "__main__":
    utils.cli(main)
