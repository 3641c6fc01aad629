"""Mixup geometry (theory.md section 5): the 2-D projection, calibration, mixed-feature
snapshots of a network, their geometry summary, and the free-feature (UFM) optimum of a mixup loss."""
import numpy as np
import scipy.optimize

# torch and scipy.stats are imported in the functions that use them: plotting and opt_main.py,
# which import this module, never pay for them.
import losses
from utils import UserError


def simplex_etf(K, d, omega=1.0, seed=0):
    """K x d simplex ETF: rows of norm omega, summing to zero, pairwise cosine -1/(K-1), placed
    in a random (K-1)-dimensional subspace of R^d (needs d >= K - 1)."""
    if d < K - 1:
        raise UserError(f"feature dim {d}: a {K}-class simplex ETF needs at least {K - 1}")
    centred_basis = np.linalg.eigh(np.eye(K) - 1.0 / K)[1][:, 1:]          # K x (K-1), E E^T = I - J/K
    rot = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, K - 1)))[0].T  # orthonormal rows
    return omega * np.sqrt(K / (K - 1)) * centred_basis @ rot


# The 2-D layout of theory.md section 5: an exact 3-class ETF lands on an equilateral triangle
# with class k at vertex k.
_TRIANGLE = np.sqrt(2) * np.array([[0.5, -0.5, 0.0], [0.0, 0.0, np.sqrt(0.75)]]) @ (np.eye(3) - 1.0 / 3)


def mixup_projection(W, classes):
    """(P, centre) with P = A Q (2 x d): Q the polar factor of the centred classifier rows of
    the three `classes`; a feature h maps to P (h - centre)."""
    W3 = np.asarray(W, dtype=np.float64)[list(classes)]
    centre = W3.mean(0)
    U, _, Vt = np.linalg.svd(W3 - centre, full_matrices=False)
    return _TRIANGLE @ (U[:, :2] @ Vt[:2]), centre


def project(H, P, centre):
    """n x 2 projected coordinates of the rows of H."""
    return (np.asarray(H, dtype=np.float64) - centre) @ P.T


def loss_probabilities(outputs, loss="cross_entropy", mse_scale=1.0):
    """The class probabilities a loss defines on the network's outputs (theory.md section 5): the
    softmax for the losses on logits (cross_entropy, label_smoothing, focal); for mse, whose
    outputs regress mse_scale * one-hot, the outputs / mse_scale clipped to [0, 1] and renormalised
    to sum 1 (uniform where every output clips to 0)."""
    import torch
    outputs = torch.as_tensor(outputs, dtype=torch.float64)
    if loss != "mse":
        return torch.softmax(outputs, 1)
    p = (outputs / mse_scale).clamp(0.0, 1.0)
    total = p.sum(1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(1e-300), torch.full_like(p, 1.0 / p.shape[1]))


def expected_calibration_error(logits, y, n_bins=15, loss="cross_entropy", mse_scale=1.0):
    """ECE with equal-width confidence bins: sum over bins of (bin share) * |accuracy - confidence|,
    the confidence being the largest of loss_probabilities (so it means something for mse too)."""
    import torch
    conf, pred = loss_probabilities(logits, loss, mse_scale).max(1)
    correct = (pred == torch.as_tensor(y)).double()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        m = bins == k
        if m.any():
            ece += m.double().mean().item() * abs(correct[m].mean().item() - conf[m].mean().item())
    return ece


