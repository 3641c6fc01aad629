"""Figure sweeps: the arguments every imbalanced-NC figure shares, points keyed by their
configuration, training or reusing them (`--point I`, `--assemble`), and assembling and saving a
figure's JSON and PNG.

A figure is a list of points; each point is a JSON-able dict holding everything that changes its
result (dataset, class sizes, clusters, seed, the train_run configuration, and `params`, the
values the figure plots, with `lam`, the lambda of the convex program, stored once). A finished
point is recorded in <models_dir>/points/<figure>_<config_key(point)>.json and reused; train_run
reuses the trained network itself the same way."""
import argparse
import json
import os
import re
import shlex
import sys

import numpy as np

import arg_combinations
import batched_training
import datasets
import figure_store
import figure_theory
import launcher
import networks
import read_back
import rebalance_program
import run_estimate
import seed_stats
import seli
import theory_formulas
import train_utils
import utils
from utils import UserError

# --quick previews use small single-channel synthetic images (any class size, nothing to download).
QUICK_SYNTHETIC = {"image_size": 8, "channels": 1}
UFM_EPOCHS = 40


def add_figure_args(parser, epochs_help, ka=True):
    """The arguments every imbalanced-NC figure shares, under the original code's names (with
    aliases), and --point I / --assemble for sweeps run as job arrays."""
    parser.add_argument("--dataset", "--dataset_t", dest="dataset_t", default="cifar10",
                        help="cifar10 (default), fashion_mnist, mnist, digits, synthetic (--dataset_t: the original's "
                             "name)")
    parser.add_argument("--network", "--model", dest="network", default="ResNet18",
                        help="ResNet18 (default), VGG11, VGG13, MLP, MLP_linear (an MLP whose features pass a last "
                             "linear layer, so they can be negative as the UFM's), CNN, UFM")
    if ka:
        parser.add_argument("--ka", type=int, default=5, help="number of majority classes k_A (default 5)")
    parser.add_argument("--reg_b", type=float, default=0.01, help="lam_b, bias regularisation (default 0.01)")
    rebalance_program.add_loss_args(parser)
    parser.add_argument("--oversample", type=int, nargs="+", default=None, help="a factor >= 1 per cluster (majority "
                        "first); the program's sizes become f n, the training weights them (theory.md section 9)")
    parser.add_argument("--epochs", "--epoch", dest="epoch", type=int, default=None,
                        help=epochs_help + " (--epoch: the original's name)")
    parser.add_argument("--width", type=int, default=None, help="network width (default: the network's own; "
                        "--quick: see below)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01; --quick: see below)")
    parser.add_argument("--weight_decay", type=float, default=None,
                        help="SGD weight decay (default: the figure's, 5e-4 for block and limit, none for the minority "
                             "figures; --quick none, since on the classifier it adds to lam_W)")
    parser.add_argument("--allow_test_fill", action="store_true",
                        help="top up classes larger than the train split from the test split (the original did "
                             "this silently); otherwise such sizes are an error")
    parser.add_argument("--point", type=int, default=None, metavar="I",
                        help="train only run I, for cluster job arrays; writes no figure (--assemble does, when "
                             "every run is finished). I is a run index (0-based): without --seeds run I is point I "
                             "in the order the values are listed; with --seeds it is point I // (number of seeds) "
                             "with seed number I %% (number of seeds) (see --list_points)")
    parser.add_argument("--assemble", action="store_true",
                        help="train nothing: plot the finished points; fails naming the missing runs unless "
                             "--partial")
    parser.add_argument("--partial", action="store_true",
                        help="with --assemble or --launch ... --wait: write the figure even when runs are missing "
                             "(listed in its JSON); it never replaces a figure of the same runs with more finished")
    parser.add_argument("--batched", action="store_const", const=True, default=None,
                        help="train the missing points that share network and data together as one vmapped model, "
                             "each with its own lambda, seed and results (MLP, CNN, ResNet18, VGG; see "
                             "docs/performance.md). Default: the MLPs and the small CNN with --quick, nothing "
                             "otherwise")
    parser.add_argument("--no_batched", "--no-batched", dest="batched", action="store_const", const=False,
                        help="train every point alone (--no-batched: the older spelling)")
    parser.add_argument("--seeds", type=utils.seed_type, nargs="+", default=None,
                        help="several seeds (replaces --seed): every (point, seed) is its own run, and the figure "
                             "gets per point the mean, std and 95%% t-interval over seeds. Runs are numbered point "
                             "by point: --point I trains point I // (number of seeds) with seed number "
                             "I %% (number of seeds) (see --list_points)")
    parser.add_argument("--list_points", action="store_true",
                        help="print the runs (index for --point, parameters, seed, finished or not) as JSON and exit")
    add_launch_args(parser)
    parser.add_argument("--dry_run", action="store_true",
                        help="train and plot nothing: list the points, which are finished, and estimate the time "
                             "of the rest (from the finished points' recorded seconds per epoch, else a 3-epoch probe)")
    utils.add_common_args(parser)
    parser.set_defaults(mlp_width=None)  # no flag: the --quick presets set the preview MLP's width (--width wins)
    return parser


