"""The fast solver at small lam sqrt(N) and large lam_b (ISSUE_10 "The fast solver certifies what
it has not reached"): its certified answers checked against an independent direct minimisation
written here (scipy BFGS over the answers that have the layout's symmetry), never against the
code under test. Layout [1000]*5 + [500]*5 is opt_main's `--cluster_s 5 5 --sample_s 1000 500`."""
import numpy as np
import pytest
import scipy.optimize

import ana_utils
import ufm_certificate
import ufm_program

N = [1000] * 5 + [500] * 5


def objective(Z, b, n, lam, lam_b):
    """The objective written out with the CE as log1p(sum_{j != k} exp(z_j - z_k)) (no cancellation)."""
    n = np.asarray(n, float)
    V = Z + b[:, None]
    D = V - np.diag(V)[None, :]
    np.fill_diagonal(D, -np.inf)
    ce = np.log1p(np.exp(D).sum(axis=0))
    return float(n @ ce / n.sum() + lam * np.linalg.svd(Z * np.sqrt(n), compute_uv=False).sum() + lam_b * b @ b)


def symmetric_reference(lam, lam_b):
    """Direct minimisation over the answers invariant under permuting classes of one size (the
    problem is, so by convexity one optimum is): Z = P (a_c I + B_cd J on blocks), P = I - J/K (the
    CE ignores column shifts; projecting never raises the nuclear norm, and keeps it smooth at the
    optimum), b constant per block. 8 parameters, BFGS on the objective scaled to O(1)."""
    n = np.asarray(N, float)
    g = (n == 500).astype(int)                                  # block of each class
    P = np.eye(10) - 1.0 / 10

    def unpack(t):
        Z = P @ (np.diag(t[:2][g]) + t[2:6].reshape(2, 2)[g][:, g])
        return Z, t[6:8][g]

    t = np.array([10.0, 10.0, 0, 0, 0, 0, 0, 0])
    scale = objective(*unpack(t), N, lam, lam_b)
    for _ in range(3):
        res = scipy.optimize.minimize(lambda t: objective(*unpack(t), N, lam, lam_b) / scale, t, method="BFGS",
                                      options=dict(gtol=1e-12, maxiter=20000))
        t, scale = res.x, res.fun * scale
    return unpack(t)


@pytest.mark.parametrize("lam_sqrt_n, lam_b", [(1e-10, 0.01), (1e-6, 0.01), (1e-10, 10.0), (1e-3, 10.0)])
def test_fast_solver_is_accurate_at_small_lambda_and_large_lambda_b(lam_sqrt_n, lam_b):
    lam = lam_sqrt_n / np.sqrt(sum(N))
    fast = ufm_program.solve_ufm_fast(N, lam, lam_b)
    assert fast["status"] == "optimal" and fast["accuracy"] <= 1e-9
    Zr, br = symmetric_reference(lam, lam_b)
    f_fast, f_ref = objective(fast["Z"], fast["b"], N, lam, lam_b), objective(Zr, br, N, lam, lam_b)
    assert f_fast == pytest.approx(fast["objective"], rel=1e-12)
    assert np.linalg.norm(fast["Z"] - Zr) <= 1e-5 * np.linalg.norm(Zr)
    assert f_fast <= f_ref * (1 + 1e-7)                          # within 1e-7 of the reference ...
    assert f_ref >= f_fast * (1 - fast["accuracy"]) * (1 - 1e-13)  # ... which cannot beat the certificate
    if lam_sqrt_n == 1e-10 and lam_b == 0.01:                    # the reproducer's cosines
        cos = ana_utils.cluster_cosines(fast["Z"], [list(range(5)), list(range(5, 10))])
        ref = ana_utils.cluster_cosines(Zr, [list(range(5)), list(range(5, 10))])
        for c, r in [(cos["within"], ref["within"]), ([cos["across"]], [ref["across"]])]:
            assert np.allclose(c, r, atol=1e-6)
        assert cos["within"][0] == pytest.approx(-0.123, abs=1e-3) and cos["across"] == pytest.approx(-0.112, abs=1e-3)


