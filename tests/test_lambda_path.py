"""The lambda path (rebalance_program.lambda_path): its warm start extrapolated from the neighbours' answers,
and its warm-started answers against cold solves at the same lambdas, every one certified."""
import numpy as np
import pytest
import scipy.linalg

import rebalance_benchmark
import rebalance_program as rp
import utils


def test_the_warm_start_extrapolates_in_log_lambda():
    """A path whose answer is linear in log lambda is predicted exactly; the step ratio is clipped to 1."""
    A, B = np.arange(4.0).reshape(2, 2), np.ones((2, 2))
    lams, seen = [0.1, 0.4, 0.2, 0.05], []

    def solve(lam, Z0, b0):
        seen.append((lam, Z0))
        return dict(Z=A * np.log(lam) + B, b=np.log(lam) * np.ones(2), lam=lam)
    sols = rp.lambda_path(lams, solve)
    assert [s["lam"] for s in sols] == lams                     # answers in the order given
    assert [lam for lam, _ in seen] == [0.05, 0.1, 0.2, 0.4]     # solved from the smallest up
    assert seen[0][1] is None and np.array_equal(seen[1][1], A * np.log(0.05) + B)   # cold, then the answer
    assert np.allclose(seen[2][1], A * np.log(0.2) + B, rtol=0, atol=1e-13)         # ratio 1: exact
    # 0.2 -> 0.4: the same step in log lambda as 0.1 -> 0.2 (ratio 1, exact) ...
    assert np.allclose(seen[3][1], A * np.log(0.4) + B, rtol=0, atol=1e-13)
    seen.clear()
    rp.lambda_path([1.0, 0.02, 0.01], solve)                    # ... 0.02 -> 1 is 5.6 times larger: clipped to 1
    assert np.allclose(seen[2][1], A * (2 * np.log(0.02) - np.log(0.01)) + B, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["cross_entropy", "class_balanced"])
@pytest.mark.parametrize("tol, z_tol", [(1e-9, 3e-4), (1e-12, 1e-6)])
def test_the_warm_path_gives_the_cold_answers(name, tol, z_tol):
    """An exp profile (K = 30, groups of 3 and 2 classes crossing their thresholds on the path): every
    warm-started answer certified to tol, its objective within the two certified accuracies of the cold
    solve's (a bound, no tolerance chosen), its Z within z_tol of the cold one, relative. The certificate bounds
    the objective; Z is only as close as the objective's flat directions allow, about sqrt(tol): measured
    6.7e-5 at tol 1e-9 and 1.6e-7 at 1e-12 for both losses, with 1 and 2 threads (the solver runs on one BLAS
    thread)."""
    n = utils.profile_sizes("exp", 100, 30, 200)
    loss = rp.loss_vectors(name, n)
    lam_mid = np.sqrt(min(n)) / sum(n)
    lams = list(np.geomspace(2.0, 0.5, 6) * lam_mid)
    path = rp.lambda_path(lams, lambda lam, Z0, b0: rp.solve_rebalance_fast(n, loss, lam, 0.01, tol, Z0, b0))
    for lam, warm in zip(lams, path):
        cold = rp.solve_rebalance_fast(n, loss, lam, 0.01, tol)
        assert warm["status"] == cold["status"] == "optimal" and max(warm["accuracy"], cold["accuracy"]) <= tol
        assert abs(warm["objective"] - cold["objective"]) <= (warm["accuracy"] + cold["accuracy"]) * cold["objective"]
        dz = np.linalg.norm(warm["Z"] - cold["Z"]) / max(np.linalg.norm(cold["Z"]), 1.0)
        assert dz <= z_tol


def test_the_benchmark_counts_decompositions_and_steps(capsys):
    """counted_decompositions counts K x K eigh and SVD calls only (known calls); bench_rebalance at a small K
    reports a certified path, its L-BFGS steps split at the middle lambda."""
    with rebalance_benchmark.counted_decompositions(30) as counts:
        A = np.eye(30)
        np.linalg.svd(A), np.linalg.svd(A, compute_uv=False), np.linalg.eigh(A), scipy.linalg.eigh(A)
        np.linalg.svd(np.eye(29)), scipy.linalg.eigh(np.eye(5))
    assert counts == {"eigh": 2, "svd": 2} and np.linalg.svd.__module__.startswith("numpy")
    r = rebalance_benchmark.bench_rebalance(K=30, n_max=200)
    assert r["path_certified"] == 20 and r["cold_decompositions"] <= 50
    assert 0 < r["path_steps_upper"] < r["path_steps"] and r["path_over_cold"] > 0
    assert "20 of 20 certified" in capsys.readouterr().out
