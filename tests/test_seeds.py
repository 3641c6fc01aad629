"""--seeds on the figure scripts (per point mean, std and 95% t-interval, recomputed here from the
per-seed numbers), --point over (point, seed) runs, mixup-compare's intervals, and `collect`."""
import csv
import glob
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

import block_main
import limit_main
import mixup_main
import point_records
import replot
import result_files
import seed_stats
import snapshot_files
from conftest import dirs

SEEDS = [0, 1, 2]


def figure_json(capsys):
    out = capsys.readouterr().out
    return result_files.read_json([ln for ln in out.splitlines() if ln.endswith(".json")][0])


def t_interval(values):
    """mean, sample std and the 95% Student-t interval, computed directly."""
    v = np.array(values, dtype=float)
    m, s = v.mean(), v.std(ddof=1)
    half = scipy.stats.t.ppf(0.975, len(v) - 1) * s / math.sqrt(len(v))
    return m, s, (m - half, m + half)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A quick 2-point limit sweep with --seeds 0 1 2 (6 tiny runs)."""
    tmp = tmp_path_factory.mktemp("seeds")
    argv = ["--quick", "--nalist", "20", "40", "--epoch", "5"] + dirs(tmp)
    assert limit_main.main(argv + ["--seeds"] + [str(s) for s in SEEDS]) == 0
    return tmp, argv


def test_seeds_give_per_point_mean_std_and_t_interval(seeded, capsys):
    tmp, argv = seeded
    assert limit_main.main(argv + ["--seeds"] + [str(s) for s in SEEDS] + ["--assemble"]) == 0
    result = figure_json(capsys)
    assert len(result["points"]) == 2 and result["missing"] == []
    for p in result["points"]:
        assert [s["seed"] for s in p["seeds"]] == SEEDS
        assert len({s["run_dir"] for s in p["seeds"]}) == 3
        per_seed = {"minority_spread": [s["minority_spread"] for s in p["seeds"]],
                    "cosines.within.0": [s["cosines"]["within"][0] for s in p["seeds"]],
                    "cosines.across": [s["cosines"]["across"] for s in p["seeds"]],
                    "nc.nc1": [s["nc"]["nc1"] for s in p["seeds"]],
                    "nc.test_acc": [s["nc"]["test_acc"] for s in p["seeds"]]}
        assert len(set(per_seed["nc.nc1"])) == 3  # the seeds differ
        for name, values in per_seed.items():
            m, s, (lo, hi) = t_interval(values)
            st = p["stats"][name]
            assert st["n"] == 3
            assert st["mean"] == pytest.approx(m, rel=1e-12) and st["std"] == pytest.approx(s, rel=1e-12)
            rlo, rhi = seed_stats.quantity_range(name)  # the interval is clipped to the quantity's range
            assert st["ci95"] == pytest.approx([max(lo, rlo), min(hi, rhi)], rel=1e-12, abs=1e-15)
        assert p["Z"] == p["seeds"][0]["Z"]  # the first seed's record, and the mean Z beside it
        np.testing.assert_allclose(p["Z_mean"], np.mean([s["Z"] for s in p["seeds"]], axis=0), rtol=1e-12)


def test_seeds_give_statistics_for_every_per_point_number_within_its_range(seeded, capsys):
    tmp, argv = seeded
    assert limit_main.main(argv + ["--seeds"] + [str(s) for s in SEEDS] + ["--assemble"]) == 0
    for p in figure_json(capsys)["points"]:
        names = {k for s in p["seeds"]
                 for k in result_files.flatten({f: s[f] for f in point_records.STAT_FIELDS if f in s})}
        assert names - {"nc.epoch", "nc.lr"} == set(p["stats"]) and {"Z.0.0", "nc.test_acc_c0", "b.0"} <= names
        for name, st in p["stats"].items():
            lo, hi = {"nc.test_acc": (0, 1), "cosines.across": (-1, 1), "z_norm": (0, math.inf)}.get(
                name, seed_stats.quantity_range(name))
            if st["ci95"] is not None:
                assert lo <= st["ci95"][0] <= st["mean"] <= st["ci95"][1] <= hi, (name, st)


def test_a_seed_of_the_sweep_is_the_single_seed_run(seeded, capsys):
    tmp, argv = seeded
    before = sorted(glob.glob(str(tmp / "models" / "limit_*")))
    assert limit_main.main(argv + ["--seed", "1"]) == 0  # reused: keyed as before, nothing trained
    single = figure_json(capsys)
    assert sorted(glob.glob(str(tmp / "models" / "limit_*"))) == before
    for p in single["points"]:
        assert "seeds" not in p and "stats" not in p
    assert limit_main.main(argv + ["--seeds"] + [str(s) for s in SEEDS] + ["--assemble"]) == 0
    merged = figure_json(capsys)
    for p, q in zip(single["points"], merged["points"]):
        assert p["Z"] == q["seeds"][1]["Z"] and p["nc"] == q["seeds"][1]["nc"]


def test_point_indexes_point_seed_pairs(tmp_path, capsys):
    argv = ["--quick", "--nalist", "20", "40", "--epoch", "2", "--seeds", "5", "7"] + dirs(tmp_path)
    with pytest.raises(SystemExit):  # point 1 (n_A = 40) with seed 7; a job writes no figure
        limit_main.main(argv + ["--point", "3"])
    assert limit_main.main(argv + ["--assemble", "--partial"]) == 0
    result = figure_json(capsys)
    assert [(p["params"]["n_A"], s["seed"]) for p in result["points"] for s in p["seeds"]] == [(40, 7)]
    assert [(m["index"], m["seed"]) for m in result["missing"]] == [(0, 5), (0, 7), (1, 5)]
    with pytest.raises(SystemExit):
        limit_main.main(argv + ["--list_points"])
    listed = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["point"], r["seed"], r["params"]["n_A"], r["finished"]) for r in listed] == [
        (0, 0, 5, 20, False), (1, 0, 7, 20, False), (2, 1, 5, 40, False), (3, 1, 7, 40, True)]


def test_block_seeds_keep_every_history(tmp_path, capsys):
    assert block_main.main(["--quick", "--epoch", "3", "--seeds", "0", "1"] + dirs(tmp_path)) == 0
    result = figure_json(capsys)
    p = result["points"][0]
    assert [len(s["history"]) for s in p["seeds"]] == [3, 3] and result["history"] == p["seeds"][0]["history"]
    assert p["stats"]["nc.nc1"]["n"] == 2 and p["stats"]["nc.nc1"]["ci95"] is None  # two seeds: the range only
    assert [h["epoch"] for h in p["history_stats"]] == [r["epoch"] for r in result["history"]]


MIXUP = ["--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "16", "--model", "cnn", "--width", "4",
         "--epochs", "2", "--snapshots", "2", "--snapshot_size", "30", "--batch_size", "16", "--device", "cpu"]


@pytest.mark.slow
def test_mixup_compare_intervals_and_collect(tmp_path, capsys):
    extra = dirs(tmp_path)[:6]
    for seed in SEEDS:
        mixup_main.main(MIXUP + extra + ["--seed", str(seed)])
    capsys.readouterr()
    runs = sorted(glob.glob(str(tmp_path / "models" / "mixup_*")))
    out = str(tmp_path / "compare.png")
    replot.main(["mixup-compare"] + runs + ["--out", out])
    printed = capsys.readouterr().out
    stats = result_files.read_json(str(tmp_path / "compare.json"))
    assert list(stats) == ["cross_entropy"] and stats["cross_entropy"]["n_runs"] == 3
    summaries = [result_files.read_json(snapshot_files.mixup_snapshot_path(d, 2, "json")) for d in runs]
    for key in ("same_spread", "diff_convex_residual_mean"):
        m, s, (lo, hi) = t_interval([x[key] for x in summaries])
        st = stats["cross_entropy"][key]
        assert st["mean"] == pytest.approx(m) and st["std"] == pytest.approx(s)
        assert st["ci95"] == pytest.approx([max(lo, 0), hi])  # clipped at 0: a spread and a residual are >= 0
        assert f"{key}: {m:.4g} ± " in printed

    replot.main(["collect", str(tmp_path / "models")])
    with open(capsys.readouterr().out.strip()) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run_dir"] for r in rows) == runs
    assert sorted(int(r["config.seed"]) for r in rows) == SEEDS
    for r in rows:
        final = result_files.read_json(os.path.join(r["run_dir"], "final.json"))
        assert float(r["final.test_acc"]) == pytest.approx(final["final"]["test_acc"])
        assert r["config.snapshots"] == "2" and r["config.classes"] == "0 1 2"
