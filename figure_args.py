"""The command-line arguments every imbalanced-NC figure shares, the launcher's, and their checks."""
import argparse
import re

import arg_combinations
import batched_training
import data_parallel
import datasets
import devices
import launcher
import networks
import rebalance_program
import result_files
import utils
from utils import UserError

# --quick previews use small single-channel synthetic images (any class size, nothing to download).
QUICK_SYNTHETIC = {"image_size": 8, "channels": 1}


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
    check_data_parallel_args(args)
    return K


def check_data_parallel_args(args):
    """Under torchrun (a figure's network runs one by one, data-parallel): refuse what cannot be, naming it."""
    if networks.is_ufm(args.network):
        data_parallel.refuse("--network UFM", "its full-batch L-BFGS trains on one process (in seconds)")
    if args.batched or (args.batched is None and getattr(args, "quick", False)):
        data_parallel.refuse("--batched" + (" (--quick's default)" if args.batched is None else ""),
                             "a vmapped sweep is not data-parallel; add --no_batched to train the points one by one")
    for flag, on in (("--launch", args.launch is not None), ("--dry_run", getattr(args, "dry_run", False))):
        if on:
            data_parallel.refuse(flag, "it launches or probes runs itself")


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


def figure_device(args):
    """The torch device of a figure script (its CPU threads are set per point: point_work_size); under torchrun
    the process group is joined here and the device is this rank's (data_parallel.init_from_env)."""
    device = devices.get_device(args.device)
    result_files.ensure_writable_dir(args.plot_dir, "--plot_dir")
    return data_parallel.init_from_env(device)
