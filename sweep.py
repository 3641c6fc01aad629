"""Figure sweeps: the arguments every imbalanced-NC figure shares, points keyed by their
configuration, training or reusing them (`--point I`, `--assemble`), and assembling and saving a
figure's JSON and PNG.

A figure is a list of points; each point is a JSON-able dict holding everything that changes its
result (dataset, class sizes, clusters, seed, the train_run configuration, and `params`, the
values the figure plots, with `lam`, the lambda of the convex program, stored once). A finished
point is recorded in <models_dir>/points/<figure>_<config_key(point)>.json and reused; train_run
reuses the trained network itself the same way."""
import os
import sys

import ana_utils
import networks
import plot_utils
import train_utils
import utils
from utils import UserError

# --quick previews use small single-channel synthetic images (any class size, nothing to download).
QUICK_SYNTHETIC = {"image_size": 8, "channels": 1}
QUICK_MLP_WIDTH = 128
UFM_EPOCHS = 40


def add_figure_args(parser, epochs_help, ka=True):
    """The arguments every imbalanced-NC figure shares, under the original code's names (with
    aliases), and --point I / --assemble for sweeps run as job arrays."""
    parser.add_argument("--dataset_t", "--dataset", dest="dataset_t", default="cifar10",
                        help="cifar10 (default), fashion_mnist, mnist, digits, synthetic")
    parser.add_argument("--network", "--model", dest="network", default="ResNet18",
                        help="ResNet18 (default), VGG11, VGG13, MLP, CNN, UFM")
    if ka:
        parser.add_argument("--ka", type=int, default=5, help="number of majority classes k_A (default 5)")
    parser.add_argument("--reg_b", type=float, default=0.01, help="lam_b, bias regularisation (default 0.01)")
    parser.add_argument("--epoch", "--epochs", dest="epoch", type=int, default=None, help=epochs_help)
    parser.add_argument("--width", type=int, default=None, help="network width (default: the network's own; "
                        "--quick uses 128 for the MLP)")
    parser.add_argument("--allow_test_fill", action="store_true",
                        help="top up classes larger than the train split from the test split (the original did "
                             "this silently); otherwise such sizes are an error")
    parser.add_argument("--point", type=int, default=None,
                        help="train only point I (0-based, in the order the values are listed), then plot "
                             "whatever points are finished, naming the missing ones (for cluster job arrays)")
    parser.add_argument("--batched", action="store_true",
                        help="train the missing points that share network and data (MLP, CNN) together as one "
                             "vmapped model, each with its own lambda, seed and results (see README, Performance)")
    parser.add_argument("--assemble", action="store_true",
                        help="train nothing: plot the finished points and name the missing ones")
    utils.add_common_args(parser)
    return parser


def check_figure_args(args):
    """Check the shared figure arguments (presets already applied); returns the dataset's class count."""
    args.dataset_t = utils.check_dataset(args.dataset_t, "--dataset_t")
    args.network = networks.check_network_name(args.network)
    utils.check_nonneg("--reg_b", args.reg_b)
    if args.epoch is not None:
        utils.check_positive_ints("--epoch", [args.epoch])
    if args.width is not None:
        utils.check_positive_ints("--width", [args.width])
    K = utils.num_classes_of(args.dataset_t)
    if getattr(args, "ka", None) is not None and not 1 <= args.ka < K:
        raise UserError(f"--ka {args.ka}: must lie in 1..{K - 1} (both clusters non-empty)")
    return K


def figure_tag(args):
    """The dataset-and-network part of a figure's file stem ('ufm' for the UFM, which uses no images)."""
    return "ufm" if args.network == "ufm" else f"{args.dataset_t}_{args.network}"


def figure_device(args):
    """The torch device of a figure script (its CPU threads are set per point: point_work_size)."""
    device = utils.get_device(args.device)
    utils.ensure_writable_dir(args.plot_dir, "--plot_dir")
    return device


