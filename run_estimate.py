"""--dry_run's estimate of a figure command's time: the runs it would train, measured as they will be trained
(the threads the run sets, the batched groups trained together), plus this process's start-up and the
figure's analysis (the convex program per point and along the theory curve).

Training is measured from the finished runs' recorded seconds per epoch when there are any, else by
probes: 3 epochs of the first point trained alone and of each batched group, in throw-away folders,
the first epoch (one-time costs) not counted."""
import os
import tempfile
import time

import ana_utils
import batched_training
import train_utils
import utils

# Theory-curve points a sweep figure adds to its points (minority figures: 20 + the threshold's 2).
CURVE_POINTS = 22


def process_seconds():
    """Seconds since this process started (Linux: /proc), 0.0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def batches(point):
    """Batches per epoch of a point's training (the last, partial one counted)."""
    N = sum(point["sizes"])
    return -(-N // min(point["train"]["batch_size"], N))


def recorded_seconds_per_batch(records):
    """Mean recorded training seconds per batch over finished points (a batched run records its share
    of the batch's time), or None when none recorded any."""
    rates = []
    for rec in records:
        csv_path = os.path.join(rec.get("run_dir", ""), "summary.csv")
        rows = utils.read_csv(csv_path) if os.path.isfile(csv_path) else []
        secs = [r["seconds_per_epoch"] for r in rows if isinstance(r.get("seconds_per_epoch"), float)]
        if secs:
            rates.append(sum(secs) / len(secs) / batches(rec))
    return sum(rates) / len(rates) if rates else None


def probe_batched_epoch(group, data, device):
    """Seconds per epoch of `group` trained together (batched_training.train_batched), from 3 epochs."""
    cfgs = [dict(p["train"], epochs=3, eval_epochs=[1, 3], lr_milestones=[], warm_epochs=0) for p in group]
    with tempfile.TemporaryDirectory() as tmp:
        res = batched_training.train_batched(cfgs, data, device, tmp)
        return sum(utils.read_csv(os.path.join(r["run_dir"], "summary.csv"))[-1]["seconds_per_epoch"] for r in res)


def estimate(todo, groups, finished, data_of, device, use_threads, n_points):
    """(seconds, how) of training the points `todo` (those in `groups` together, the rest alone), with
    start-up and analysis. data_of(point): its data; use_threads(points): set the threads for
    training these points together; n_points: the figure's points (seeds merged)."""
    startup = process_seconds()  # before the probes, which this process runs
    rate = recorded_seconds_per_batch(finished)
    if rate is not None:
        train, how = sum(rate * batches(p) * p["train"]["epochs"] for p in todo), "the finished runs' records"
    else:
        grouped = {id(p) for g in groups for p in g}
        alone = [p for p in todo if id(p) not in grouped]
        train, how = 0.0, "3-epoch probes"
        if alone:
            use_threads(alone[:1])
            rate = train_utils.probe_seconds_per_epoch(alone[0]["train"], data_of(alone[0]), device) / batches(alone[0])
            train += sum(rate * batches(p) * p["train"]["epochs"] for p in alone)
        for group in groups:
            use_threads(group)
            train += probe_batched_epoch(group, data_of(group[0]), device) * group[0]["train"]["epochs"]
    t0, p = time.perf_counter(), todo[0]
    ana_utils.ufm_theory(p["sizes"], p["clusters"], p["params"]["lam"], p["train"]["lam_b"])
    analysis = (time.perf_counter() - t0) * (n_points + (CURVE_POINTS if n_points > 1 else 0))
    return startup + train + analysis, (f"start-up {startup:.0f} s, training {train:.0f} s from {how}, "
                                        f"analysis {analysis:.0f} s")