def test_an_answer_off_in_z_is_not_certified_at_small_lambda():
    """At lam sqrt(N) = 1e-10 an answer 3e-4 off (relative, in Z) is refused at 1e-7; the bound
    stays above its true suboptimality against the reference."""
    lam = 1e-10 / np.sqrt(sum(N))
    Zr, br = symmetric_reference(lam, 0.01)
    E = np.random.default_rng(0).normal(size=Zr.shape)
    E -= E.mean(0)
    Z = Zr + 3e-4 * np.linalg.norm(Zr) * E / np.linalg.norm(E)
    cert = ufm_certificate.ufm_certificate(Z, br, N, lam, 0.01)
    f, f_ref = objective(Z, br, N, lam, 0.01), objective(Zr, br, N, lam, 0.01)
    assert cert["accuracy"] > 1e-7
    assert cert["accuracy"] >= (f - f_ref) / f - 1e-12


def test_class_coordinates_reproduce_the_written_out_objective():
    """The solver's reduced coordinates (classes of one size share their numbers) give the objective
    of the full K x K program: the factored value at any point bounds the written-out objective of
    its (Z, b) from above, with equality for balanced factors; and a 3-size layout at K = 60 is solved
    and certified, its objective equal to the written-out one."""
    n = np.array([300] * 20 + [200] * 30 + [50] * 10, float)
    lam, lam_b = 0.5 / np.sqrt(n.sum()), 0.1
    fg, _, start, point = ufm_program._class_coordinates(n, lam * np.sqrt(n.sum()), lam_b)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 60))
    x = start(X, rng.normal(size=60), 0.0, 0.0)
    Xp, b = point(x)
    q = np.sqrt(n / n.sum())
    assert fg(x)[0] == pytest.approx(objective(Xp / q, b, n, lam, lam_b), rel=1e-12)
    y = x + 0.1 * rng.normal(size=x.size)                     # unbalanced factors: an upper bound
    assert fg(y)[0] >= objective(point(y)[0] / q, point(y)[1], n, lam, lam_b) * (1 - 1e-12)
    fast = ufm_program.solve_ufm_fast(n, lam, lam_b)
    assert fast["status"] == "optimal" and fast["accuracy"] <= 1e-9
    assert fast["objective"] == pytest.approx(objective(fast["Z"], fast["b"], n, lam, lam_b), rel=1e-12)


def test_all_distinct_sizes_are_certified_and_agree_with_clarabel():
    """All sizes distinct (the class coordinates save nothing; the last digits take the warm start
    hundreds of L-BFGS steps): certified at K = 80, and at K = 16 in agreement with tight Clarabel."""
    sizes = np.random.default_rng(0).choice(np.arange(50, 1000), size=80, replace=False)
    for n in (sizes, sizes[:16]):
        lam = 0.9 * 10 / n.sum()
        fast = ufm_program.solve_ufm_fast(n, lam, 0.01)
        assert fast["status"] == "optimal" and fast["accuracy"] <= 1e-9
        f_fast = objective(fast["Z"], fast["b"], n, lam, 0.01)
        assert f_fast == pytest.approx(fast["objective"], rel=1e-12)
    ref = ufm_program.solve_ufm_cvxpy(n, lam, 0.01)
    f_ref = objective(ref["Z"], ref["b"], n, lam, 0.01)
    assert f_fast <= f_ref * (1 + 1e-9)                           # no worse than Clarabel ...
    assert f_ref >= f_fast * (1 - fast["accuracy"]) * (1 - 1e-13)  # ... which cannot beat the certificate
    assert np.linalg.norm(fast["Z"] - ref["Z"]) <= 1e-6 * np.linalg.norm(ref["Z"])
