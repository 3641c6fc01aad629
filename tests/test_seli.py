"""SELI (theory.md section 9): the hard-margin program's solution I - 11^T/K for any class sizes, by an
independent Clarabel solve and by its exact dual certificate; SELI's Grams; distances of CE optima."""
import warnings

import numpy as np
import pytest

import seli
import ufm_program

PROFILES = [[500] * 5 + [100] * 5, [5000, 2000, 800, 300, 120, 50, 20], list(range(50, 770, 60))]


@pytest.mark.parametrize("n", PROFILES)
def test_clarabel_solves_the_hard_margin_program_to_the_simplex_encoding(n):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # Clarabel reports 'optimal_inaccurate' at these tolerances
        sol = seli.solve_seli_cvxpy(n)
    # measured: max |entry error| 0.8e-9 .. 1.9e-9, objective within 3e-10 of ||(I - J/K) D^{1/2}||_*
    assert np.abs(sol["Z_centred"] - seli.seli_logits(len(n))).max() <= 1e-7
    assert sol["objective"] == pytest.approx(seli.seli_certificate(n)["objective"], rel=1e-8)


@pytest.mark.parametrize("K", [3, 40, 400])
def test_the_dual_certificate_holds_for_random_sizes(K):
    n = np.exp(np.random.default_rng(K).uniform(0, 7, K))
    cert = seli.seli_certificate(n)
    assert cert["certified"] and cert["min_alpha"] > 0
    assert cert["dual"] == pytest.approx(cert["objective"], rel=1e-12)


def test_seli_grams_and_the_etf():
    gw, gh = seli.seli_grams([7] * 4)                       # balanced: both Grams are the simplex ETF's
    P = seli.seli_logits(4)
    assert seli.cosine_distance(gw, P) < 1e-14 and seli.cosine_distance(gh, P) < 1e-14
    n = [500] * 5 + [100] * 5
    gw, gh = seli.seli_grams(n)
    assert seli.cosine_distance(gw, seli.seli_logits(10)) > 0.05               # imbalanced: SELI is not the ETF
    far, near = (seli.geometry_distances(ufm_program.solve_ufm_fast(n, L / np.sqrt(3000), 0.01)["Z"], n)
                 for L in (1e-2, 1e-8))
    # measured: Z 8.2e-3 -> 1.2e-3 to SELI, classifier Gram to the ETF 0.086 -> 0.068
    assert near["seli"]["Z"] < far["seli"]["Z"] < 2e-2 and near["seli"]["gram_W"] < far["seli"]["gram_W"]
    assert near["etf"]["gram_W"] > 0.05