def retire_flag(parser, flag, instead):
    """Refuse `flag`, a name that means something else in another script, with one error line saying
    what to give `instead` (argparse alone would say 'unrecognized arguments'); hidden from --help."""
    class Retired(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            raise UserError(f"{option_string}: {instead}")
    parser.add_argument(flag, action=Retired, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def quick_epilog(quick, scaling):
    """The --quick paragraph of a figure script's help, written from its presets `quick`, then
    `scaling` (how the preview's sizes and lambdas relate to the paper's)."""
    side = QUICK_SYNTHETIC["image_size"]
    return (f"--quick: synthetic {side}x{side} images, a width-{quick['mlp_width']} {quick['network']}, "
            f"lr {quick['lr']} (a tenth after the milestone), no weight decay, {quick['train_epochs']} epochs; "
            f"points of one data size trained together (--batched; --no_batched trains them one by one); {scaling}")


def add_launch_args(parser):
    """--launch local|slurm (submitit) and its settings: submit every missing run as one job array."""
    g = parser.add_argument_group("launching the missing runs as jobs (submitit)")
    for flags, kw in LAUNCH_ARGS:
        g.add_argument(*flags, **kw)


LAUNCH_ARGS = [
    (("--launch",), dict(default=None, choices=("local", "slurm"),
                         help="submit every missing run as a job running this command with --point I: slurm (a "
                              "job array through sbatch) or local (every job at once on this machine, one GPU "
                              "each when several are visible); logs in <models_dir>/launcher/")),
    (("--wait",), dict(action="store_true", help="with --launch: wait for the jobs, then assemble the figure")),
    (("--slurm_partition",), dict(default=None, help="SLURM partition")),
    (("--slurm_time",), dict(type=int, default=24 * 60,
                             help="time limit of a job in minutes (default 1440; also the local jobs' timeout)")),
    (("--slurm_gpus_per_task",), dict(type=int, default=None, help="GPUs per SLURM job (default: none asked)")),
    (("--slurm_cpus_per_task",), dict(type=int, default=None, help="CPU cores per SLURM job (default: the "
                                                                   "cluster's)")),
    (("--slurm_mem",), dict(default=None, help="memory per SLURM job, e.g. 32G or 4000M (default: the cluster's)")),
    (("--slurm_signal_delay",), dict(type=int, default=None, metavar="SECONDS",
                                     help="SLURM warns a job this long before its time limit; the run then "
                                          "checkpoints and the job requeues itself (default a sixth of "
                                          "--slurm_time, 10 to 90 s)")),
    (("--slurm_max_requeues",), dict(type=int, default=launcher.DEFAULT_MAX_REQUEUES,
                                     help="a job requeues itself at most this often (time limits and "
                                          f"preemptions together; default {launcher.DEFAULT_MAX_REQUEUES}); "
                                          "then it fails, its checkpoint kept")),
    (("--slurm_array_parallelism",), dict(type=int, default=None,
                                          help="at most this many SLURM jobs of the array at once")),
    (("--slurm_extra",), dict(nargs="+", default=[], metavar="KEY=VALUE",
                              help="more sbatch options, passed through as --KEY=VALUE (e.g. account=abc mem=32G)")),
]


def check_figure_args(args):
    """Check the shared figure arguments (presets already applied); returns the dataset's class count."""
    args.dataset_t = datasets.check_dataset(args.dataset_t, "--dataset")
    args.network = networks.check_network_name(args.network)
    utils.check_nonneg("--reg_b", args.reg_b)
    utils.check_positive("--lr", args.lr)
    if args.weight_decay is not None:
        utils.check_nonneg("--weight_decay", args.weight_decay)
    if args.epoch is not None:
        utils.check_positive_ints("--epochs", [args.epoch])
    if args.width is not None:
        utils.check_positive_ints("--width", [args.width])
    check_launch_args(args)
    rebalance_program.loss_from_args(args, [2, 1])  # the loss's name and parameters
    K = datasets.num_classes_of(args.dataset_t)
    if getattr(args, "ka", None) is not None and not 1 <= args.ka < K:
        raise UserError(f"--ka {args.ka}: must lie in 1..{K - 1} (both clusters non-empty)")
    arg_combinations.check_figure_combinations(args, batched_training.BATCHED_NETWORKS)
    return K


def check_launch_args(args):
    """--seeds, --list_points, --launch and its settings: one line naming the argument when bad."""
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
    modes = [name for name, on in (("--point", args.point is not None), ("--assemble", args.assemble),
                                   ("--launch", args.launch is not None),
                                   ("--list_points", getattr(args, "list_points", False))) if on]
    if len(modes) > 1:
        raise UserError(f"{modes[0]} with {modes[1]}: give one of them")
    if args.wait and args.launch is None:
        raise UserError("--wait: waits for the jobs of --launch local|slurm; give --launch too")
    if getattr(args, "partial", False) and not (args.assemble or args.wait):
        raise UserError("--partial: writes a figure with runs missing; give it with --assemble or --launch ... --wait")
    utils.check_positive_ints("--slurm_time", [args.slurm_time])
    if args.slurm_array_parallelism is not None:
        utils.check_positive_ints("--slurm_array_parallelism", [args.slurm_array_parallelism])
    if args.slurm_gpus_per_task is not None and args.slurm_gpus_per_task < 0:
        raise UserError(f"--slurm_gpus_per_task {args.slurm_gpus_per_task}: must be >= 0")
    check_slurm_resources(args)
    bad = [kv for kv in args.slurm_extra if "=" not in kv or not kv.split("=", 1)[0]]
    if bad:
        raise UserError(f"--slurm_extra {bad[0]}: give KEY=VALUE pairs, e.g. account=abc mem=32G")


def check_slurm_resources(args):
    """--slurm_cpus_per_task, --slurm_mem, --slurm_signal_delay, --slurm_max_requeues: one line when bad."""
    if args.slurm_cpus_per_task is not None:
        utils.check_positive_ints("--slurm_cpus_per_task", [args.slurm_cpus_per_task])
    if args.slurm_mem is not None and not re.fullmatch(r"[1-9][0-9]*[KMGT]?", args.slurm_mem):
        raise UserError(f"--slurm_mem {args.slurm_mem}: give a size in megabytes or with a unit K, M, G or T, e.g. 32G")
    limit_s = args.slurm_time * 60
    if args.slurm_signal_delay is not None and not 1 <= args.slurm_signal_delay < limit_s:
        raise UserError(f"--slurm_signal_delay {args.slurm_signal_delay}: must lie in 1..{limit_s - 1} seconds "
                        f"(below --slurm_time {args.slurm_time} min)")
    if args.slurm_max_requeues < 0:
        raise UserError(f"--slurm_max_requeues {args.slurm_max_requeues}: must be >= 0")


def figure_tag(args):
    """The dataset-and-network part of a figure's file stem ('ufm' for the UFM, which uses no images)."""
    tag = "ufm" if args.network == "ufm" else f"{args.dataset_t}_{args.network}"
    loss = getattr(args, "loss", "cross_entropy")
    if loss != "cross_entropy":
        tag += f"_{loss}" + "".join(f"_{getattr(args, k):g}" for k in rebalance_program.LOSS_PARAMS[loss])
    return tag + ("_os" + "-".join(map(str, args.oversample)) if getattr(args, "oversample", None) else "")


def loss_threshold(args, sizes, clusters, lam_b):
    """The minority cluster's collapse threshold lambda* under --loss / --oversample (theory.md section 9)."""
    minority = min(clusters, key=lambda c: sizes[c[0]])
    loss = point_loss(args, sizes, clusters)
    if rebalance_program.is_plain(loss):
        return theory_formulas.collapse_threshold(sizes[minority[0]], sum(sizes))
    return rebalance_program.collapse_threshold(loss["sizes"], loss, minority, lam_b)


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
    synthetic = QUICK_SYNTHETIC if (network == "ufm" or (args.quick and dataset == "synthetic")) else None
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


def point_record_path(models_dir, point):
    return os.path.join(models_dir, "points", f"{point['figure']}_{utils.config_key(point)}.json")


def read_point_record(path, point):
    """The finished record of `point`, checked against the point it claims (params; for a figure
    point also sizes, clusters and a K x K Z); None when there is none, or (said on stderr) when it
    is broken: it then counts as missing and is recomputed, the trained run itself being reused."""
    if not os.path.exists(path):
        return None
    try:
        rec = utils.read_json(path)
        ok = isinstance(rec, dict)
        if ok:  # a figure record keeps its params; a study cell's record holds them among its fields
            claimed = rec.get("params") if "params" in rec else {k: rec.get(k) for k in point["params"]}
            ok = claimed == utils.to_jsonable(point["params"])
        if ok and "sizes" in point:
            K = len(point["sizes"])
            ok = (rec.get("sizes") == point["sizes"] and rec.get("clusters") == point["clusters"]
                  and np.shape(rec.get("Z")) == (K, K))
        if not ok:
            raise UserError(f"point record {path} does not match its point (params, sizes, clusters, Z)")
        found = read_back.point_record_problem(rec, point) if "sizes" in point else None
        if found:
            raise UserError(f"point record {path}: {found}")
    except UserError as e:
        print(f"warning: {e}; counted as missing (recomputed when trained)", file=sys.stderr)
        return None
    return rec


def finished_record(models_dir, point):
    """The point's checked record (read_point_record) when it is finished, else None: the one test
    of "finished" for training, listing, launching, batching and dry runs alike."""
    return read_point_record(point_record_path(models_dir, point), point)


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


def run_sweep(points, run_point, models_dir, only=None, assemble_only=False, say_missing=True):
    """Run (or reuse) every point, or only point `only`; return (records, missing indices).

    run_point(point) -> a JSON-able record, stored in point_record_path and reused by later calls.
    With assemble_only nothing is trained. Missing points are named on stderr (unless not say_missing:
    the caller names them). records[i] is None where missing."""
    if only is not None and not 0 <= only < len(points):
        raise UserError(f"--point {only}: allowed are 0..{len(points) - 1} ({len(points)} points)")
    if only is not None and assemble_only:
        raise UserError("--point with --assemble: --assemble trains nothing; give one of them")
    if only is not None:  # a job's run: warned (SIGUSR2) of a time limit, it checkpoints at its epoch's end, stops
        utils.stop_on_signals(launcher.RUN_STOP_SIGNALS)
    records, missing, reused = [], [], []
    for i, point in enumerate(points):
        path = point_record_path(models_dir, point)
        record = read_point_record(path, point)
        if record is not None:
            reused.append(i)
        elif not assemble_only and only in (None, i):
            utils.ensure_writable_dir(os.path.dirname(path), "--models_dir")
            with utils.run_lock(path + ".lock", f"point {i}"):
                utils.remove_leftovers(os.path.dirname(path), os.path.basename(path))
                record = read_point_record(path, point)  # finished by the process this one waited for
                if record is None:
                    print(f"[point {i + 1} of {len(points)} (--point {i})] {describe_point(point)}", file=sys.stderr)
                    record = run_point(point)
                    utils.atomic_write_json(path, record)
        if record is None:
            missing.append(i)
        records.append(record)
    if reused:
        print(f"reused finished points ({len(reused)} of {len(points)}, from {os.path.join(models_dir, 'points')}): "
              + "; ".join(f"{i + 1} ({describe_point(points[i])})" for i in reused), file=sys.stderr)
    if missing and say_missing:
        print(f"missing points ({len(missing)} of {len(points)}, not trained yet; run each with --point I): "
              + "; ".join(f"{i} ({describe_point(points[i])})" for i in missing), file=sys.stderr)
    return records, missing


def train_point(point, device, models_dir, data_dir):
    """Train (or reuse) one point with train_utils.train_run and summarise its Z: the sweep's run_point."""
    res = train_utils.train_run(point["train"], point_data(point, data_dir), device, models_dir)
    minority = min(point["clusters"], key=lambda c: point["sizes"][c[0]])
    record = dict(params=point["params"], sizes=point["sizes"], clusters=point["clusters"], Z=res["Z"], b=res["b"],
                  nc=res["final"], **figure_theory.z_summary(res["Z"], point["clusters"], minority),
                  run_dir=res["run_dir"], train=point["train"],
                  distances=seli.geometry_distances(res["Z"], point.get("loss", point)["sizes"]))
    record.update(per_class_test_accuracy(res["final"], point["sizes"], point["clusters"]))
    if point.get("history"):
        record["history"] = utils.read_csv(os.path.join(res["run_dir"], "summary.csv"))
    return record


def per_class_test_accuracy(final, sizes, clusters):
    """test_acc_per_class from an evaluated row's test_acc_c<k> columns, and its means over the
    majority (largest classes) and minority (smallest) clusters; {} without a test set (UFM)."""
    per_class = [final.get(f"test_acc_c{k}") for k in range(len(sizes))]
    if any(a is None for a in per_class):
        return {}
    by_size = sorted(clusters, key=lambda c: sizes[c[0]])
    return {"test_acc_per_class": per_class,
            "test_acc_majority": sum(per_class[k] for k in by_size[-1]) / len(by_size[-1]),
            "test_acc_minority": sum(per_class[k] for k in by_size[0]) / len(by_size[0])}


def seeded_points(points, seeds):
    """Every (point, seed) as its own run, point by point: run I is point I // len(seeds) with seed
    seeds[I % len(seeds)]. The seed keys the data subset and the training, as --seed does."""
    return [dict(pt, seed=int(s), train=dict(pt["train"], seed=int(s))) for pt in points for s in seeds]


def train_points(points, args, argv=None):
    """The scripts' one call: train the missing runs here (or only --point I, or none with --assemble),
    or list them (--list_points: prints JSON and ends the script), or launch them as jobs (--launch:
    ends the script after submitting, unless --wait); then reuse the finished ones.

    argv: the script's command line (None: sys.argv[1:]), which the jobs rerun with --point I.
    Returns (records, missing): records[i] is point i's record (None if no seed finished; with several
    seeds, the first finished seed's record plus 'seeds' and 'stats', merge_seeds), missing the
    (point index, seed) pairs not trained yet."""
    seeds = args.seeds or [args.seed]
    runs = seeded_points(points, seeds)
    arg_combinations.check_point_index(args.point, len(runs), "runs" if len(seeds) > 1 else "points")
    if args.list_points:
        rows = [json.dumps(dict(index=i, point=i // len(seeds), seed=run["seed"], params=run["params"],
                                finished=finished_record(args.models_dir, run) is not None,
                                **({"scaled": run["scaled"]} if run.get("scaled") else {})))
                for i, run in enumerate(runs)]
        print("[\n " + ",\n ".join(rows) + "\n]")  # one run per line
        raise SystemExit(0)
    if args.dry_run:
        dry_run_report(runs, args, figure_device(args))
        raise SystemExit(0)
    if args.launch:
        launch_points(runs, args, sys.argv[1:] if argv is None else list(argv))
        records, missing = run_sweep(runs, None, args.models_dir, assemble_only=True, say_missing=args.partial)
    else:
        device, said = figure_device(args), []

        def use_threads(work_size):  # CPU threads for this work, then the device line once, before training
            if device.type == "cpu":
                utils.set_threads(work_size, args.threads)
            if not said:
                print(utils.describe_device(device, args.amp), file=sys.stderr, flush=True)
                said.append(True)

        todo = [] if args.assemble else [r for i, r in enumerate(runs) if args.point in (None, i)
                                         and not os.path.exists(point_record_path(args.models_dir, r))]
        if todo:  # checked before training starts, not at its first write
            arg_combinations.check_output_dirs(args, todo)
            arg_combinations.warn_slow_figure_preview(todo, args, device, batched_training.SMALL_NETWORKS)
        if args.point is None and not args.assemble:
            train_batched_groups(runs, args, device, use_threads)

        def run_point(pt):
            use_threads(point_work_size(pt))
            return train_point(pt, device, args.models_dir, args.data_dir)
        records, missing = run_sweep(runs, run_point, args.models_dir, args.point, args.assemble, args.partial)
    check_complete(runs, missing, args, argv)
    args.figure_runs = dict(key=figure_store.runs_key(runs), total=len(runs))
    n = len(seeds)
    return merge_seeds(records, n), [(i // n, runs[i]["seed"]) for i in missing]


def check_complete(runs, missing, args, argv):
    """After training or assembling: a --point job ends here (its figure is --assemble's, once every run is
    finished); missing runs without --partial are an error naming them (exit 2)."""
    if args.point is not None:
        words = job_argv(sys.argv[1:] if argv is None else list(argv))
        words = [w for k, w in enumerate(words) if not (w == "--point" or w.startswith("--point=")
                                                         or (k and words[k - 1] == "--point"))]
        command = shlex.join(["python", f"{runs[0]['figure']}_main.py"] + words + ["--assemble"])
        print(f"run {args.point} finished; {len(missing)} of {len(runs)} runs still missing; no figure written "
              f"(once they are finished: {command})", file=sys.stderr)
        raise SystemExit(0)
    if missing and not args.partial:
        mode = "--assemble" if args.assemble else ("--launch" if args.launch else "the sweep")
        raise UserError(f"{mode}: {len(missing)} of {len(runs)} runs are not finished: "
                        + "; ".join(f"{i} ({describe_point(runs[i])})" for i in missing)
                        + "; train them (--point I), or add --partial for a figure without them")


def batched_networks(args):
    """The networks whose points --batched trains together: every one train_batched can (--batched),
    by default with --quick the small ones (one such model leaves a CPU core mostly waiting), else none."""
    if args.batched is None:
        return batched_training.SMALL_NETWORKS if args.quick else ()
    return batched_training.BATCHED_NETWORKS if args.batched else ()


def batch_groups(points, models_dir, networks):
    """The missing points of `networks` that batched_training.train_batched can train together: lists of
    two or more points with the same data and the same training configuration but for
    batched_training.BATCHED_OWN_KEYS."""
    groups = {}
    for point in points:
        if (point["train"]["network"] not in networks or not batched_training.batchable(point["train"])
                or finished_record(models_dir, point) is not None):
            continue
        shared = {k: v for k, v in point["train"].items() if k not in batched_training.BATCHED_OWN_KEYS}
        key = utils.config_key([point["dataset"], point["sizes"], point["seed"], point["allow_test_fill"],
                                point.get("synthetic"), shared])
        groups.setdefault(key, []).append(point)
    return [g for g in groups.values() if len(g) > 1]


def train_batched_groups(points, args, device, use_threads):
    """--batched: train each batch_groups group of batched_networks(args) as one vmapped model;
    run_sweep then finds their runs finished and only summarises them; use_threads(work_size) first."""
    for group in batch_groups(points, args.models_dir, batched_networks(args)):
        use_threads(point_work_size(group[0]) * len(group))
        print(f"[batched] training {len(group)} points together: "
              + "; ".join(describe_point(p) for p in group), file=sys.stderr)
        batched_training.train_batched([p["train"] for p in group], point_data(group[0], args.data_dir), device,
                                       args.models_dir)


# Per-seed fields of a point record whose numbers get mean, std and interval over seeds: every
# per-seed number of a point (its run_dir and history excepted: the history gets history_stats).
STAT_FIELDS = ("minority_spread", "minority_spread_rel", "z_norm", "cosines", "nc", "test_acc_per_class",
               "test_acc_majority", "test_acc_minority", "Z", "b")
POINT_FIELDS = ("params", "sizes", "clusters", "train")  # shared by the seeds of a point


def stats_over_seeds(dicts):
    """{name: seed_stats.mean_std_interval} of every number of the dicts (one per seed), named as
    utils.flatten names them, each interval clipped to its quantity's range (seed_stats.quantity_range);
    the epoch and lr of an evaluated row are left out (the same for every seed)."""
    flat = [utils.flatten(d) for d in dicts]
    names = [k for k in dict.fromkeys(k for f in flat for k in f) if k.split(".")[-1] not in ("epoch", "lr")]
    return {k: seed_stats.mean_std_interval([f.get(k) for f in flat], seed_stats.quantity_range(k)) for k in names}


def history_stats(histories):
    """Per epoch evaluated in every seed's history: {"epoch", "stats": stats_over_seeds of that row}."""
    rows = [{r["epoch"]: r for r in h} for h in histories]
    common = [e for e in rows[0] if all(e in r for r in rows[1:])]
    return [{"epoch": e, "stats": stats_over_seeds([r[e] for r in rows])} for e in common]


def merge_seeds(records, n_seeds):
    """One record per point from its n_seeds consecutive run records. A single seed: the record as
    it is. Several: the first finished seed's record, plus 'seeds' (every finished seed's own numbers),
    'stats' (stats_over_seeds of every number in STAT_FIELDS over the finished seeds, e.g.
    'cosines.within.0', 'nc.test_acc', 'Z.0.1'), 'Z_mean' (the mean Z drawn) and, with histories,
    'history_stats'."""
    if n_seeds == 1:
        return records
    merged = []
    for start in range(0, len(records), n_seeds):
        done = [r for r in records[start:start + n_seeds] if r is not None]
        if not done:
            merged.append(None)
            continue
        per_seed = [dict({k: v for k, v in r.items() if k not in POINT_FIELDS}, seed=r["train"]["seed"]) for r in done]
        stats = stats_over_seeds([{k: r[k] for k in STAT_FIELDS if k in r} for r in done])
        rec = dict(done[0], seeds=per_seed, stats=stats,
                   Z_mean=np.mean([np.asarray(r["Z"], dtype=float) for r in done], axis=0).tolist())
        if all(r.get("history") for r in done):
            rec["history_stats"] = history_stats([r["history"] for r in done])
        merged.append(rec)
    return merged


# ======================================================================================
# Launching the missing runs as a job array (submitit)
# ======================================================================================


def job_argv(argv):
    """The script's command line without the launcher's own options (--launch, --wait, --slurm_*)."""
    launcher = argparse.ArgumentParser(add_help=False)
    for flags, kw in LAUNCH_ARGS:
        launcher.add_argument(*flags, **kw)
    return launcher.parse_known_args(argv)[1]


def slurm_parameters(args):
    """submitit SlurmExecutor parameters of the launcher's options (--slurm_extra as sbatch options): the
    warning signal (USR2) comes launcher.signal_delay_s before the time limit."""
    options = dict(time=args.slurm_time, additional_parameters=dict(kv.split("=", 1) for kv in args.slurm_extra),
                   signal_delay_s=launcher.signal_delay_s(args.slurm_time, args.slurm_signal_delay))
    for key in ("partition", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism"):
        if getattr(args, "slurm_" + key) is not None:
            options[key] = getattr(args, "slurm_" + key)
    return options


def visible_gpus():
    """Indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES when it lists indices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and all(p.strip().isdigit() for p in listed.split(",") if p.strip()):
        return [int(p) for p in listed.split(",") if p.strip()]
    import torch
    return list(range(torch.cuda.device_count()))


def launch_points(runs, args, argv, script=None):
    """Submit every unfinished run as a job (one job array) that runs this script's command line with
    --point I, print the job ids and the command that assembles the figure; with --wait, wait for
    them, otherwise end the script. A job warned of its time limit or a preemption requeues itself
    (launcher.PointJob). With --wait, a job that failed for good or a run left unfinished is named with
    its log and, unless --partial, the script ends with exit status 1, writing no figure (launching again
    resumes the run from its checkpoint). The launcher's logs go to <models_dir>/launcher/.
    script: the script the jobs run (default <figure>_main.py beside this file)."""
    import cloudpickle  # lazily, as submitit (which brings it): only launching needs them
    import submitit
    utils.ensure_writable_dir(args.plot_dir, "--plot_dir")
    folder = os.path.join(utils.ensure_writable_dir(args.models_dir, "--models_dir"), "launcher", "%j")
    script = script or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{runs[0]['figure']}_main.py")
    base = [sys.executable, script] + job_argv(argv)
    todo = [i for i, run in enumerate(runs) if finished_record(args.models_dir, run) is None]
    assemble = shlex.join(["python", os.path.relpath(script)] + job_argv(argv) + ["--assemble"])
    if not todo:
        print(f"all {len(runs)} runs are finished; nothing to launch")
        return
    cloudpickle.register_pickle_by_value(launcher)  # the jobs need not find launcher.py on their path
    grace = launcher.stop_grace_s(launcher.signal_delay_s(args.slurm_time, args.slurm_signal_delay))
    commands = [launcher.PointJob(base + ["--point", str(i)], os.getcwd(), args.slurm_max_requeues, grace)
                for i in todo]
    if args.launch == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.slurm_max_requeues)
        except RuntimeError as e:  # no srun here
            raise UserError(f"--launch slurm: {e}; use --launch local on a machine without SLURM") from None
        executor.update_parameters(**slurm_parameters(args))
        jobs = executor.submit_array(commands)
    else:  # one job per run, all at once, each on its own GPU (round robin) when several are visible
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.slurm_max_requeues)
        gpus = visible_gpus()
        jobs = []
        for k, command in enumerate(commands):
            executor.update_parameters(timeout_min=args.slurm_time, gpus_per_node=1 if gpus else 0,
                                       visible_gpus=[gpus[k % len(gpus)]] if gpus else [])
            jobs.append(executor.submit(command))
    for i, job in zip(todo, jobs):
        print(f"run {i} ({describe_point(runs[i])}): job {job.job_id}, log {job.paths.stderr}")
    print(f"submitted {len(jobs)} {args.launch} jobs; when they are done, assemble the figure with:\n  {assemble}")
    if not args.wait:
        raise SystemExit(0)
    failed = launcher.wait_for_jobs(jobs, args.launch == "slurm")
    for k, (i, job) in enumerate(zip(todo, jobs)):
        if k not in failed and finished_record(args.models_dir, runs[i]) is None:
            failed[k] = "it ended without finishing its run"
        if k in failed:
            print(f"run {i} ({describe_point(runs[i])}): job {job.job_id} failed for good: {failed[k]}; "
                  f"log {job.paths.stderr}", file=sys.stderr)
    if failed and not getattr(args, "partial", False):  # --partial: the figure of the finished runs
        launcher.fail(f"{len(failed)} of {len(jobs)} jobs failed (named above), so no figure is written; "
                      f"launching again resumes their runs from their checkpoints")


# ======================================================================================
# Dry runs: which points are finished, and how long the rest would take
# ======================================================================================


def dry_run_report(points, args, device):
    """--dry_run: every point (1-based, with its --point index), finished or to train, and an
    estimate of the command's time: run_estimate.estimate (the runs trained as the command trains
    them, start-up and analysis)."""
    todo, finished = [], []
    for i, point in enumerate(points):
        record = finished_record(args.models_dir, point)
        done = record is not None
        if done:
            finished.append(record)
        elif args.point in (None, i):
            todo.append(point)
        print(f"point {i + 1} of {len(points)} (--point {i}): {describe_point(point)}, "
              f"{point['train']['epochs']} epochs, N = {sum(point['sizes'])}: {'finished' if done else 'to train'}")
    if not todo:
        print("nothing to train")
        return

    def use_threads(group):  # the threads the run sets for these points trained together
        if device.type == "cpu":
            utils.set_threads(point_work_size(group[0]) * len(group), args.threads)

    groups = batch_groups(todo, args.models_dir, batched_networks(args)) if args.point is None else []
    total, how = run_estimate.estimate(todo, groups, finished, lambda p: point_data(p, args.data_dir), device,
                                       use_threads, len({utils.config_key(p["params"]) for p in points}))
    print(f"estimate for the {len(todo)} points to train: {total / 60:.1f} min ({total:.0f} s) on {device} ({how})")


# ======================================================================================
# Assembling and saving a figure
# ======================================================================================


def assemble_figure(figure, settings, points, records, missing, lam_b):
    """The figure's JSON: settings, each finished point with its theory prediction, the missing
    (point, seed) runs."""
    out = []
    for i, rec in enumerate(records):
        if rec is not None:
            theory = figure_theory.ufm_theory(rec["sizes"], rec["clusters"], rec["params"]["lam"], lam_b,
                                          points[i].get("loss"))
            out.append(dict(rec, index=i, **({"scaled": points[i]["scaled"]} if points[i].get("scaled") else {}),
                            theory=theory))
    note = scaled_note(points)
    if note:  # what --quick scaled is named on the figure and in its settings
        settings = dict(settings, scaled=note, title=f"{settings['title']} ({note})")
    return {"figure": figure, "argv": sys.argv[1:], "settings": settings, "points": out,
            "missing": [dict(index=i, seed=seed, params=points[i]["params"]) for i, seed in missing]}


def save_figure_result(result, args, stem):
    """Write the figure's JSON and PNG under --plot_dir (the --quick ones with a _quick suffix) as
    figure_store.write_figure does (never over a different or fuller figure) and print their paths."""
    stem += "_quick" if args.quick else ""
    runs = args.figure_runs
    result = dict(result, key=runs["key"], runs=dict(finished=runs["total"] - len(result["missing"]),
                                                     total=runs["total"]))
    for path in figure_store.write_figure(result, args.plot_dir, stem):
        print(path)
