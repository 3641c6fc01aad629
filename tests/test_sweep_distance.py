"""The sweep figures' distance to the convex program: every point's z_theory_distance at each evaluated epoch
in the figure JSON (`distance_history`, with seeds `distance_history_stats`) and drawn as a panel."""
import json
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

import plot_utils
import point_records

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _point(lam, rows, seed=0):
    return dict(params=dict(lam=lam), train=dict(seed=seed), Z=[[1.0, 0.0], [0.0, 1.0]], minority_spread=0.0,
                distance_history=[dict(epoch=e, z_theory_distance=v) for e, v in rows])


@pytest.mark.slow
def test_quick_ufm_sweep_records_the_distance_of_every_point(tmp_path):
    """Below the threshold the trained UFM sits at Z* (distance 1.9e-5 measured, at 1 and 2 threads); above
    lambda_max = 0.0167 the optimum is Z* = 0, where the distance is undefined: None in the JSON, not 0."""
    out = subprocess.run([sys.executable, "minority_l_main.py", "--quick", "--network", "UFM", "--lam", "0.005",
                          "0.03", "--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"),
                          "--data_dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "p" / "minority_l_ufm_ka5_quick.json").read_text())
    below, above = sorted(result["points"], key=lambda p: p["params"]["lam"])
    assert [r["epoch"] for r in below["distance_history"]] == [r["epoch"] for r in above["distance_history"]]
    assert below["distance_history"][-1]["z_theory_distance"] == below["nc"]["z_theory_distance"] < 1e-3
    assert above["distance_history"][-1]["z_theory_distance"] is None
    assert (tmp_path / "p" / "minority_l_ufm_ka5_quick.png").stat().st_size > 0


def test_panel_draws_a_curve_per_point_over_epochs():
    pts = [_point(0.01, [(1, 0.5), (10, 0.05), (100, 0.005)]), _point(0.02, [(1, 0.4), (10, 0.2), (100, np.nan)])]
    fig, ax = plt.subplots()
    plot_utils.plot_sweep_distance_panel(fig, ax, pts, "lam", "lambda")
    assert [list(line.get_xdata()) for line in ax.lines] == [[1, 10, 100]] * 2
    assert ax.lines[0].get_ydata()[-1] == 0.005 and np.isnan(ax.lines[1].get_ydata()[-1])
    assert ax.get_xlabel() == "epoch" and ax.get_xscale() == "log"
    plt.close(fig)


def test_panel_with_one_evaluated_epoch_draws_the_last_distance_against_the_swept_value():
    pts = [_point(0.02, [(200, 0.2)]), _point(0.01, [(200, 0.1)]), _point(0.03, [])]   # the last: none recorded
    fig, ax = plt.subplots()
    plot_utils.plot_sweep_distance_panel(fig, ax, pts, "lam", "lambda")
    (line,) = ax.lines
    assert list(line.get_xdata()) == [0.02, 0.01] and list(line.get_ydata()) == [0.2, 0.1]
    assert ax.get_xlabel() == "lambda"
    plt.close(fig)


def test_panel_without_distances_says_so():
    fig, ax = plt.subplots()
    plot_utils.plot_sweep_distance_panel(fig, ax, [_point(0.0, [])], "lam", "lambda")
    assert not ax.lines and "no distance" in ax.texts[0].get_text()
    plt.close(fig)


def test_seeds_give_the_mean_distance_per_epoch_with_an_interval_inside_its_range():
    """Three seeds, one far off: the t-interval of the mean would reach below 0; it is clipped to [0, 2]."""
    seeds = [_point(0.01, [(1, v1), (10, v10)], seed=s) for s, (v1, v10) in enumerate([(0.9, 1e-3), (0.8, 2e-3),
                                                                                         (0.7, 0.5)])]
    (merged,) = point_records.merge_seeds(seeds, 3)
    rows = merged["distance_history_stats"]
    assert [r["epoch"] for r in rows] == [1, 10]
    st = rows[1]["stats"]["z_theory_distance"]
    assert st["mean"] == pytest.approx((1e-3 + 2e-3 + 0.5) / 3) and st["ci95"][0] == 0.0
    fig, ax = plt.subplots()
    plot_utils.plot_sweep_distance_panel(fig, ax, [merged], "lam", "lambda")
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.8, st["mean"]])
    assert "mean over seeds" in ax.get_title()
    plt.close(fig)
