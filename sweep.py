"""Training a figure's sweep: its points (under --seeds) trained one by one, --batched or launched as
jobs, or reused when finished (`--point I`, `--assemble`, `--list_points`, `--dry_run`).

A figure is a list of points (figure_points.py); each point is a JSON-able dict holding everything that
changes its result (dataset, class sizes, clusters, seed, the train_run configuration, and `params`, the
values the figure plots, with `lam`, the lambda of the convex program, stored once). A finished
point is recorded in <models_dir>/points/<figure>_<config_key(point)>.json (point_records.py) and reused;
train_run reuses the trained network itself the same way."""
import json
import os
import shlex
import sys

import arg_combinations
import batched_training
import cpu_threads
import data_parallel
import devices
import figure_args
import figure_points
import figure_store
import figure_theory
import job_launch
import launcher
import point_records
import result_files
import run_locks
import seli
import stop_signals
import sweep_plan
import train_utils
from utils import UserError


def run_sweep(points, run_point, models_dir, only=None, assemble_only=False, say_missing=True):
    """Run (or reuse) every point, or only point `only`; return (records, missing indices).

    run_point(point) -> a JSON-able record, stored in point_record_path and reused by later calls.
    With assemble_only nothing is trained. Missing points are named on stderr (unless not say_missing:
    the caller names them). records[i] is None where missing. Under torchrun every rank trains each point
    (data-parallel) and rank 0 alone reads and writes the records and holds their locks."""
    if only is not None and not 0 <= only < len(points):
        raise UserError(f"--point {only}: allowed are 0..{len(points) - 1} ({len(points)} points)")
    if only is not None and assemble_only:
        raise UserError("--point with --assemble: --assemble trains nothing; give one of them")
    if only is not None:  # a job's run: warned (SIGUSR2) of a time limit, it checkpoints at its epoch's end, stops
        stop_signals.stop_on_signals(launcher.RUN_STOP_SIGNALS)
    records, missing, reused = [], [], []
    for i, point in enumerate(points):
        path = point_records.point_record_path(models_dir, point)
        record = data_parallel.from_rank0(lambda: point_records.read_point_record(path, point))
        if record is not None:
            reused.append(i)
        elif not assemble_only and only in (None, i):
            data_parallel.from_rank0(lambda: result_files.ensure_writable_dir(os.path.dirname(path), "--models_dir"))
            with data_parallel.rank0_holds(lambda: run_locks.run_lock(path + ".lock", f"point {i}")):
                data_parallel.rank0_only(result_files.remove_leftovers, os.path.dirname(path), os.path.basename(path))
                # finished by the process this one waited for
                record = data_parallel.from_rank0(lambda: point_records.read_point_record(path, point))
                if record is None:
                    data_parallel.say(f"[point {i + 1} of {len(points)} (--point {i})] "
                                      f"{figure_points.describe_point(point)}")
                    record = run_point(point)
                    data_parallel.rank0_only(result_files.atomic_write_json, path, record)
        if record is None:
            missing.append(i)
        records.append(record)
    if reused:
        data_parallel.say(f"reused finished points ({len(reused)} of {len(points)}, from "
                          f"{os.path.join(models_dir, 'points')}): "
                          + "; ".join(f"{i + 1} ({figure_points.describe_point(points[i])})" for i in reused))
    if missing and say_missing:
        print(f"missing points ({len(missing)} of {len(points)}, not trained yet; run each with --point I): "
              + "; ".join(f"{i} ({figure_points.describe_point(points[i])})" for i in missing), file=sys.stderr)
    return records, missing


def train_point(point, device, models_dir, data_dir):
    """Train (or reuse) one point with train_utils.train_run and summarise its Z: the sweep's run_point."""
    res = train_utils.train_run(point["train"], figure_points.point_data(point, data_dir), device, models_dir)
    minority = min(point["clusters"], key=lambda c: point["sizes"][c[0]])
    record = dict(params=point["params"], sizes=point["sizes"], clusters=point["clusters"], Z=res["Z"], b=res["b"],
                  nc=res["final"], **figure_theory.z_summary(res["Z"], point["clusters"], minority),
                  run_dir=res["run_dir"], train=point["train"],
                  distances=seli.geometry_distances(res["Z"], point.get("loss", point)["sizes"]))
    record.update(per_class_test_accuracy(res["final"], point["sizes"], point["clusters"]))
    rows = result_files.read_csv(os.path.join(res["run_dir"], "summary.csv"))
    if point.get("history"):
        record["history"] = rows
    distance = [dict(epoch=r["epoch"], z_theory_distance=r["z_theory_distance"]) for r in rows
                if r.get("z_theory_distance") is not None]
    if distance:   # every evaluated epoch's distance to the convex program's Z*, for the figures' panel
        record["distance_history"] = distance
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


