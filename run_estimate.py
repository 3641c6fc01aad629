"""--dry_run's estimate of a figure command's time: the runs it would train, measured as they will be trained
(the threads the run sets, the batched groups trained together), plus this process's start-up, the
figure's analysis (the convex program per point and along the theory curve) and its drawing.

Training is measured from the finished runs' recorded seconds per epoch when there are any, else by
probes in throw-away folders: 3 epochs of each batched group, and of the points to train alone with the
fewest and the most batches per epoch (an epoch's time is linear in its batches between them: small runs
are mostly per-epoch overhead). A probe's seconds beyond 3 such epochs are the run's own fixed costs
(building, evaluations, checkpoints), the first probe's also the process's one-time costs (imports on
the first optimizer step), counted once."""
import io
import os
import tempfile
import time

import matplotlib

import result_files

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import batched_training  # noqa: E402
import figure_theory  # noqa: E402
import train_utils  # noqa: E402

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
        rows = result_files.read_csv(csv_path) if os.path.isfile(csv_path) else []
        secs = [r["seconds_per_epoch"] for r in rows if isinstance(r.get("seconds_per_epoch"), float)]
        if secs:
            rates.append(sum(secs) / len(secs) / batches(rec))
    return sum(rates) / len(rates) if rates else None


def probe_batched(group, data, device):
    """(seconds per epoch, seconds beyond 3 such epochs) of `group` trained together
    (batched_training.train_batched) for 3 epochs."""
    cfgs = [dict(p["train"], epochs=3, eval_epochs=[1, 3], lr_milestones=[], warm_epochs=0) for p in group]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = batched_training.train_batched(cfgs, data, device, tmp)
        wall = time.perf_counter() - t0
        epoch = sum(result_files.read_csv(os.path.join(r["run_dir"], "summary.csv"))[-1]["seconds_per_epoch"]
                    for r in res)
    return epoch, max(0.0, wall - 3 * epoch)


def probe_alone(point, data, device):
    """(seconds per epoch, seconds beyond 3 such epochs) of `point` trained alone for 3 epochs."""
    t0 = time.perf_counter()
    epoch = train_utils.probe_seconds_per_epoch(point["train"], data, device)
    return epoch, max(0.0, time.perf_counter() - t0 - 3 * epoch)


def drawing_seconds(n_panels):
    """Seconds to draw and save (PNG, dpi 110) a stand-in of a figure with n_panels heat maps and a colour bar."""
    t0, ncol = time.perf_counter(), min(n_panels, 5)
    fig, axes = plt.subplots(-(-n_panels // ncol), ncol, squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.flat[:n_panels]):
        im = ax.imshow(np.random.default_rng(k).normal(size=(10, 10)))
        ax.set_title(f"panel {k}", fontsize=8)
    fig.colorbar(im, ax=axes)
    fig.savefig(io.BytesIO(), format="png", dpi=110)
    plt.close(fig)
    return time.perf_counter() - t0


def alone_seconds(alone, data_of, device, use_threads):
    """Seconds to train the points `alone` one by one, from probes of the ones with the fewest and the
    most batches per epoch (module docstring)."""
    ends = sorted({batches(p): p for p in alone}.items())
    ends = [ends[0], ends[-1]] if len(ends) > 1 else ends
    probes = []
    for _, p in ends:
        use_threads([p])
        probes.append(probe_alone(p, data_of(p), device))
    (b0, _), (b1, _) = ends[0], ends[-1]
    (e0, fixed0), (e1, fixed1) = probes[0], probes[-1]

    def per_epoch(b):
        return e0 if b1 == b0 else e0 + (e1 - e0) * (b - b0) / (b1 - b0)
    per_run = fixed1 if len(probes) > 1 else 0.0
    return sum(per_epoch(batches(p)) * p["train"]["epochs"] + per_run for p in alone) + max(0.0, fixed0 - per_run)


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
            train += alone_seconds(alone, data_of, device, use_threads)
        for group in groups:
            use_threads(group)
            epoch, fixed = probe_batched(group, data_of(group[0]), device)
            train += epoch * group[0]["train"]["epochs"] + fixed
    t0, p = time.perf_counter(), todo[0]
    figure_theory.ufm_theory(p["sizes"], p["clusters"], p["params"]["lam"], p["train"]["lam_b"])
    analysis = (time.perf_counter() - t0) * (n_points + (CURVE_POINTS if n_points > 1 else 0))
    analysis += drawing_seconds(n_points + 4 if n_points > 1 else 3)
    return startup + train + analysis, (f"start-up {startup:.0f} s, training {train:.0f} s from {how}, "
                                        f"analysis and drawing {analysis:.0f} s")
