"""The convex program of the UFM (theory.md section 2): solvers, thresholds, structure, asymptotics."""
import os

import numpy as np
import pytest

import ana_utils
import datasets
import theory_formulas
import ufm_certificate
import ufm_program
from conftest import ROOT
from utils import UserError


def two_clusters(k_A, n_A, k_B, n_B):
    return [n_A] * k_A + [n_B] * k_B


def spread(Z, idx):
    return ana_utils.minority_spread(Z, idx) / max(np.linalg.norm(Z), 1e-300)


def test_worked_threshold_values():
    assert theory_formulas.two_cluster_lambda_star(5, 500, 5, 100) == pytest.approx(1 / 300)
    assert theory_formulas.two_cluster_lambda_star(3, 500, 7, 100) == pytest.approx(1 / 220)
    assert theory_formulas.two_cluster_nA_star(0.005, 5, 5, 100) == pytest.approx(300)
    assert theory_formulas.two_cluster_nA_star(0.005, 3, 7, 100) == pytest.approx(433.33, abs=0.01)
    for lam, ratio in ((0.005, 100.0), (0.0039, 100.0), (2e-3 * 7, 1000.0)):
        lam_h, lam_w = theory_formulas.split_lambda(lam, ratio)
        assert 2 * np.sqrt(lam_h * lam_w) == pytest.approx(lam, rel=1e-14)
        assert lam_w / lam_h == pytest.approx(ratio, rel=1e-14)
    assert theory_formulas.split_lambda(0.005) == (0.005 / 20, 5 * 0.005)    # the original scripts' split
    n, clusters = theory_formulas.expand_clusters([3, 3, 4], [5000, 4000, 3000])
    assert n == [5000] * 3 + [4000] * 3 + [3000] * 4 and clusters[2] == [6, 7, 8, 9]
    assert theory_formulas.cluster_thresholds([3, 1], [50, 10]) == [pytest.approx(np.sqrt(50) / 160), None]


@pytest.mark.parametrize("cluster_s,sample_s", [
    ([5, 5], [500, 100]),       # the paper's minority-collapse layout
    ([3, 7], [500, 100]),
    ([2, 3, 2], [400, 150, 60]),  # three clusters, two-class minority
    ([6, 2], [300, 50]),          # k_B = 2
])
def test_sharp_collapse_threshold(cluster_s, sample_s):
    """Below sqrt(n_c)/N a cluster's columns stay apart, above it they coincide."""
    n, clusters = theory_formulas.expand_clusters(cluster_s, sample_s)
    minority = clusters[-1]
    lam_c = theory_formulas.cluster_thresholds(cluster_s, sample_s)[-1]
    below = ufm_program.solve_ufm_fast(n, 0.9 * lam_c, 0.01)["Z"]
    above = ufm_program.solve_ufm_fast(n, 1.1 * lam_c, 0.01)["Z"]
    assert spread(below, minority) > 1e-2
    assert spread(above, minority) < 1e-6
    for c in clusters[:-1]:  # the larger clusters have higher thresholds: still apart at 1.1 lam_c
        assert spread(above, c) > 1e-3


def test_optimality_structure():
    """1^T Z = 0 and sum b = 0; equal-size clusters give the block pattern (theory.md section 2)."""
    n, clusters = theory_formulas.expand_clusters([3, 3, 4], [500, 300, 100])
    sol = ufm_program.solve_ufm_cvxpy(n, 0.002, 0.01)
    Z, b = sol["Z"], sol["b"]
    assert sol["status"] == "optimal"
    np.testing.assert_allclose(Z.sum(0), 0, atol=1e-6)
    assert abs(b.sum()) < 1e-6
    for c in clusters:
        block = Z[np.ix_(c, c)]
        diag, off = np.diag(block), block[~np.eye(len(c), dtype=bool)]
        assert np.ptp(diag) < 1e-5 and np.ptp(off) < 1e-5      # a I + beta J
        assert np.ptp(b[c]) < 1e-6                              # b constant on a cluster
        for c2 in clusters:
            if c2 is not c:
                assert np.ptp(Z[np.ix_(c, c2)]) < 1e-5          # constant blocks between clusters
    # within a cluster the class means have equal norms and one common cosine, but not an ETF overall
    _, G_means = theory_formulas.gram_from_Z(Z, n)
    cos = ana_utils.cosines_from_gram(G_means)
    assert np.ptp(np.diag(G_means)[clusters[0]]) < 1e-6 * G_means.max()
    assert np.ptp(cos[np.ix_(clusters[0], clusters[0])][~np.eye(3, dtype=bool)]) < 1e-5
    assert np.ptp(np.diag(G_means)) > 1e-2 * G_means.max()