def train_points(points, args, argv=None):
    """The scripts' one call: train the missing runs here (or only --point I, or none with --assemble),
    or list them (--list_points: prints JSON and ends the script), or launch them as jobs (--launch:
    ends the script after submitting, unless --wait); then reuse the finished ones.

    argv: the script's command line (None: sys.argv[1:]), which the jobs rerun with --point I.
    Returns (records, missing): records[i] is point i's record (None if no seed finished; with several
    seeds, the first finished seed's record plus 'seeds' and 'stats', merge_seeds), missing the
    (point index, seed) pairs not trained yet."""
    seeds = args.seeds or [args.seed]
    runs = figure_points.seeded_points(points, seeds)
    arg_combinations.check_point_index(args.point, len(runs), "runs" if len(seeds) > 1 else "points")
    if args.list_points:
        rows = [json.dumps(dict(index=i, point=i // len(seeds), seed=run["seed"], params=run["params"],
                                finished=point_records.finished_record(args.models_dir, run) is not None,
                                **({"scaled": run["scaled"]} if run.get("scaled") else {})))
                for i, run in enumerate(runs)]
        print("[\n " + ",\n ".join(rows) + "\n]")  # one run per line
        raise SystemExit(0)
    if args.dry_run:
        sweep_plan.dry_run_report(runs, args, figure_args.figure_device(args))
        raise SystemExit(0)
    if args.launch:
        job_launch.launch_points(runs, args, sys.argv[1:] if argv is None else list(argv))
        records, missing = run_sweep(runs, None, args.models_dir, assemble_only=True, say_missing=args.partial)
    else:
        device, said = figure_args.figure_device(args), []

        def use_threads(work_size):  # CPU threads for this work, then the device line once, before training
            if device.type == "cpu":
                cpu_threads.set_threads(work_size, args.threads)
            if not said:
                data_parallel.say(devices.describe_device(device, args.amp))
                said.append(True)

        todo = [] if args.assemble else [r for i, r in enumerate(runs) if args.point in (None, i)
                                         and not os.path.exists(point_records.point_record_path(args.models_dir, r))]
        if todo:  # checked before training starts, not at its first write
            arg_combinations.check_output_dirs(args, todo)
            arg_combinations.warn_slow_figure_preview(todo, args, device, batched_training.SMALL_NETWORKS)
        if args.point is None and not args.assemble:
            train_batched_groups(runs, args, device, use_threads)

        def run_point(pt):
            use_threads(figure_points.point_work_size(pt))
            return train_point(pt, device, args.models_dir, args.data_dir)
        records, missing = run_sweep(runs, run_point, args.models_dir, args.point, args.assemble, args.partial)
    if not data_parallel.is_rank0():   # under torchrun the points are trained; rank 0 alone assembles the figure
        raise SystemExit(0)
    check_complete(runs, missing, args, argv)
    args.figure_runs = dict(key=figure_store.runs_key(runs), total=len(runs))
    n = len(seeds)
    return point_records.merge_seeds(records, n), [(i // n, runs[i]["seed"]) for i in missing]


def check_complete(runs, missing, args, argv):
    """After training or assembling: a --point job ends here (its figure is --assemble's, once every run is
    finished); missing runs without --partial are an error naming them (exit 2)."""
    if args.point is not None:
        words = job_launch.job_argv(sys.argv[1:] if argv is None else list(argv))
        words = [w for k, w in enumerate(words) if not (w == "--point" or w.startswith("--point=")
                                                         or (k and words[k - 1] == "--point"))]
        command = shlex.join(["python", f"{runs[0]['figure']}_main.py"] + words + ["--assemble"])
        print(f"run {args.point} finished; {len(missing)} of {len(runs)} runs still missing; no figure written "
              f"(once they are finished: {command})", file=sys.stderr)
        raise SystemExit(0)
    refuse_missing(args, [f"{i} ({figure_points.describe_point(runs[i])})" for i in missing], len(runs))


def refuse_missing(args, labels, total, what="runs"):
    """Runs not finished (`labels`, each naming one) without --partial: one error line naming them, since a
    figure without them would read as the whole sweep."""
    if labels and not args.partial:
        mode = "--assemble" if args.assemble else ("--launch" if args.launch else "the sweep")
        raise UserError(f"{mode}: {len(labels)} of {total} {what} are not finished: " + "; ".join(labels)
                        + "; train them (--point I), or add --partial for a figure without them")


def train_batched_groups(points, args, device, use_threads):
    """--batched: train each batch_groups group of batched_networks(args) as one vmapped model;
    run_sweep then finds their runs finished and only summarises them; use_threads(work_size) first."""
    for group in sweep_plan.batch_groups(points, args.models_dir, sweep_plan.batched_networks(args)):
        use_threads(figure_points.point_work_size(group[0]) * len(group))
        print(f"[batched] training {len(group)} points together: "
              + "; ".join(figure_points.describe_point(p) for p in group), file=sys.stderr)
        batched_training.train_batched([p["train"] for p in group], figure_points.point_data(group[0], args.data_dir),
                                       device, args.models_dir)


