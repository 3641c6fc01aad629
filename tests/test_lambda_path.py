"""The lambda path (rebalance_program.lambda_path): its warm start extrapolated from the neighbours' answers,
and its warm-started answers against cold solves at the same lambdas, every one certified."""
import numpy as np
import pytest
import scipy.linalg

import rebalance_benchmark
import rebalance_program as rp
import ufm_program
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


def test_the_warm_scaling_divides_each_factor_by_its_partners_size():
    """At balanced factors (as start gives them) the factors' columns are X's singular components: MH's row i
    has squared norm sigma_i, so MW's column i and MH's row i are scaled by 1 / sqrt(sigma_i + delta sigma_max),
    the within-group factors by 1 / sqrt(|s_a| + delta top), b by 1 / sqrt(top) (top: the largest of both)."""
    n = np.asarray(utils.profile_sizes("exp", 100, 30, 200), float)
    loss = rp.loss_vectors("cross_entropy", n)
    ans = rp.solve_rebalance_fast(n, loss, np.sqrt(n.min()) / n.sum(), 0.01)
    _, vec, q, _, L, X = rp._scaled(n, loss, np.sqrt(n.min()) / n.sum(), 0.01, ans["Z"])
    cc = ufm_program._ClassCoordinates(n, L, 0.01, vec)
    x = cc.start(X, ans["b"], 0.0, 1e-9)
    p = cc.scaling(x, 0.1)
    s, M = cc.parts(X)
    sig = np.linalg.svd(M, compute_uv=False)
    sW, sH, MW, MH, bx = cc.split(p)
    top = max(sig[0], np.abs(s).max())            # values below 1e-9 top are floored there (start): rtol 1e-7
    assert np.allclose(np.sort(1.0 / MW[0] ** 2), np.sort(sig + 0.1 * top), rtol=1e-7, atol=0)
    assert np.array_equal(MW[0], MW[-1]) and np.array_equal(MH[:, 0], MH[:, -1]) and np.array_equal(MW[0], MH[:, 0])
    assert np.allclose(1.0 / sW ** 2, np.abs(s) + 0.1 * top, rtol=1e-7, atol=0) and np.array_equal(sW, sH)
    assert np.allclose(bx, 1.0 / np.sqrt(top), rtol=1e-12, atol=0)


def test_a_warm_solve_takes_fewer_steps_scaled(monkeypatch):
    """Warm from 1.6 lambda_mid's answer at 1.7 lambda_mid (exp profile, K = 100, groups collapsing there), L-BFGS
    in the scaled coordinates needs at most 3/4 of the steps it needs unscaled (measured 40 against 80 with 1 and
    2 threads; at K = 200: 50 against 110), both certified."""
    n = utils.profile_sizes("exp", 100, 100, 500)
    loss = rp.loss_vectors("cross_entropy", n)
    mid = np.sqrt(min(n)) / sum(n)
    prev = rp.solve_rebalance_fast(n, loss, 1.6 * mid, 0.01)
    scaled = rp.solve_rebalance_fast(n, loss, 1.7 * mid, 0.01, Z0=prev["Z"], b0=prev["b"])
    monkeypatch.setattr(ufm_program._ClassCoordinates, "scaling", lambda self, x, delta: np.ones_like(x))
    plain = rp.solve_rebalance_fast(n, loss, 1.7 * mid, 0.01, Z0=prev["Z"], b0=prev["b"])
    assert scaled["status"] == plain["status"] == "optimal"
    assert scaled["bm_iterations"] <= 0.75 * plain["bm_iterations"]