@pytest.mark.parametrize("lam_factor", [0.5, 0.99, 1.01, 3.0])
def test_fast_and_cvxpy_agree(lam_factor):
    n = two_clusters(5, 500, 5, 100)
    lam = lam_factor / 300
    a = ufm_program.solve_ufm_cvxpy(n, lam, 0.01)
    f = ufm_program.solve_ufm_fast(n, lam, 0.01)
    assert f["status"] == "optimal"
    assert abs(f["objective"] - a["objective"]) <= 1e-6 * abs(a["objective"])
    assert np.linalg.norm(f["Z"] - a["Z"]) <= 1e-3 * max(np.linalg.norm(a["Z"]), 1.0)
    assert ufm_certificate.ufm_objective(f["Z"], f["b"], n, lam, 0.01) == pytest.approx(f["objective"])


def test_depends_on_lambda_and_N_only_through_lambda_sqrt_N():
    small = ufm_program.solve_ufm_fast(two_clusters(5, 200, 5, 100), 0.004, 0.01)
    big = ufm_program.solve_ufm_fast(two_clusters(5, 800, 5, 400), 0.002, 0.01)   # N x 4, lambda / 2
    np.testing.assert_allclose(big["Z"], small["Z"], atol=1e-5)


def test_cosines_move_toward_etf_as_lambda_sqrt_N_shrinks():
    """theory.md's table: K = 10, k_A = 5, n_B = n_A / 2, lambda_b = 0.01."""
    n, clusters = theory_formulas.expand_clusters([5, 5], [200, 100])
    N = sum(n)
    table = {1e-1: (-0.173, -0.025, -0.105), 1e-2: (-0.146, -0.068, -0.110), 1e-4: (-0.133, -0.084, -0.112)}
    gaps = []
    for x, expected in table.items():
        Z = ufm_program.solve_ufm_fast(n, x / np.sqrt(N), 0.01)["Z"]
        c = ana_utils.cluster_cosines(Z, clusters)
        np.testing.assert_allclose([*c["within"], c["across"]], expected, atol=0.005)
        gaps.append(max(abs(v + 1 / 9) for v in [*c["within"], c["across"]]))
    assert gaps[0] > gaps[1] > gaps[2]


def test_bad_program_input():
    with pytest.raises(UserError, match="at least two classes"):
        ufm_program.solve_ufm([10], 0.01, 0.01)
    with pytest.raises(UserError, match="lambda -0.01: must be a number > 0"):
        ufm_program.solve_ufm([10, 10], -0.01, 0.01)
    with pytest.raises(UserError, match="lambda 0.0: must be a number > 0"):
        ufm_program.solve_ufm([10, 10], 0.0, 0.01)
    with pytest.raises(UserError, match="positive numbers"):
        ufm_program.solve_ufm([10, 0], 0.01, 0.01)
    with pytest.raises(UserError, match="solver"):
        ufm_program.solve_ufm([10, 10], 0.01, 0.01, solver="mosek")


@pytest.mark.parametrize("lam_factor", [0.8, 1.25])
def test_trained_ufm_reaches_the_convex_optimum(tmp_path, lam_factor):
    """Training the UFM network (lam_H = lam/20, lam_W = 5 lam) lands on the convex program's Z."""
    import torch

    import train_utils
    sizes = [40, 40, 10, 10]
    lam = lam_factor * theory_formulas.two_cluster_lambda_star(2, 40, 2, 10)
    data = datasets.get_data("synthetic", sizes, seed=0,
                             synthetic={"image_size": 2, "channels": 1, "test_per_class": 1})
    cfg = dict(name="ufm", network="ufm", optimizer="lbfgs", lr=1.0, batch_size=sum(sizes), epochs=30,
               eval_epochs=[30], lam_h=lam / 20, lam_w=5 * lam, lam_b=0.01, feat_dim=8)
    out = train_utils.train_run(cfg, data, torch.device("cpu"), models_dir=str(tmp_path))
    ref = ufm_program.solve_ufm_cvxpy(sizes, lam, 0.01)
    Z = np.array(out["Z"])
    assert np.linalg.norm(Z - ref["Z"]) <= 0.02 * np.linalg.norm(ref["Z"])
    assert abs(out["final"]["loss"] - ref["objective"]) < 1e-3
    minority_apart = spread(Z, [2, 3]) > 1e-2
    assert minority_apart == (lam_factor < 1)
    if minority_apart:
        assert out["final"]["nc1"] < 1e-4
    else:
        # Once the minority collapses, Sigma_B has rank < K-1 and nc1 divides by the vanishing
        # minority direction (ill-posed); check the features' collapse to their class means directly.
        model = torch.load(os.path.join(out["run_dir"], "model.pt"))
        H, y = model["H"].double().numpy(), data.y_train.numpy()
        means, _ = ana_utils.class_means(H, y, 4)
        assert ((H - means[y]) ** 2).sum() < 1e-6 * (H**2).sum()


