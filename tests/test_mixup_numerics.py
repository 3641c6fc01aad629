"""Mixup numerics: undefined summaries are None (not rounding noise), and the direct optimiser
reaches a tighter independent minimisation with the focal loss at small beta."""
import numpy as np
import scipy.optimize
import torch

import losses
import mixup_geometry


def test_undefined_quantities_are_none():
    # MSE optimum: every same-class angle is 0 exactly, so its rank correlation is undefined
    s = mixup_geometry.mixup_geometry_summary(mixup_geometry.ufm_mixup_snapshot("mse", 10, 0.01, n_mix=9))
    assert s["same_angle_vs_abs_mix_spearman"] is None and s["same_angle_deg_mean"] < 1e-10
    # all-zero features: relative spread and residuals are undefined
    snap = mixup_geometry.ufm_mixup_snapshot("cross_entropy", 10, 0.01, n_mix=5)
    snap["features"] = np.zeros_like(snap["features"])
    s = mixup_geometry.mixup_geometry_summary(snap)
    for k in ("same_spread", "diff_convex_residual_mean", "diff_convex_residual_binned"):
        assert s[k] is None, k


def test_direct_optimiser_focal_small_beta_matches_per_sample_minimisation():
    K, beta = 10, 1e-4
    gamma = beta * K / (K - 1)
    W = mixup_geometry.simplex_etf(K, K)
    y_a, y_b, mix = mixup_geometry.ufm_mixup_grid([0, 1, 2], K, 3)
    def fl(z, y):
        return losses.focal_loss(z, y, 2.0)
    H = mixup_geometry.ufm_direct(fl, y_a, y_b, mix, K, K, gamma, W=W)[0]
    Wt = torch.tensor(W)

    def fg(h, i):  # one sample's objective, written out, minimised on its own by scipy
        ht = torch.tensor(h, requires_grad=True)
        z = (Wt @ ht)[None]
        f = mix[i] * fl(z, torch.tensor([y_a[i]]))[0] + (1 - mix[i]) * fl(z, torch.tensor([y_b[i]]))[0] \
            + gamma / 2 * ht.pow(2).sum()
        f.backward()
        return f.item(), ht.grad.numpy().copy()
    worst = 0.0
    for i in range(len(mix)):
        r = scipy.optimize.minimize(fg, H[i], args=(i,), jac=True, method="L-BFGS-B",
                                    options=dict(maxiter=100000, ftol=0, gtol=1e-14, maxcor=30))
        worst = max(worst, np.linalg.norm(r.x - H[i]) / np.linalg.norm(r.x))
    # before the scale-free stopping rule: 6.6e-4 (stopped by an absolute tolerance)
    assert worst < 3e-4
