"""What a sweep would train: its points grouped for --batched, and the --dry_run report with its time estimate."""
import batched_training
import cpu_threads
import figure_points
import point_records
import run_estimate
import utils


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
                or point_records.finished_record(models_dir, point) is not None):
            continue
        shared = {k: v for k, v in point["train"].items() if k not in batched_training.BATCHED_OWN_KEYS}
        key = utils.config_key([point["dataset"], point["sizes"], point["seed"], point["allow_test_fill"],
                                point.get("synthetic"), shared])
        groups.setdefault(key, []).append(point)
    return [g for g in groups.values() if len(g) > 1]


def dry_run_report(points, args, device):
    """--dry_run: every point (1-based, with its --point index), finished or to train, and an
    estimate of the command's time: run_estimate.estimate (the runs trained as the command trains
    them, start-up and analysis)."""
    todo, finished = [], []
    for i, point in enumerate(points):
        record = point_records.finished_record(args.models_dir, point)
        done = record is not None
        if done:
            finished.append(record)
        elif args.point in (None, i):
            todo.append(point)
        print(f"point {i + 1} of {len(points)} (--point {i}): {figure_points.describe_point(point)}, "
              f"{point['train']['epochs']} epochs, N = {sum(point['sizes'])}: {'finished' if done else 'to train'}")
    if not todo:
        print("nothing to train")
        return

    def use_threads(group):  # the threads the run sets for these points trained together
        if device.type == "cpu":
            cpu_threads.set_threads(figure_points.point_work_size(group[0]) * len(group), args.threads)

    groups = batch_groups(todo, args.models_dir, batched_networks(args)) if args.point is None else []
    total, how = run_estimate.estimate(todo, groups, finished, lambda p: figure_points.point_data(p, args.data_dir),
                                       device, use_threads, len({utils.config_key(p["params"]) for p in points}))
    print(f"estimate for the {len(todo)} points to train: {total / 60:.1f} min ({total:.0f} s) on {device} ({how})")