def run_opt_main(tmp_path, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, os.path.join(ROOT, "opt_main.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_opt_main_original_example_writes_results_and_warns(tmp_path):
    r = run_opt_main(tmp_path, "--cluster_s", "3", "3", "4", "--sample_s", "5000", "4000", "3000",
                     "--reg_z", "0.005", "--reg_b", "0.01", "--name", "ex")
    assert r.returncode == 0, r.stderr
    assert "above every cluster's threshold" in r.stderr and "Z = 0" in r.stderr
    with np.load(tmp_path / "opt_results" / "ex.npz") as f:
        assert {"Z", "b", "n", "lam", "lam_b", "objective"} <= set(f.files)
        assert np.abs(f["Z"]).max() < 1e-6 and f["n"].tolist() == [5000] * 3 + [4000] * 3 + [3000] * 4
    import json
    summary = json.loads((tmp_path / "opt_results" / "ex.json").read_text())
    assert all(c["collapsed"] and c["theory_collapse"] for c in summary["clusters"])
    assert (tmp_path / "plots" / "ex.png").stat().st_size > 1000
    assert "opt_results/ex.npz" in r.stdout


@pytest.mark.slow
def test_opt_main_reports_minority_collapse(tmp_path):
    r = run_opt_main(tmp_path, "--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "0.0039",
                     "--solver", "fast", "--name", "mc")
    assert r.returncode == 0, r.stderr
    assert "cluster 1 (classes 5-9, n = 100): threshold 0.00333333; collapsed" in r.stdout
    assert "cluster 0 (classes 0-4, n = 500): threshold 0.00745356; apart" in r.stdout
    assert "optimal (certified relative accuracy" in r.stdout


@pytest.mark.parametrize("args,match", [
    (["--cluster_s", "5", "5", "--sample_s", "500", "--reg_z", "0.003"], "--cluster_s and --sample_s"),
    (["--cluster_s", "1", "--sample_s", "500", "--reg_z", "0.003"], "at least two classes"),
    (["--cluster_s", "5", "5", "--sample_s", "500", "0", "--reg_z", "0.003"], "--sample_s: 0 is not allowed"),
    (["--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "-1"], "--reg_z: -1.0 is not allowed"),
    (["--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "0", "1"], "--reg_z: 0.0 is not allowed"),
    (["--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "0.1", "--out_dir", "/proc/x"], "--out_dir"),
])
@pytest.mark.slow
def test_opt_main_bad_input(tmp_path, args, match):
    r = run_opt_main(tmp_path, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and match in r.stderr


@pytest.mark.parametrize("ratio,verdict", [(0.9999, "apart"), (1.0001, "collapsed"), (0.98, "apart"),
                                           (1.05, "collapsed")])
def test_opt_main_verdict_follows_the_certificate_at_the_threshold(ratio, verdict):
    # k = 2 + 2 classes of 2000 / 50: the minority threshold sqrt(50) / 4100 from the formula, not the solver
    import opt_main
    lam = ratio * np.sqrt(50) / 4100
    n, clusters = theory_formulas.expand_clusters([2, 2], [2000, 50])
    sol = ufm_program.solve_ufm(n, lam, 0.01)
    rows = opt_main.cluster_report(sol, n, clusters, theory_formulas.cluster_thresholds([2, 2], [2000, 50]), lam, 0.01)
    assert rows[1]["verdict"] == verdict
    assert rows[1]["spread_lower"] <= rows[1]["spread"] + 1e-9 and rows[1]["spread"] <= rows[1]["spread_upper"] + 1e-9
