"""The mixup study grid (--study): its cells trained or reused, summarised over seeds into a table, dynamics and
projections."""
import argparse
import itertools
import os
import sys

import numpy as np

import arg_combinations
import datasets
import figure_args
import figure_store
import fit_checks
import job_launch
import losses
import mixup_geometry
import mixup_plots
import mixup_run
import point_records
import read_back
import residual_split
import result_files
import seed_stats
import snapshot_files
import sweep
import train_utils
import utils
from utils import UserError

# The study's table: the per-seed numbers of a cell, and what keys a row.
STUDY_KEYS = ("dataset", "model", "loss", "mixup")


STUDY_METRICS = ("test_acc", "test_ece", "same_angle_deg_mean", "diff_logit_gap_vs_log_odds_spearman",
                 "diff_convex_residual_mean", "diff_convex_residual_binned", "same_spread")


# the residual's parts in the classifier's row space and orthogonal to it (residual_split), after the above
SPLIT_METRICS = ("diff_residual_row_space", "diff_residual_orthogonal")


# the metrics the snapshots' geometry JSONs hold (mixup_geometry.mixup_geometry_summary)
GEOMETRY_METRICS = STUDY_METRICS[2:]
STUDY_METRICS += SPLIT_METRICS


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
        K, per_class = mixup_run.check_args(cell)
        # NC metrics at epochs 1-5, every 10th, the last and the snapshots, not at every epoch as a single run
        train = dict(mixup_run.train_config(cell), eval_epochs=sorted(set(train_utils.default_eval_epochs(cell.epochs))
                                                                      | set(cell.snapshots)))
        points.append(dict(figure="mixup_study", params=dict(dataset=cell.dataset, model=cell.model.lower(),
                                                             loss=loss, mixup=mix, seed=seed),
                           per_class=per_class, K=K, train=train))
    return points


def study_cell(point, device, args):
    """Train (or reuse) one cell; its record: the per-seed numbers of the table (last row of
    summary.csv, last snapshot's geometry) and the curves over epochs."""
    p, recipe = point["params"], mixup_run.recipe_label(point["train"]["recipe"])
    try:
        inputs = mixup_run.run_inputs(point["train"], p["dataset"], point["per_class"], point["K"], device, args)
        run_dir = mixup_run.train(point["train"], inputs, device, args.models_dir)["run_dir"]
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
    """The table over seeds (seed_stats.table_over_seeds) of the cells that learned; per row also
    the recipe, n_diverged, n_failed (fit_checks.failure), n_averaged and n_terminal
    (fit_checks.terminal_phase). A row of cells that all failed keeps NaN means."""
    cells = [r for r in records if r is not None]
    table = seed_stats.table_over_seeds([r if learned(r) else dict(r, **{m: None for m in STUDY_METRICS})
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
                             residual=seed_stats.band_over_seeds([r["residual"] for r in rs]),
                             **{k: seed_stats.band_over_seeds([r["curves"][k] for r in rs]) for k in rs[0]["curves"]})
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


def probe_cell_seconds(point, device, args):
    """Training seconds per epoch of a cell from a 3-epoch probe, or the reason there is none (its
    data are missing and cannot be downloaded)."""
    p, cfg = point["params"], dict(point["train"], snapshots=[])
    try:
        _, data, objective = mixup_run.run_inputs(cfg, p["dataset"], point["per_class"], point["K"], device, args)
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
            key = (p["dataset"], p["model"], mixup_run.recipe_label(cfg["recipe"]))
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
        print(f"cell {i + 1} of {len(points)} (--point {i}): {describe(p)}, {mixup_run.training_summary(cfg)}: {state}")
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
                                 script=os.path.join(os.path.dirname(os.path.abspath(__file__)), "mixup_main.py"))
        records, missing = sweep.run_sweep(points, None, args.models_dir, assemble_only=True)
    else:
        records, missing = sweep.run_sweep(points, lambda pt: study_cell(pt, device, args), args.models_dir,
                                           args.point, args.assemble)
    if args.point is not None:  # a job of the grid writes no table: --assemble does, or the next full run
        print(f"cell {args.point} finished; {len(missing)} of {len(points)} cells still missing; no table written",
              file=sys.stderr)
        return 0
    sweep.refuse_missing(args, [f"{i} ({describe(points[i]['params'])})" for i in missing], len(points), "cells")
    cells = [r for r in records if r is not None]
    table = study_table(records)
    d0, m0 = args.datasets[0], args.models[0].lower()
    result = {"figure": "mixup_study", "argv": sys.argv[1:], "level": 0.95, "keys": STUDY_KEYS,
              "metrics": STUDY_METRICS, "table": table, "cells": cells,
              "missing": [points[i]["params"] for i in missing],
              "dynamics": study_dynamics([r for r in cells if learned(r)], d0, m0)}
    result.update(key=figure_store.runs_key(points), runs=dict(finished=len(points) - len(missing), total=len(points)))
    name, held = figure_store.choose_stem(args.plot_dir, "mixup_study" + ("_quick" if args.quick else ""), result)
    if name is None:  # this grid's table is there already, as full or fuller
        print(held)
        return 0
    for path in write_study(result, cells, args, os.path.join(args.plot_dir, name)):
        print(path)


def write_study(result, cells, args, stem):
    """The study's JSON, CSV and figures at `stem`; prints the table's rows; returns the paths written."""
    table = result["table"]
    d0, m0 = args.datasets[0], args.models[0].lower()
    models = [m.lower() for m in args.models]
    written = [stem + ".json", stem + ".csv"]
    result_files.atomic_write_json(written[0], result)
    result_files.atomic_write_csv(written[1], table)
    all_losses = list(dict.fromkeys(args.losses + args.panel_losses))
    written += [
        mixup_plots.save_projection_table(
            [[projection_panel(cells, args, d, m, args.losses[0]) for m in models] for d in args.datasets],
            args.datasets, models, stem + "_projections.png", f"{args.losses[0]}, with mixup, last epoch"),
        mixup_plots.save_projection_table([[projection_panel(cells, args, d0, m0, loss) for loss in all_losses]],
                                         [f"{d0}, {m0}"], all_losses, stem + "_losses.png", "with mixup, last epoch"),
        mixup_plots.save_study_dynamics(result["dynamics"], stem + "_dynamics.png", f"{d0}, {m0}, with mixup"),
        mixup_plots.save_study_calibration(table, stem + "_calibration.png")]
    print_table(table)
    return written


def print_table(table):
    """One line per row of the study table: its cell, recipe, counts and each metric with its interval."""
    for row in table:
        print(" ".join(f"{row[k]}" for k in STUDY_KEYS) + f" [{row['recipe']}] (n={row['n_seeds']}, diverged "
              f"{row['n_diverged']}, failed {row['n_failed']}, terminal phase {row['n_terminal']}): "
              + "; ".join(f"{m} {row[m + '_mean']:.3g} ± {row[m + '_std']:.2g} " + (
                  f"[{row[m + '_ci_lo']:.3g}, {row[m + '_ci_hi']:.3g}]" if np.isfinite(row[m + "_ci_lo"])
                  else f"range [{row[m + '_min']:.3g}, {row[m + '_max']:.3g}]") for m in STUDY_METRICS))
