"""A point's record file (path, reading, reuse) and the records of a point's seeds merged."""
import os
import sys

import numpy as np

import read_back
import result_files
import seed_stats
import utils
from utils import UserError


def point_record_path(models_dir, point):
    return os.path.join(models_dir, "points", f"{point['figure']}_{utils.config_key(point)}.json")


def read_point_record(path, point):
    """The finished record of `point`, checked against the point it claims (params; for a figure
    point also sizes, clusters and a K x K Z); None when there is none, or (said on stderr) when it
    is broken: it then counts as missing and is recomputed, the trained run itself being reused."""
    if not os.path.exists(path):
        return None
    try:
        rec = result_files.read_json(path)
        ok = isinstance(rec, dict)
        if ok:  # a figure record keeps its params; a study cell's record holds them among its fields
            claimed = rec.get("params") if "params" in rec else {k: rec.get(k) for k in point["params"]}
            ok = claimed == result_files.to_jsonable(point["params"])
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


# Per-seed fields of a point record whose numbers get mean, std and interval over seeds: every
# per-seed number of a point (its run_dir and history excepted: the history gets history_stats).
STAT_FIELDS = ("minority_spread", "minority_spread_rel", "z_norm", "cosines", "nc", "test_acc_per_class",
               "test_acc_majority", "test_acc_minority", "Z", "b")


POINT_FIELDS = ("params", "sizes", "clusters", "train")  # shared by the seeds of a point


def stats_over_seeds(dicts):
    """{name: seed_stats.mean_std_interval} of every number of the dicts (one per seed), named as
    utils.flatten names them, each interval clipped to its quantity's range (seed_stats.quantity_range);
    the epoch and lr of an evaluated row are left out (the same for every seed)."""
    flat = [result_files.flatten(d) for d in dicts]
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
    'history_stats' and 'distance_history_stats'."""
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
        for key in ("history", "distance_history"):
            if all(r.get(key) for r in done):
                rec[key + "_stats"] = history_stats([r[key] for r in done])
        merged.append(rec)
    return merged
