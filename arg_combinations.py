"""Argument combinations checked before any work: an option typed where it does not apply, a value
repeated in a list, a contradictory pair (refused in one line naming both), a suspect one (warned
about in one line). Options are keyed by their dest names; `args.given` (utils.parse_with_presets)
holds the ones the user typed."""
import math
import os
import sys

import datasets
import networks
import recipes
import result_files
import utils
from utils import UserError

# figure networks the UFM options do not apply to, and why (theory.md section 2: the UFM's free features)
UFM_NOT_APPLYING = {"width": "the UFM has no network width (its features are free parameters)",
                    "lr": "the UFM trains by full-batch L-BFGS (step 1)",
                    "weight_decay": "the UFM trains by full-batch L-BFGS without weight decay",
                    "amp": "the UFM trains in float64",
                    "allow_test_fill": "the UFM uses no images (only the class sizes)",
                    "warm_frac": "the UFM trains without a warm phase"}
SLURM_ONLY = ("slurm_partition", "slurm_gpus_per_task", "slurm_array_parallelism", "slurm_extra")
# a --quick preview on the CPU longer than this per point is warned about, with its estimate
SLOW_PREVIEW_S = 60.0


def given(args):
    return getattr(args, "given", frozenset())


def check_threads(args):
    """--threads: an integer >= 1 when given (0 would fail only once training starts)."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be an integer >= 1 (or left out: chosen per point "
                        "from its size and the free cores)")


def check_point_index(point, n, what="points"):
    """--point I lies in 0..n-1 (also for --dry_run, which otherwise lists everything)."""
    if point is not None and not 0 <= point < n:
        raise UserError(f"--point {point}: allowed are 0..{n - 1} ({n} {what})")


def check_figure_combinations(args, batchable):
    """The figure scripts' shared options: threads, --seeds with --seed, --batched with a network it
    cannot batch (`batchable`), options the UFM does not use, SLURM options without --launch slurm."""
    check_threads(args)
    typed = given(args)
    if args.seeds is not None and "seed" in typed:
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))} with --seed {args.seed}: --seeds replaces --seed; "
                        "list every seed in --seeds")
    if args.batched and args.network not in batchable:
        ufm = " (the UFM is trained point by point, by full-batch L-BFGS)" if args.network == "ufm" else ""
        raise UserError(f"--batched with --network {args.network}: trains only {', '.join(batchable)} together{ufm}; "
                        "leave out --batched")
    if args.network == "ufm":
        for dest, why in UFM_NOT_APPLYING.items():
            if dest in typed:
                raise UserError(f"--{dest} with --network UFM: does not apply, {why}; leave out --{dest}")
    check_launch_combinations(args)


def check_launch_combinations(args):
    """SLURM options without --launch slurm (--slurm_time: without --launch), and --dry_run with a
    mode it would ignore or run despite (--list_points, --assemble, --launch)."""
    typed = given(args)
    for dest in SLURM_ONLY:
        if dest in typed and args.launch != "slurm":
            raise UserError(f"--{dest} without --launch slurm: applies to SLURM jobs only; add --launch slurm or "
                            f"leave out --{dest}")
    if "slurm_time" in typed and args.launch is None:
        raise UserError("--slurm_time without --launch: the time limit of launched jobs (slurm or local); add "
                        "--launch or leave out --slurm_time")
    other = [name for name, on in (("--list_points", getattr(args, "list_points", False)),
                                   ("--assemble", args.assemble), ("--launch", args.launch is not None)) if on]
    if args.dry_run and other:
        raise UserError(f"--dry_run with {other[0]}: --dry_run only lists and estimates; give one of them")


def check_output_dirs(args, points=()):
    """--models_dir, and --data_dir where a point's subset is still to be cached, are writable: checked
    before training starts rather than at their first write (a read-only --data_dir of prepared subsets is fine)."""
    result_files.ensure_writable_dir(args.models_dir, "--models_dir")
    for p in points:
        path, _ = datasets.subset_cache_path(p["dataset"], p["sizes"], p["seed"], args.data_dir, p["allow_test_fill"])
        if p["dataset"] != "synthetic" and not os.path.exists(path):
            result_files.ensure_writable_dir(os.path.dirname(path), "--data_dir")
            return


def seconds_per_step(network, num_classes, in_channels, image_size, batch, width=None, depth=None, repeat=2):
    """Best wall time of one SGD step (forward, backward, update) of `network` on random CPU input,
    after one warm-up step: the measurement behind a slow preview's warning."""
    import torch
    model = networks.build_model(network, num_classes, in_channels, width=width, image_size=image_size, depth=depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, in_channels, image_size, image_size), torch.randint(num_classes, (batch,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[0], y).backward()
        opt.step()
    step()
    return utils.timed(step, repeat)[0]


def warn_slow_preview(network, step_s, steps, n_points, option="--network"):
    """One warning line when a --quick preview on the CPU would take minutes per point (`steps`:
    the training steps of all n_points)."""
    per_point = step_s * steps / n_points
    if per_point > SLOW_PREVIEW_S:
        each = f" per point, {n_points * per_point / 60:.0f} min for the {n_points} to train" if n_points > 1 else ""
        print(f"warning: {option} {network} with --quick on the CPU: about {per_point / 60:.1f} min{each} "
              f"(from {step_s:.2f} s per training step, {steps // n_points} steps{' per point' * bool(each)}); "
              "a GPU (--device cuda) or the "
              "preview's own network takes seconds", file=sys.stderr, flush=True)
    return per_point


def steps_of(n_samples, batch_size, epochs):
    return math.ceil(n_samples / min(batch_size, n_samples)) * epochs


def warn_slow_run_preview(cfg, data):
    """mixup_main --quick on the CPU with a network other than the preview's: one warning line when
    the run `cfg` on `data` takes minutes (measured over two steps)."""
    batch = min(cfg["batch_size"], len(data.y_train))
    step = seconds_per_step(cfg["network"], data.num_classes, data.in_channels, data.x_train.shape[-1], batch,
                            cfg["width"], cfg.get("depth"))
    return warn_slow_preview(cfg["network"], step, steps_of(len(data.y_train), batch, cfg["epochs"]), 1, "--model")


# (channels, side) of the datasets' images as the networks see them
IMAGE_SHAPES = {"digits": (1, 8), "mnist": (1, 32), "fashion_mnist": (1, 32), "cifar10": (3, 32), "cifar100": (3, 32)}


def warn_slow_figure_preview(points, args, device, small):
    """--quick on the CPU with a network other than the preview's `small` ones (or the UFM): one
    warning line when the figure points to train take minutes each (measured over two steps)."""
    if not (args.quick and device.type == "cpu" and points) or args.network in tuple(small) + ("ufm",):
        return None
    p, train = points[0], points[0]["train"]
    synthetic = dict(datasets.SYNTHETIC_DEFAULTS, **(p.get("synthetic") or {}))
    channels, side = (synthetic["channels"], synthetic["image_size"]) if p["dataset"] == "synthetic" \
        else IMAGE_SHAPES[p["dataset"]]
    step = seconds_per_step(train["network"], len(p["sizes"]), channels, side,
                            min(train["batch_size"], sum(p["sizes"])), train.get("width"))
    steps = sum(steps_of(sum(q["sizes"]), q["train"]["batch_size"], q["train"]["epochs"]) for q in points)
    return warn_slow_preview(args.network, step, steps, len(points))


MIXUP_STUDY_ONLY = ("datasets", "models", "losses", "panel_losses", "seeds", "no_baselines", "partial")
MIXUP_STUDY_REPLACES = {"dataset": "datasets", "model": "models", "loss": "losses", "seed": "seeds",
                        "no_mixup": "no_baselines"}
MIXUP_LOSS_OPTIONS = {"mse_scale": "mse", "smoothing": "label_smoothing", "focal_gamma": "focal"}


def check_momentum(args, models):
    """--momentum applies to sgd: refused where every model trains with an Adam-type optimizer (--optimizer, or
    without it the recipe: --recipe or the network's), one line saying so where some do."""
    chosen = {m: (args.optimizer or recipes.recipe_for(m, cpu=args.quick, name=args.recipe).optimizer).lower()
              for m in models}
    others = sorted(m for m, opt in chosen.items() if opt != "sgd")
    how = (f"--optimizer {args.optimizer}" if args.optimizer is not None else
           "the recipe of " + ", ".join(f"{m} ({chosen[m]})" for m in others))
    if len(others) == len(models):
        raise UserError(f"--momentum with {how}: applies to sgd only (Adam keeps its own moments); leave out "
                        "--momentum, or give --optimizer sgd")
    if others:
        print(f"note: --momentum applies to the sgd cells only, not to {how}", file=sys.stderr)


def check_mixup_combinations(args):
    """mixup_main: the study's options without --study and the single run's with it, the synthetic
    data's options on another dataset, a loss's options for other losses, mixup's without mixup,
    momentum for Adam, depth for networks without one, repeated study lists."""
    check_threads(args)
    typed = given(args)
    if not args.study:
        for dest in MIXUP_STUDY_ONLY:
            single = next((f" (a single run takes --{k})" for k, v in MIXUP_STUDY_REPLACES.items() if v == dest), "")
            if dest in typed:
                raise UserError(f"--{dest} without --study: applies to the study grid only{single}; add --study")
    check_launch_combinations(args)
    for dest, instead in MIXUP_STUDY_REPLACES.items():
        if args.study and dest in typed:
            raise UserError(f"--{dest} with --study: the study's cells take --{instead}; give that instead")
    data, loss_list = (args.datasets, args.losses + args.panel_losses) if args.study else ([args.dataset], [args.loss])
    for dest in ("image_size", "num_classes"):
        if dest in typed and "synthetic" not in data:
            raise UserError(f"--{dest} with --dataset{'s' * args.study} {' '.join(data)}: applies to synthetic data "
                            f"only (the others have their own image size and classes); leave out --{dest}")
    for dest, loss in MIXUP_LOSS_OPTIONS.items():
        if dest in typed and loss not in loss_list:
            raise UserError(f"--{dest} with --loss{'es' * args.study} {' '.join(loss_list)}: applies to --loss "
                            f"{loss} only; leave out --{dest}")
    if args.no_mixup and not args.study:
        for dest in ("alpha", "mix_per"):
            if dest in typed:
                raise UserError(f"--{dest} with --no_mixup: applies to mixup only; leave out one of them")
    models = [m.lower() for m in (args.models if args.study else [args.model])]
    if "momentum" in typed:
        check_momentum(args, models)
    if "depth" in typed and not set(models) & set(networks.MIXUP_NETWORKS):
        raise UserError(f"--depth with --model{'s' * args.study} {' '.join(models)}: applies to "
                        f"{', '.join(networks.MIXUP_NETWORKS)} only; leave out --depth")
    for dest in ("datasets", "models", "losses", "panel_losses", "snapshots", "lr_milestones"):
        values = getattr(args, dest)
        if values and len(set(values)) < len(values):
            twice = next(v for v in values if values.count(v) > 1)
            raise UserError(f"--{dest} {' '.join(map(str, values))}: {twice} is given twice; give each value once")
