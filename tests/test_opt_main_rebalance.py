"""opt_main.py with re-balancing losses, oversampling, long-tailed profiles, the hard-margin program
(--reg_z 0: SELI) and a lambda path (theory.md section 9)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rebalance_program as rp
import seli
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "opt_main.py"), *args, "--name", "t"], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    return r, json.loads((tmp_path / "opt_results" / "t.json").read_text())


def test_profiles_follow_cao_et_al():
    cifar10_lt = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert utils.profile_sizes("exp", 100, 10, 5000) == cifar10_lt
    assert utils.profile_sizes("step", 10, 4, 500) == [500, 500, 50, 50]
    lt = utils.profile_sizes("exp", 256, 1000, 1280)
    assert len(lt) == 1000 and lt[0] == 1280 and lt[-1] == 5


@pytest.mark.parametrize("sizes", [["3", "4"], ["1", "1", "1", "1", "1", "1"]])
def test_reg_z_0_returns_the_simplex_encoding_for_any_sizes(tmp_path, sizes):
    samples = ["900", "37"] if len(sizes) == 2 else ["1000", "400", "150", "60", "20", "7"]
    r, out = run(tmp_path, "--cluster_s", *sizes, "--sample_s", *samples, "--reg_z", "0")
    K = len(out["sizes"])
    P = seli.seli_logits(K)
    assert np.abs(np.asarray(out["Z"]) - P).max() <= 1e-7          # Clarabel: measured <= 2e-9
    assert np.allclose(out["Z_normalised"], P / np.linalg.norm(P), atol=1e-7)
    assert out["certificate"]["certified"] and out["distances"]["seli"]["Z"] < 1e-12
    assert "SELI's dual certificate: optimal" in r.stdout


def test_a_loss_records_its_vectors_and_the_sizes_as_solved(tmp_path):
    _, out = run(tmp_path, "--cluster_s", "2", "3", "--sample_s", "400", "50", "--reg_z", "0.004",
                 "--loss", "vector_scaling", "--vs_gamma", "0.3", "--oversample", "1", "2")
    assert out["sizes"] == [400, 400, 100, 100, 100] and out["n"] == [400, 400, 50, 50, 50]
    loss = out["loss"]
    assert loss["name"] == "vector_scaling" and loss["params"] == {"vs_gamma": 0.3, "vs_tau": 1.0}
    assert np.allclose(loss["scale"], (np.array([400, 400, 50, 50, 50]) / 400) ** 0.3)
    assert out["status"] == "optimal" and out["accuracy"] <= 1e-9
    ref = rp.solve_rebalance_cvxpy(out["sizes"], loss, 0.004, 0.01)
    assert np.linalg.norm(np.asarray(out["Z"]) - ref["Z"]) <= 1e-5 * np.linalg.norm(ref["Z"])
    lam_star = rp.collapse_threshold(out["sizes"], loss, [2, 3, 4], 0.01)
    assert out["clusters"][1]["threshold"] == pytest.approx(lam_star, rel=1e-12)
    assert out["clusters"][1]["verdict"] == ("collapsed" if 0.004 >= lam_star else "apart")
    assert set(out["distances"]) == {"seli", "etf"}


def test_a_path_is_certified_and_matches_cold_solves(tmp_path):
    lams = ["0.002", "0.003", "0.0033", "0.0034", "0.005"]
    r, out = run(tmp_path, "--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", *lams, "--loss", "ldam")
    assert [p["lam"] for p in out["path"]] == [float(v) for v in lams]
    loss = out["loss"]
    for p in out["path"]:
        assert p["status"] == "optimal"
        cold = rp.solve_rebalance_fast(out["sizes"], loss, p["lam"], 0.01)
        assert np.linalg.norm(np.asarray(p["Z"]) - cold["Z"]) <= 1e-5 * max(np.linalg.norm(cold["Z"]), 1.0)
        assert p["clusters"][1]["collapsed"] == (p["lam"] >= out["thresholds"][1])
    assert (tmp_path / "plots" / "t.png").stat().st_size > 1000 and "path of 5 lambdas" in r.stdout


def test_a_plain_path_gives_each_lambda_the_verdicts_of_its_single_solve(tmp_path):
    # exp profile K = 100 (10 clusters of equal sizes): solved at 1e-9 the warm points at 0.001 and 0.0012 left
    # all 10 verdicts open (certified 1.3e-11, 6.6e-10), where single solves (ufm_program's, to 5e-14) say collapsed
    lams = ["0.0008", "0.001", "0.0012"]
    profile = ["--profile", "exp", "--ratio", "100", "--num_classes", "100", "--n_max", "500"]
    _, out = run(tmp_path, *profile, "--lam", *lams)
    for lam, p in zip(lams, out["path"]):
        _, single = run(tmp_path, *profile, "--lam", lam)
        assert p["status"] == "optimal" and p["accuracy"] <= 1e-9
        assert [c["verdict"] for c in p["clusters"]] == [c["verdict"] for c in single["clusters"]]
        assert sum(c["verdict"] == "collapsed" for c in p["clusters"]) == 10


def test_prepare_takes_a_profile(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "utils.py"), "prepare", "--dataset", "digits", "--profile",
                        "exp", "--ratio", "10", "--num_classes", "10", "--n_max", "100"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "train per class: [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]" in r.stdout


def test_ldam_thresholds_reach_k_1000_clusters_and_say_where_they_are_not_computed(tmp_path):
    """LDAM thresholds are computed up to 100 distinct sizes whatever K (two sizes at K = 1000: the minority's
    lambda* 3.33382e-5, measured), printed as not computed beyond; a single class is said to be one, and the
    'every cluster collapses' warning needs every cluster's threshold."""
    r, out = run(tmp_path, "--cluster_s", "500", "500", "--sample_s", "500", "100", "--lam", "0.00005",
                 "--loss", "ldam")
    assert out["clusters"][1]["threshold"] == pytest.approx(3.33382e-5, rel=1e-5)
    assert out["clusters"][1]["verdict"] == "collapsed" and out["clusters"][0]["verdict"] == "apart"
    r, out = run(tmp_path, "--profile", "exp", "--num_classes", "120", "--n_max", "1280", "--lam", "0.001",
                 "--loss", "ldam")
    multi = [c for c in out["clusters"] if len(c["classes"]) > 1]
    assert multi and all(c["threshold"] is None for c in multi)
    assert "threshold not computed (LDAM beyond 100 distinct sizes)" in r.stdout
    assert "single class (cannot collapse)" in r.stdout and "above every cluster" not in r.stderr