def collect_mixup_features(model, x, y, classes, n, alpha, rng, train_mode=True, batch_size=500):
    """Last-layer features of n mixed-up examples whose two parents are drawn from `classes`
    (mix ~ Beta(alpha, alpha) per example). Train mode, as in the paper, lets BatchNorm use batch
    statistics; the model's buffers and mode are restored afterwards. Returns numpy arrays
    features, logits, mix, y_a, y_b, W, b, classes, and feature_mean: the global mean of the
    clean training features (all classes, same mode), by which the geometry summary centres."""
    import torch
    pool = np.flatnonzero(np.isin(np.asarray(y), list(classes)))
    ia, ib = rng.choice(pool, n), rng.choice(pool, n)
    mix = rng.beta(alpha, alpha, size=n)
    device = next(model.parameters()).device
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train(train_mode)
    feats, logits = [], []
    with torch.no_grad():  # near-equal chunks, so batch norm never sees a batch of one
        for rows in np.array_split(np.arange(n), -(-n // batch_size)):
            mix_x = torch.as_tensor(mix[rows], dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
            xm = mix_x * x[ia[rows]] + (1 - mix_x) * x[ib[rows]]
            z, h = model(xm.to(device))
            feats.append(h.float().cpu())
            logits.append(z.float().cpu())
        feature_sum = sum(model(x[rows].to(device))[1].double().sum(0).cpu()
                          for rows in np.array_split(np.arange(len(x)), -(-len(x) // batch_size)))
    model.load_state_dict(saved)
    model.train(was_training)
    lin = model.classifier
    bias = lin.bias.detach().cpu().numpy() if lin.bias is not None else np.zeros(lin.out_features)
    return {"features": torch.cat(feats).numpy(), "logits": torch.cat(logits).numpy(),
            "mix": mix, "y_a": np.asarray(y)[ia], "y_b": np.asarray(y)[ib],
            "W": lin.weight.detach().float().cpu().numpy(), "b": bias, "classes": np.asarray(classes),
            "feature_mean": (feature_sum / len(x)).numpy()}


def _spearman(u, v):
    """Spearman rank correlation, or None where it is undefined (too few or constant values,
    constant up to rounding)."""
    if len(u) < 3 or np.ptp(u) < 1e-9 or np.ptp(v) < 1e-9:
        return None
    import scipy.stats
    return float(scipy.stats.spearmanr(u, v)[0])


def _stats(v):
    return (None, None) if len(v) == 0 else (float(np.mean(v)), float(np.median(v)))


def _same_class_angles(H, W, Hp, Wp, ya, same, classes):
    """Degrees between each same-class feature h and its class's w_c, in feature space (from
    atan2(|h x w|, h.w): exact to rounding near 0, where arccos of a cosine reads a rounding error of 1e-16
    as 1e-6 degrees, which made undefined correlations numbers) and in the 2-D projection (Hp, Wp)."""
    wa = W[ya[same]]
    hs = H[same]
    dots = (hs * wa).sum(1)
    wn2 = (wa * wa).sum(1)
    perp = np.linalg.norm(hs - (dots / np.where(wn2 > 0, wn2, 1.0))[:, None] * wa, axis=1)
    ang = np.degrees(np.arctan2(perp * np.sqrt(wn2), dots))
    vert = Wp[[classes.index(c) for c in ya[same]]]
    hp = Hp[same]
    pang = np.degrees(np.abs(np.arctan2(vert[:, 0] * hp[:, 1] - vert[:, 1] * hp[:, 0], (vert * hp).sum(1))))
    return ang, pang


def _binned_residual(H_ok, target, ya_ok, yb_ok, mix_ok):
    """The convex-combination residual of bin means (pair, tenth of mix), weighted by the bins' counts:
    noise within a class averages out. None without a bin of two features."""
    lo, hi = np.minimum(ya_ok, yb_ok), np.maximum(ya_ok, yb_ok)
    mix_lo = np.where(ya_ok == lo, mix_ok, 1 - mix_ok)
    cell = (lo * 1000 + hi) * 10 + np.minimum((mix_lo * 10).astype(int), 9)
    binned, weights = [], []
    for key in np.unique(cell):
        m = cell == key
        h_bar = H_ok[m].mean(0)
        if m.sum() >= 2 and np.linalg.norm(h_bar) > 0:
            binned.append(np.linalg.norm(h_bar - target[m].mean(0)) / (np.linalg.norm(h_bar) + 1e-30))
            weights.append(m.sum())
    return float(np.average(binned, weights=weights)) if binned else None


def _convex_residuals(H, mix, ya, yb, diff, means):
    """||h - (mix hbar_a + (1-mix) hbar_b)|| / ||h|| of the different-class pairs whose classes have a mean,
    mix strictly inside (0, 1) and h != 0, and the same residual of bin means (_binned_residual)."""
    ok = diff & np.array([a in means and b in means for a, b in zip(ya, yb)]) & (mix > 0) & (mix < 1) \
        & (np.linalg.norm(H, axis=1) > 0)
    target = mix[ok, None] * np.array([means[a] for a in ya[ok]]).reshape(-1, H.shape[1]) + \
        (1 - mix[ok, None]) * np.array([means[b] for b in yb[ok]]).reshape(-1, H.shape[1])
    resid = np.linalg.norm(H[ok] - target, axis=1) / np.linalg.norm(H[ok], axis=1)
    return resid, _binned_residual(H[ok], target, ya[ok], yb[ok], mix[ok])


def mixup_geometry_summary(snap):
    """Numbers for the mixup geometry of one snapshot (a dict as from collect_mixup_features):
    same-class angle between h and w_c (feature space and projected) and its rank correlation
    with |mix - 1/2|; rank correlation of z_c - z_c' with log(mix/(1-mix)); and the residual
    ||h - (mix hbar_c + (1-mix) hbar_c')|| / ||h|| for different-class pairs, hbar_c being the
    mean same-class mixed feature. CE and MSE differ in the residual (theory.md section 5); since a
    network that has not collapsed adds within-class noise to it, the relative within-class spread
    of the same-class features (same_spread) and the residual of (pair, mix-bin) means are reported too.
    Features are centred by the snapshot's feature_mean when it has one (a network's features carry a
    global mean, e.g. after a ReLU, that the classifier ignores); the free-feature optimum has none."""
    H = np.asarray(snap["features"], dtype=np.float64)
    Z = np.asarray(snap["logits"], dtype=np.float64)
    W = np.asarray(snap["W"], dtype=np.float64)
    mix, ya, yb = np.asarray(snap["mix"], dtype=np.float64), np.asarray(snap["y_a"]), np.asarray(snap["y_b"])
    classes = [int(c) for c in snap["classes"]]
    P, centre = mixup_projection(W, classes)
    Hp, Wp = project(H, P, centre), project(W[classes], P, centre)
    if snap.get("feature_mean") is not None:  # angles and residuals of centred features, as NC measures them
        H = H - np.asarray(snap["feature_mean"], dtype=np.float64)
    same, diff = ya == yb, ya != yb
    ang, pang = _same_class_angles(H, W, Hp, Wp, ya, same, classes)
    means = {c: H[same & (ya == c)].mean(0) for c in classes if (same & (ya == c)).any()}
    # relative quantities are undefined (left out; None when nothing is left) where the norm is 0
    spread = [np.mean(np.linalg.norm(H[same & (ya == c)] - m, axis=1)) / np.linalg.norm(m)
              for c, m in means.items() if np.linalg.norm(m) > 0]
    resid, binned = _convex_residuals(H, mix, ya, yb, diff, means)
    rows = np.flatnonzero(diff & (mix > 0) & (mix < 1))
    gap = Z[rows, ya[rows]] - Z[rows, yb[rows]]
    log_odds = np.log(mix[rows] / (1 - mix[rows]))
    same_mean, same_median = _stats(ang)
    resid_mean, resid_median = _stats(resid)
    return {"n_same": int(same.sum()), "n_diff": int(diff.sum()),
            "same_angle_deg_mean": same_mean, "same_angle_deg_median": same_median,
            "same_proj_angle_deg_mean": _stats(pang)[0],
            "same_angle_vs_abs_mix_spearman": _spearman(ang, np.abs(mix[same] - 0.5)),
            "diff_logit_gap_vs_log_odds_spearman": _spearman(gap, log_odds),
            "same_spread": float(np.mean(spread)) if spread else None,
            "diff_convex_residual_mean": resid_mean, "diff_convex_residual_median": resid_median,
            "diff_convex_residual_binned": binned}


# The free-feature (UFM) mixup optimum (theory.md section 5). A mixed example (classes c, c',
# coefficient mix) has a free feature h minimising
# mix l(Wh, c) + (1 - mix) l(Wh, c') + (gamma/2)||h||^2. With a fixed ETF classifier of row norm
# omega, h* = s W^T z with s = (K-1)/(K omega^2), and the logits z solve a problem in beta = gamma s.

def ufm_same_class_logit(K, beta):
    """Root a > 0 of beta a (1 + (K-1) e^{-aK/(K-1)}) = (K-1) e^{-aK/(K-1)}: the same-class CE
    optimum has logits (a, -a/(K-1), ...), whatever mix."""
    def e(a):
        return np.exp(-a * K / (K - 1))
    return scipy.optimize.brentq(lambda a: beta * a * (1 + (K - 1) * e(a)) - (K - 1) * e(a),
                                 0.0, (K - 1) / beta, xtol=1e-14, rtol=1e-14)


def ufm_pair_logits(mix, K, beta):
    """(a, b, t) minimising the strictly convex F(a, b) = -mix a - (1-mix) b
    + log(e^a + e^b + (K-2) e^t) + (beta/2)(a^2 + b^2 + (K-2) t^2), t = -(a+b)/(K-2):
    the different-class CE optimum (logit of c, of c', of every other class)."""
    def F(v):
        a, b = v
        t = -(a + b) / (K - 2)
        m = max(a, b, t)
        S = np.exp(a - m) + np.exp(b - m) + (K - 2) * np.exp(t - m)
        pa, pb, pt = np.exp(a - m) / S, np.exp(b - m) / S, np.exp(t - m) / S
        f = -mix * a - (1 - mix) * b + m + np.log(S) + beta / 2 * (a * a + b * b + (K - 2) * t * t)
        return f, np.array([-mix + pa - pt + beta * (a - t), -(1 - mix) + pb - pt + beta * (b - t)])
    res = scipy.optimize.minimize(F, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-12})
    a, b = res.x
    return a, b, -(a + b) / (K - 2)


def ufm_closed_form_logits(loss, K, beta, y_a, y_b, mix, mse_scale=1.0):
    """n x K optimal logits of the fixed-ETF UFM for each mixed example (closed forms of
    theory.md section 5; loss 'cross_entropy' or 'mse' with target scale mse_scale)."""
    if K < 3:
        raise UserError(f"K = {K} classes: the mixup UFM needs K >= 3")
    y_a, y_b, mix = np.asarray(y_a), np.asarray(y_b), np.asarray(mix, dtype=np.float64)
    Y = np.zeros((len(mix), K))
    Y[np.arange(len(mix)), y_a] += mix
    Y[np.arange(len(mix)), y_b] += 1 - mix
    if loss == "mse":                       # min 0.5||z - kappa y||^2 + beta/2 ||z||^2 over sum z = 0
        return mse_scale * (Y - Y.mean(1, keepdims=True)) / (1 + beta)
    if loss != "cross_entropy":
        raise UserError(f"loss {loss!r}: closed forms exist for cross_entropy and mse only; "
                              "use the direct optimiser")
    Z = np.empty((len(mix), K))
    a_same = ufm_same_class_logit(K, beta)
    for i, (c, c2, m) in enumerate(zip(y_a, y_b, mix)):
        if c == c2:
            Z[i] = -a_same / (K - 1)
            Z[i, c] = a_same
        else:
            a, b, t = ufm_pair_logits(m, K, beta)
            Z[i] = t
            Z[i, c], Z[i, c2] = a, b
    return Z


def ufm_features_from_logits(Z, W):
    """h* = s W^T z, s = (K-1)/(K omega^2), for a fixed simplex-ETF W with row norm omega."""
    K = W.shape[0]
    omega2 = float(np.mean(np.sum(np.asarray(W) ** 2, axis=1)))
    return (K - 1) / (K * omega2) * np.asarray(Z) @ np.asarray(W)


def ufm_direct(loss_fn, y_a, y_b, mix, K, d, gamma, W=None, lam_w=5e-4, steps=500, seed=0, rtol=1e-10,
               max_rounds=200):
    """Minimise mean_i [mix_i l(W h_i, a_i) + (1 - mix_i) l(W h_i, b_i)] + (gamma/2) mean_i ||h_i||^2
    over free features h_i (float64, L-BFGS) for any per-sample torch loss `loss_fn(logits, y)`.
    W fixed when given; otherwise learned too, with + (lam_w/2)||W||_F^2. Returns (H, W) numpy.

    Scale-free stopping: rounds of `steps` L-BFGS iterations until the largest gradient entry is
    <= rtol times its value at the start, or a round no longer lowers the objective (rounding
    floor); no absolute tolerance, which stopped flat losses (focal, small gamma) early."""
    import torch
    g = torch.Generator().manual_seed(seed)
    ya, yb = torch.as_tensor(np.asarray(y_a)), torch.as_tensor(np.asarray(y_b))
    mix_t = torch.as_tensor(np.asarray(mix, dtype=np.float64))
    H = (0.1 * torch.randn(len(mix_t), d, generator=g, dtype=torch.float64)).requires_grad_()
    learned = W is None
    Wt = (0.1 * torch.randn(K, d, generator=g, dtype=torch.float64) if learned
          else torch.as_tensor(np.asarray(W), dtype=torch.float64)).requires_grad_(learned)
    params = [H, Wt] if learned else [H]

    def closure():
        opt.zero_grad()
        z = H @ Wt.T
        f = (mix_t * loss_fn(z, ya) + (1 - mix_t) * loss_fn(z, yb)).mean() + gamma / 2 * H.pow(2).sum(1).mean()
        if learned:
            f = f + lam_w / 2 * Wt.pow(2).sum()
        f.backward()
        return f

    def grad_max():
        return max(float(p.grad.abs().max()) for p in params)
    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=50, line_search_fn="strong_wolfe")
    f_prev = float(closure().detach())
    g0 = grad_max()
    for _ in range(max_rounds):
        opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, tolerance_grad=0.0, tolerance_change=0.0,
                                history_size=50, line_search_fn="strong_wolfe")
        opt.step(closure)
        f = float(closure().detach())
        if grad_max() <= rtol * g0 or not f < f_prev:
            break
        f_prev = f
    return H.detach().numpy(), Wt.detach().numpy()


def ufm_mixup_grid(classes, K, n_mix=41):
    """Mixed examples to solve for: each class with itself and each pair of `classes` at n_mix
    values of mix in (0, 1); returns (y_a, y_b, mix)."""
    mixes = np.linspace(0, 1, n_mix + 2)[1:-1]
    pairs = [(c, c) for c in classes] + [(c, c2) for i, c in enumerate(classes) for c2 in classes[i + 1:]]
    y_a = np.repeat([p[0] for p in pairs], n_mix)
    y_b = np.repeat([p[1] for p in pairs], n_mix)
    return y_a, y_b, np.tile(mixes, len(pairs))


def ufm_mixup_snapshot(loss, K=10, beta=0.01, classes=(0, 1, 2), n_mix=41, loss_fn=None,
                       learned=False, lam_w=5e-4, mse_scale=1.0, seed=0):
    """The free-feature optimum over ufm_mixup_grid in the format of a network snapshot
    (features, logits, mix, y_a, y_b, W, b, classes), so it plots and summarises alike.
    Closed forms for cross_entropy/mse with the fixed ETF (row norm 1, feature dim K);
    otherwise (other losses, or learned=True) the direct optimiser with loss_fn and all K classes
    taking part when the classifier is learned. gamma = beta K/(K-1) matches beta."""
    classes = [int(c) for c in classes]
    gamma = beta * K / (K - 1)
    if learned:
        y_a, y_b, mix = ufm_mixup_grid(list(range(K)), K, n_mix)
        H, W = ufm_direct(loss_fn, y_a, y_b, mix, K, K, gamma, lam_w=lam_w, seed=seed)
        keep = np.isin(y_a, classes) & np.isin(y_b, classes)
        H, y_a, y_b, mix = H[keep], y_a[keep], y_b[keep], mix[keep]
    else:
        W = simplex_etf(K, K, seed=seed)
        y_a, y_b, mix = ufm_mixup_grid(classes, K, n_mix)
        if loss_fn is None:
            H = ufm_features_from_logits(ufm_closed_form_logits(loss, K, beta, y_a, y_b, mix, mse_scale), W)
        else:
            H = ufm_direct(loss_fn, y_a, y_b, mix, K, K, gamma, W=W, seed=seed)[0]
    return {"features": H, "logits": H @ W.T, "mix": mix, "y_a": y_a, "y_b": y_b, "W": W,
            "b": np.zeros(K), "classes": np.asarray(classes)}


MIXUP_CLOSED_FORM_LOSSES = ("cross_entropy", "mse")


def ufm_overlay(cfg, K, classes, beta=0.01):
    """The free-feature optimum for a run's loss (cfg keys loss, mse_scale, smoothing,
    focal_gamma) with a fixed ETF: closed form for CE/MSE, direct optimisation otherwise."""
    loss = cfg.get("loss", "cross_entropy")
    loss_fn = None if loss in MIXUP_CLOSED_FORM_LOSSES else losses.get_loss(
        loss, cfg.get("mse_scale", 1.0), cfg.get("smoothing", 0.1), cfg.get("focal_gamma", 2.0))
    return ufm_mixup_snapshot(loss, K, beta, classes, loss_fn=loss_fn, mse_scale=cfg.get("mse_scale", 1.0))
