"""minority_n's threshold under each re-balancing loss: the majority size n_A* at which the minority's
collapse threshold lambda*(n_A) crosses the figure's lambda (rebalance_program.size_threshold), checked against
the certified solver's verdicts at 0.98 n_A* and 1.02 n_A*."""
import numpy as np
import pytest

import ana_utils
import rebalance_program as rp
import theory_formulas

K_A, N_B, LAM, LAM_B = 5, 100, 0.005, 0.01
MINORITY = list(range(K_A, 2 * K_A))


def _layout(name, over=None):
    def layout(n_A):
        loss = rp.loss_vectors(name, [n_A] * K_A + [N_B] * K_A, oversample=over)
        return loss["sizes"], loss
    return layout


def test_cross_entropy_gives_the_closed_form():
    """theory.md section 2: n_A* = (sqrt(n_B)/lambda - k_B n_B) / k_A = 300 here."""
    (root,) = rp.size_threshold(_layout("cross_entropy"), MINORITY, LAM, LAM_B, N_B, 40 * N_B)
    assert root == pytest.approx(theory_formulas.two_cluster_nA_star(LAM, K_A, K_A, N_B), rel=1e-10)
    assert root == pytest.approx(300.0, rel=1e-10)


def test_no_crossing_in_the_range_is_an_empty_list():
    assert rp.size_threshold(_layout("cross_entropy"), MINORITY, LAM, LAM_B, 400, 4000) == []


@pytest.mark.parametrize("name", rp.LOSS_NAMES + ("oversample",))
def test_size_threshold_agrees_with_the_certified_solver(name):
    """Measured n_A*: 300 (cross-entropy, logit-adjusted), 553.68 (class-balanced), 304.99 (LDAM), 236.69
    (vector scaling); the minority oversampled x3: 392.8. Below n_A* the minority is spread (spread /
    max(||Z||, 1) >= 5.5e-2 measured at 1 and 2 threads), above it collapsed (<= 4.7e-16)."""
    over = [1] * K_A + [3] * K_A if name == "oversample" else None
    layout = _layout("cross_entropy" if name == "oversample" else name, over)
    (root,) = rp.size_threshold(layout, MINORITY, LAM, LAM_B, N_B, 40 * N_B)
    for factor, collapsed in ((0.98, False), (1.02, True)):
        n, loss = layout(factor * root)
        sol = rp.solve_rebalance_fast(n, loss, LAM, LAM_B, tol=1e-11)
        assert sol["status"] == "optimal"
        spread = ana_utils.minority_spread(sol["Z"], MINORITY)
        assert (spread <= 1e-9 * max(np.linalg.norm(sol["Z"]), 1.0)) == collapsed, (factor, spread)
