"""nc_modern and nc_stream's NCC rule: every post-2022 metric on cases with a known answer (a simplex ETF
with and without within-class noise, a collapsed and an uncollapsed minority)."""
import math

import numpy as np
import pytest

import nc_modern
import nc_stream
from utils import UserError


def _etf(K, d, seed=0):
    """K unit rows forming a simplex ETF in R^d (rows sum to zero, pairwise cosine -1/(K-1))."""
    U, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, K)))
    P = np.eye(K) - 1.0 / K
    return (U @ P).T / np.sqrt((K - 1) / K)


def _noisy_samples(means, sigma, offset):
    """Per class the 2d samples h_k + offset +- sigma e_j: class mean exactly h_k + offset, Var_k = sigma^2."""
    K, d = means.shape
    E = np.vstack([np.eye(d), -np.eye(d)]) * sigma
    H = np.vstack([m + offset + E for m in means])
    return H, np.repeat(np.arange(K), 2 * d)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_simplex_etf_known_answers(sigma):
    K, d = 5, 7
    M = _etf(K, d)
    H, y = _noisy_samples(M, sigma, offset=2.0)        # means off the origin: centring must remove it
    W = 3.0 * M                                        # self-dual classifier, equinorm and equiangular
    b = 0.7 - W @ np.full(d, 2.0)                      # the bias undoes the offset: classifier = NCC rule
    got = nc_stream.nc_modern_stream(nc_stream.array_batches(H, y, 9), W, b)
    dist_sq = 2 * K / (K - 1)                          # squared distance between unit ETF vertices
    assert got["cdnv"] == pytest.approx(sigma**2 / dist_sq, rel=1e-12, abs=1e-30)
    assert got["uniformity_log"] == pytest.approx(-0.5 * math.log(dist_sq), rel=1e-12)
    assert got["uniformity_riesz"] == pytest.approx(dist_sq ** (-(d - 2) / 2), rel=1e-12)
    for k in ("uniformity_log_var", "uniformity_riesz_var", "uniform_duality", "self_duality_distance",
              "w_equinorm", "w_equiangle", "w_angle_std", "w_etf_distance"):
        assert abs(got[k]) < 1e-12, k
    assert got["clf_ncc_agreement"] == 1.0


def test_imbalanced_centre_is_the_sample_weighted_mean():
    """Sizes 4, 2, 1 with means u_k * 4 / n_k (u_k at 120 degrees): h_G = 0 and the centred directions form
    an exact ETF; centring on the unweighted mean of means would not."""
    u = np.array([[np.cos(a), np.sin(a)] for a in 2 * np.pi * np.arange(3) / 3])
    counts = np.array([4, 2, 1])
    means = u * (4 / counts)[:, None] + np.array([1.0, -2.0])
    h_G = nc_modern.global_mean(means, counts)
    assert np.allclose(h_G, [1.0, -2.0], atol=1e-15)
    mean, var = nc_modern.hyperspherical_uniformity(means, h_G, "log")
    assert mean == pytest.approx(-math.log(math.sqrt(3)), rel=1e-13) and var < 1e-28
    assert nc_modern.hyperspherical_uniformity(means, means.mean(0), "log")[1] > 1e-3


def test_uncollapsed_minority_cross_polytope():
    """Sizes 2, 2, 1, 1 with means +-e1, +-e2 (in R^3, so Riesz s = 1): pair distances 2 (twice) and
    sqrt 2 (four times)."""
    means = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float)
    counts = [2, 2, 1, 1]
    out = nc_modern.modern_metrics(means, means, counts, np.zeros(4))
    log2 = math.log(2)
    assert out["uniformity_log"] == pytest.approx(-2 / 3 * log2, rel=1e-13)
    assert out["uniformity_log_var"] == pytest.approx(log2**2 / 18, rel=1e-12)
    riesz = np.array([0.5, 0.5] + [2 ** -0.5] * 4)
    assert out["uniformity_riesz"] == pytest.approx(riesz.mean(), rel=1e-13)
    assert out["uniformity_riesz_var"] == pytest.approx(riesz.var(), rel=1e-12)
    assert out["cdnv"] == 0.0 and out["uniform_duality"] < 1e-30


def test_collapsed_minority():
    """Minority means coincide (e2 for classes 2 and 3, sizes 2, 2, 1, 1): the log and Riesz energies are
    infinite and their variance undefined; CDNV is inf with within-class noise, 0/0 = NaN without; the
    classifier rows e1, -e1, e2, e2 have equiangularity 5/9 and a known distance to the ETF."""
    means = np.array([[1, 0], [-1, 0], [0, 1], [0, 1]], dtype=float)
    W = means.copy()
    out = nc_modern.modern_metrics(W, means, [2, 2, 1, 1], np.full(4, 0.01))
    assert out["uniformity_log"] == math.inf and math.isnan(out["uniformity_log_var"])
    assert out["cdnv"] == math.inf
    assert math.isnan(nc_modern.cdnv(means, np.zeros(4)))
    assert out["w_equinorm"] == 0.0 and out["w_equiangle"] == pytest.approx(5 / 9, rel=1e-14)
    a, e_d, e_o = 1 / (2 * math.sqrt(2)), math.sqrt(3) / 4, -1 / (4 * math.sqrt(3))
    etf = math.sqrt(4 * (a - e_d) ** 2 + 2 * (-a - e_o) ** 2 + 2 * (a - e_o) ** 2 + 8 * e_o**2)
    assert out["w_etf_distance"] == pytest.approx(etf, rel=1e-13)
    # uniform duality: cos(w_k, h_k - h_G) with h_G = e2/3 is 3/sqrt(10) (twice) and 1 (twice)
    cos = np.array([3 / math.sqrt(10)] * 2 + [1.0] * 2)
    assert out["uniform_duality"] == pytest.approx(cos.var(), rel=1e-12)


def test_empty_class_and_bad_kernel():
    out = nc_modern.modern_metrics(np.eye(3), np.eye(3), [1, 0, 2], np.zeros(3))
    assert math.isnan(out["cdnv"]) and out["w_equinorm"] == 0.0
    with pytest.raises(UserError, match="kernel: must be one of log, riesz"):
        nc_modern.kernel_values(np.eye(3), 0.0, "gauss")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ncc_agreement_keeps_the_bias(batch_size):
    """1-D, means -1 and +1, W = [[-1], [1]], b = [0.5, 0]: the classifier says class 0 below h = 0.25, the
    NCC rule below 0; at h = 0.1 and 0.2 they disagree. A bias-free decision would agree everywhere."""
    H, y = np.array([[-2.0], [0.1], [0.2], [1.0]]), np.array([0, 1, 1, 1])
    means, W = np.array([[-1.0], [1.0]]), np.array([[-1.0], [1.0]])
    batches = nc_stream.array_batches(H, y, batch_size)
    got = nc_stream.ncc_stream(batches, means, W, np.array([0.5, 0.0]))
    assert got == {"ncc_acc": 1.0, "clf_ncc_agreement": 0.5}
    unweighted = nc_stream.ncc_stream(batches, means, W, np.array([0.5, 0.0]), weighted=False)
    assert unweighted["clf_ncc_agreement"] == pytest.approx((1.0 + 1 / 3) / 2, rel=1e-15)
    assert nc_stream.ncc_stream(batches, means, W)["clf_ncc_agreement"] == 1.0
    assert math.isnan(nc_stream.ncc_stream(lambda: iter([]), means)["ncc_acc"])
