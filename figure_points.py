"""A figure's points: their configuration and loss, work size, description and the --quick scaling notes."""
import datasets
import figure_args
import networks
import rebalance_program
import theory_formulas
import utils
from utils import UserError

UFM_EPOCHS = 40


def loss_threshold(args, sizes, clusters, lam_b):
    """The minority cluster's collapse threshold lambda* under --loss / --oversample (theory.md section 9)."""
    minority = min(clusters, key=lambda c: sizes[c[0]])
    loss = point_loss(args, sizes, clusters)
    if rebalance_program.is_plain(loss):
        return theory_formulas.collapse_threshold(sizes[minority[0]], sum(sizes))
    return rebalance_program.collapse_threshold(loss["sizes"], loss, minority, lam_b)


def point_work_size(point):
    """networks.step_work_size of a point's training step, for cpu_threads.set_threads."""
    train, N = point["train"], sum(point["sizes"])
    synthetic = point.get("synthetic") or {}
    input_numel = synthetic.get("image_size", 32) ** 2 * synthetic.get("channels", 3)
    return networks.step_work_size(train["network"], min(train["batch_size"], N), input_numel, train.get("width"),
                                   train.get("feat_dim"))


def ufm_train_config(cfg, num_classes, num_samples, epochs):
    """The UFM version of a figure's training configuration: full-batch L-BFGS (lr 1) to the optimum.

    The UFM minimises exactly the regularised loss of theory.md section 2, so lam_h, lam_w, lam_b keep
    their meaning (lambda = 2 sqrt(lam_h lam_w)); SGD schedules, the warm phase and weight decay (which
    L-BFGS does not apply) are dropped. At most `epochs` epochs of up to 50 L-BFGS steps each, in
    float64, ending earlier at the relative-gradient test (ufm_training.UFM_REL_GRAD_TOL: 3-8 epochs
    at the paper's scale); evaluated and checkpointed at epochs 1, 2, 3, 5, 10, 20, 40, ... and the
    last."""
    evals = [e for e in (1, 2, 3, 5, 10, 20, 40, 80, 160, 320, 640) if e <= epochs] + [epochs]
    return dict(cfg, network="ufm", optimizer="lbfgs", lr=1.0, momentum=0.0, batch_size=int(num_samples),
                lr_milestones=[], weight_decay=0.0, warm_epochs=0, warm_factor=1.0,
                epochs=epochs, eval_epochs=sorted(set(evals)), feat_dim=max(num_classes, 16), width=None)


def figure_point(figure, args, sizes, clusters, params, epochs, milestone_frac, weight_decay,
                 warm_frac=0.0, history=False, ufm_epochs=UFM_EPOCHS, lam_ratio=theory_formulas.SCRIPT_LAM_RATIO,
                 scaled=None):
    """One point of a figure: data, clusters, the plotted `params` and the train_run configuration.

    params["lam"] is the lambda of the convex program; the training weights lam_H, lam_W follow
    from it and lam_ratio = lam_W / lam_H (theory_formulas.split_lambda), in this one place.
    Networks: SGD (momentum 0.9, batch 128), lr --lr (0.01) -> --lr/10 at milestone_frac of `epochs`
    (--epochs overrides), weight decay --weight_decay or else the figure's `weight_decay`,
    regularisation at 1/10 for the first warm_frac of training (theory.md section 4), evaluated (NC
    metrics, checkpoint) at 1-5, every 10th epoch and the last; a --quick point without history only
    at the last (25 evaluations cost a 200-epoch MLP 1.7x). --network UFM: ufm_train_config
    (full-batch L-BFGS to the optimum, ufm_epochs epochs unless --epochs is given).
    scaled: {name: {"from": value chosen by the script, "factor": f}} for the values --quick scaled
    (only values the user did not type), shown wherever the point is (describe_point, the JSON)."""
    network = args.network
    sizes = [int(n) for n in sizes]
    lam_h, lam_w = theory_formulas.split_lambda(params["lam"], lam_ratio)
    base = dict(lam_h=lam_h, lam_w=lam_w, lam_b=float(args.reg_b), seed=int(args.seed))
    if network == "ufm":
        E = int(args.epoch or ufm_epochs)
        train = ufm_train_config(dict(base, name=f"{figure}_ufm"), len(sizes), sum(sizes), E)
    else:
        E = int(args.epoch or epochs)
        train = dict(base, name=f"{figure}_{network}", network=network, epochs=E, optimizer="sgd", lr=float(args.lr),
                     momentum=0.9, batch_size=128, lr_milestones=[max(1, int(round(E * milestone_frac)))],
                     lr_gamma=0.1, warm_epochs=int(round(E * warm_frac)),
                     weight_decay=float(weight_decay if args.weight_decay is None else args.weight_decay),
                     warm_factor=0.1, amp=bool(args.amp), eval_epochs=[E] if args.quick and not history else None,
                     width=args.width if args.width is not None
                     else (args.mlp_width if network in ("mlp", "mlp_linear") else None))
    # The UFM's features are free parameters: only the labels are used, so no images are loaded.
    dataset = "synthetic" if network == "ufm" else args.dataset_t
    synthetic = figure_args.QUICK_SYNTHETIC if (network == "ufm" or (args.quick and dataset == "synthetic")) else None
    loss = point_loss(args, sizes, clusters)
    if not rebalance_program.is_plain(loss):   # cross-entropy keeps the points (and their hashes) it had
        train["loss"] = rebalance_program.training_loss(loss, sizes)
    point = dict(figure=figure, dataset=dataset, sizes=sizes, clusters=[list(c) for c in clusters],
                 seed=int(args.seed), allow_test_fill=bool(args.allow_test_fill), synthetic=synthetic,
                 params=params, train=train, history=bool(history),
                 **({} if rebalance_program.is_plain(loss) else {"loss": loss}))
    return dict(point, scaled=scaled) if scaled else point