def point_work_size(point):
    """networks.step_work_size of a point's training step, for utils.set_threads."""
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
    float64, ending earlier at the relative-gradient test (train_utils.UFM_REL_GRAD_TOL: 3-8 epochs
    at the paper's scale); evaluated and checkpointed at epochs 1, 2, 3, 5, 10, 20, 40, ... and the
    last."""
    evals = [e for e in (1, 2, 3, 5, 10, 20, 40, 80, 160, 320, 640) if e <= epochs] + [epochs]
    return dict(cfg, network="ufm", optimizer="lbfgs", lr=1.0, momentum=0.0, batch_size=int(num_samples),
                lr_milestones=[], weight_decay=0.0, warm_epochs=0, warm_factor=1.0,
                epochs=epochs, eval_epochs=sorted(set(evals)), feat_dim=max(num_classes, 16), width=None)


def figure_point(figure, args, sizes, clusters, params, epochs, milestone_frac, weight_decay,
                 warm_frac=0.0, history=False, ufm_epochs=UFM_EPOCHS, lam_ratio=ana_utils.SCRIPT_LAM_RATIO):
    """One point of a figure: data, clusters, the plotted `params` and the train_run configuration.

    params["lam"] is the lambda of the convex program; the training weights lam_H, lam_W follow
    from it and lam_ratio = lam_W / lam_H (ana_utils.split_lambda), in this one place.
    Networks: SGD (momentum 0.9, batch 128), lr 0.01 -> 0.001 at milestone_frac of `epochs`
    (--epoch overrides), regularisation at 1/10 for the first warm_frac of training (theory.md
    section 4), evaluated (NC metrics, checkpoint) at 1-5, every 10th epoch and the last; a --quick
    point without history only at the last (25 evaluations cost a 200-epoch MLP 1.7x). --network
    UFM: ufm_train_config (full-batch L-BFGS to the optimum, ufm_epochs epochs
    unless --epoch is given)."""
    network = args.network
    sizes = [int(n) for n in sizes]
    lam_h, lam_w = ana_utils.split_lambda(params["lam"], lam_ratio)
    base = dict(lam_h=lam_h, lam_w=lam_w, lam_b=float(args.reg_b), seed=int(args.seed))
    if network == "ufm":
        E = int(args.epoch or ufm_epochs)
        train = ufm_train_config(dict(base, name=f"{figure}_ufm"), len(sizes), sum(sizes), E)
    else:
        E = int(args.epoch or epochs)
        train = dict(base, name=f"{figure}_{network}", network=network, epochs=E, optimizer="sgd", lr=0.01,
                     momentum=0.9, batch_size=128, lr_milestones=[max(1, int(round(E * milestone_frac)))],
                     lr_gamma=0.1, weight_decay=float(weight_decay), warm_epochs=int(round(E * warm_frac)),
                     warm_factor=0.1, amp=bool(args.amp), eval_epochs=[E] if args.quick and not history else None,
                     width=args.width if args.width is not None else (QUICK_MLP_WIDTH if args.quick and network == "mlp" else None))
    # The UFM's features are free parameters: only the labels are used, so no images are loaded.
    dataset = "synthetic" if network == "ufm" else args.dataset_t
    synthetic = QUICK_SYNTHETIC if (network == "ufm" or (args.quick and dataset == "synthetic")) else None
    return dict(figure=figure, dataset=dataset, sizes=sizes, clusters=[list(c) for c in clusters],
                seed=int(args.seed), allow_test_fill=bool(args.allow_test_fill), synthetic=synthetic,
                params=params, train=train, history=bool(history))


def point_record_path(models_dir, point):
    return os.path.join(models_dir, "points", f"{point['figure']}_{utils.config_key(point)}.json")


def describe_params(params):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_sweep(points, run_point, models_dir, only=None, assemble_only=False):
    """Run (or reuse) every point, or only point `only`; return (records, missing indices).

    run_point(point) -> a JSON-able record, stored in point_record_path and reused by later calls.
    With assemble_only nothing is trained. Missing points are named on stderr. records[i] is None
    where missing."""
    if only is not None and not 0 <= only < len(points):
        raise UserError(f"--point {only}: allowed are 0..{len(points) - 1} ({len(points)} points)")
    if only is not None and assemble_only:
        raise UserError("--point with --assemble: --assemble trains nothing; give one of them")
    records, missing = [], []
    for i, point in enumerate(points):
        path = point_record_path(models_dir, point)
        record = None
        if os.path.exists(path):
            record = utils.read_json(path)
        elif not assemble_only and only in (None, i):
            print(f"[point {i}/{len(points) - 1}] {describe_params(point['params'])}", file=sys.stderr)
            record = run_point(point)
            utils.atomic_write_json(path, record)
        if record is None:
            missing.append(i)
        records.append(record)
    if missing:
        print(f"missing points ({len(missing)} of {len(points)}, not trained yet; run each with --point I): "
              + "; ".join(f"{i} ({describe_params(points[i]['params'])})" for i in missing), file=sys.stderr)
    return records, missing


def train_point(point, device, models_dir, data_dir):
    """Train (or reuse) one point with train_utils.train_run and summarise its Z: the sweep's run_point."""
    data = utils.get_data(point["dataset"], point["sizes"], point["seed"], data_dir, point["allow_test_fill"],
                          point.get("synthetic"))
    res = train_utils.train_run(point["train"], data, device, models_dir)
    minority = min(point["clusters"], key=lambda c: point["sizes"][c[0]])
    record = dict(params=point["params"], sizes=point["sizes"], clusters=point["clusters"], Z=res["Z"], b=res["b"],
                  nc=res["final"], **ana_utils.z_summary(res["Z"], point["clusters"], minority),
                  run_dir=res["run_dir"], train=point["train"])
    if point.get("history"):
        record["history"] = utils.read_csv(os.path.join(res["run_dir"], "summary.csv"))
    return record


def batch_groups(points, models_dir):
    """The missing points that train_utils.train_batched can train together: lists of two or more
    points with the same data and the same training configuration but for train_utils.BATCHED_OWN_KEYS."""
    groups = {}
    for point in points:
        if os.path.exists(point_record_path(models_dir, point)) or not train_utils.batchable(point["train"]):
            continue
        shared = {k: v for k, v in point["train"].items() if k not in train_utils.BATCHED_OWN_KEYS}
        key = utils.config_key([point["dataset"], point["sizes"], point["seed"], point["allow_test_fill"],
                                point.get("synthetic"), shared])
        groups.setdefault(key, []).append(point)
    return [g for g in groups.values() if len(g) > 1]


def train_batched_groups(points, args, device):
    """--batched: train each batch_groups group as one vmapped model; run_sweep then finds their runs
    finished and only summarises them."""
    for group in batch_groups(points, args.models_dir):
        first = group[0]
        data = utils.get_data(first["dataset"], first["sizes"], first["seed"], args.data_dir, first["allow_test_fill"],
                              first.get("synthetic"))
        if device.type == "cpu":
            utils.set_threads(point_work_size(first) * len(group), args.threads)
        print(f"[batched] training {len(group)} points together: "
              + "; ".join(describe_params(p["params"]) for p in group), file=sys.stderr)
        train_utils.train_batched([p["train"] for p in group], data, device, args.models_dir)


def train_points(points, args):
    """Train the missing points of a figure (or only --point I) and reuse the finished ones;
    returns (records, missing indices). With --batched (and neither --point nor --assemble) the
    points that can share one vmapped model are trained together first."""
    device = figure_device(args)
    if getattr(args, "batched", False) and args.point is None and not args.assemble:
        train_batched_groups(points, args, device)

    def run_point(point):
        if device.type == "cpu":
            utils.set_threads(point_work_size(point), args.threads)
        return train_point(point, device, args.models_dir, args.data_dir)
    return run_sweep(points, run_point, args.models_dir, args.point, args.assemble)


def assemble_figure(figure, settings, points, records, missing, lam_b):
    """The figure's JSON: settings, each finished point with its theory prediction, the missing ones."""
    out = []
    for i, rec in enumerate(records):
        if rec is not None:
            out.append(dict(rec, index=i,
                            theory=ana_utils.ufm_theory(rec["sizes"], rec["clusters"], rec["params"]["lam"], lam_b)))
    return {"figure": figure, "argv": sys.argv[1:], "settings": settings, "points": out,
            "missing": [dict(index=i, params=points[i]["params"]) for i in missing]}


def save_figure_result(result, args, stem):
    """Write the figure's JSON and PNG under --plot_dir (the --quick ones with a _quick suffix) and
    print their paths."""
    stem += "_quick" if args.quick else ""
    for path in plot_utils.write_figure(result, args.plot_dir, stem):
        print(path)