def point_loss(args, sizes, clusters):
    """The loss of --loss and --oversample (a factor per cluster) for these class sizes (theory.md section 9)."""
    over = None
    if getattr(args, "oversample", None) is not None:
        if len(args.oversample) != len(clusters):
            raise UserError(f"--oversample: {len(args.oversample)} values; give one factor per cluster "
                            f"({len(clusters)})")
        utils.check_positive_ints("--oversample", args.oversample)
        over = [0] * len(sizes)
        for f, c in zip(args.oversample, clusters):
            for k in c:
                over[k] = f
    return rebalance_program.loss_from_args(args, sizes, over)


def quick_scaled(args, **values):
    """figure_point's `scaled` from name=(value the script chose, factor --quick multiplies it by): the
    values with a factor other than 1, None without --quick or without any. A typed value is never passed."""
    scaled = {k: {"from": v, "factor": f} for k, (v, f) in values.items() if f != 1}
    return scaled if args.quick and scaled else None


def scaled_text(scaled):
    """'--quick scaled lam = 0.0027 x 2.236, ...' for a point's `scaled` ('' when nothing was)."""
    if not scaled:
        return ""
    return "--quick scaled " + ", ".join(
        f"{k} = {v['from']:.4g} x {v['factor']:.4g}" if isinstance(v["from"], (int, float))
        else f"{k} x {v['factor']:.4g}" for k, v in scaled.items())


def scaled_note(points):
    """One line naming the values --quick scaled in any of the points, with their factors ('' if none)."""
    factors = {}
    for point in points:
        for k, v in (point.get("scaled") or {}).items():
            factors.setdefault(k, set()).add(round(v["factor"], 6))
    return ("scaled by --quick: " + ", ".join(f"{k} x {'/'.join(f'{f:.4g}' for f in sorted(fs))}"
                                              for k, fs in factors.items())) if factors else ""


def point_data(point, data_dir):
    """The training subset and test split of a point (datasets.get_data with its settings)."""
    return datasets.get_data(point["dataset"], point["sizes"], point["seed"], data_dir, point["allow_test_fill"],
                             point.get("synthetic"))


def describe_params(params):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def describe_point(point):
    """The point's plotted values and (unless they hold it) its seed."""
    text = describe_params(point["params"])
    text = text if "seed" in point["params"] or "seed" not in point else f"{text}, seed={point['seed']}"
    return f"{text} ({scaled_text(point['scaled'])})" if point.get("scaled") else text


def seeded_points(points, seeds):
    """Every (point, seed) as its own run, point by point: run I is point I // len(seeds) with seed
    seeds[I % len(seeds)]. The seed keys the data subset and the training, as --seed does."""
    return [dict(pt, seed=int(s), train=dict(pt["train"], seed=int(s))) for pt in points for s in seeds]
