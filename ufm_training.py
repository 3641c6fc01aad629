"""The UFM's own training: full-batch L-BFGS in float64 on balanced variables, its objective and stopping tests."""
import math

import torch
import torch.nn.functional as F

from networks import is_ufm
from rebalance_losses import feature_weights, rebalanced_cross_entropy

# The UFM's L-BFGS (in float64) stops when ||grad f|| * ||theta|| <= UFM_REL_GRAD_TOL * |f| (theta:
# all trained parameters): a relative change delta of the parameters then moves f by at most
# delta * 1e-5 of itself, whatever N, K or lambda; or when UFM_CHUNK iterations lower f by less
# than UFM_REL_DECREASE_TOL * |f| (at N = 41,000 and small lambda the within-class spread of the
# features decays so slowly that the gradient test would take minutes more; Z is settled by then).
# Z is then within about 1e-4 of the convex program's. (In float32, rounding stalls L-BFGS near 1e-3
# on the gradient measure.)
UFM_REL_GRAD_TOL = 1e-5


UFM_REL_DECREASE_TOL = 1e-9


UFM_CHUNK = 10  # L-BFGS iterations between two stop tests (an epoch is UFM_CHUNKS_PER_EPOCH chunks)


UFM_CHUNKS_PER_EPOCH = 5


UFM_HISTORY = 10  # L-BFGS pairs kept (50 for the other L-BFGS runs)


class BalancedUFM(torch.nn.Module):
    """The variables L-BFGS moves for a UFM: U = H / s with s = sqrt(lam_W / lam_H), and the UFM's
    own classifier. At the optimum lam_W ||W||^2 = lam_H ||H||^2, so in (U, W) the curvature of
    the features and of the classifier are alike; in (H, W) they differ by lam_W / lam_H (100 in
    the scripts), and L-BFGS needed about 7x more iterations at small lambda. Same objective,
    same random start."""

    def __init__(self, model, cfg):
        super().__init__()
        self.scale = math.sqrt(cfg["lam_w"] / cfg["lam_h"]) if cfg["lam_w"] > 0 and cfg["lam_h"] > 0 else 1.0
        self.U = torch.nn.Parameter(model.H.detach() / self.scale)
        self.classifier = model.classifier

    @property
    def H(self):
        return self.scale * self.U

    def write_back(self, model):
        """Put the features into the UFM itself (before it is evaluated or saved)."""
        with torch.no_grad():
            model.H.copy_(self.H)


def ufm_full_batch_objective(model, y, cfg, warm_weight):
    """regularized_objective of a UFM (or its BalancedUFM) on all its samples at once, with the
    logits laid out K x N (classes along cross_entropy's middle dimension): the same value, about
    4x faster than N rows of width K. lam_H * N * mean ||h||^2 is lam_H ||H||_F^2."""
    H, W, b = model.H, model.classifier.weight, model.classifier.bias
    logits_t = W @ H.T if b is None else torch.addmm(b[:, None], W, H.T)
    spec = cfg.get("loss")
    ce = F.cross_entropy(logits_t[None], y[None]) if spec is None else rebalanced_cross_entropy(logits_t.T, y, spec, b)
    reg_w = cfg["lam_w"] * W.pow(2).sum()
    reg_h = cfg["lam_h"] * (H.pow(2).sum() if spec is None else (feature_weights(y, spec, H) * H.pow(2).sum(1)).sum())
    reg_b = cfg["lam_b"] * b.pow(2).sum() if b is not None else ce.new_zeros(())
    return ce + warm_weight * (reg_w + reg_h + reg_b), dict(ce=ce, reg_w=reg_w, reg_h=reg_h, reg_b=reg_b,
                                                           logits_t=logits_t)


def ufm_lbfgs_epoch(model, opt, y, cfg, warm_weight):
    """One epoch of the UFM's full-batch L-BFGS on `model`, its BalancedUFM: up to
    UFM_CHUNKS_PER_EPOCH * UFM_CHUNK iterations, stopping early at the relative-gradient or
    relative-decrease test (UFM_REL_GRAD_TOL; theta = the balanced variables U, W, b). Returns (the
    epoch's terms as floats, converged). The test's own evaluation is handed to L-BFGS as its first
    one, so testing costs no extra gradient."""
    trained = [p for p in model.parameters() if p.requires_grad]
    cached = {}

    def evaluate_point():
        opt.zero_grad(set_to_none=True)
        loss, _ = ufm_full_batch_objective(model, y, cfg, warm_weight)
        loss.backward()
        return loss.detach()

    def closure():  # L-BFGS's first call of a step is the point just tested: reuse it
        return cached.pop("loss") if "loss" in cached else evaluate_point()

    converged, previous = False, None
    for _ in range(UFM_CHUNKS_PER_EPOCH):
        loss = evaluate_point()
        with torch.no_grad():
            grad = torch.sqrt(sum(p.grad.pow(2).sum() for p in trained))
            size = torch.sqrt(sum(p.pow(2).sum() for p in trained))
        stalled = previous is not None and previous - loss <= UFM_REL_DECREASE_TOL * loss.abs()
        if not torch.isfinite(loss) or grad * size <= UFM_REL_GRAD_TOL * loss.abs() or stalled:
            converged = bool(torch.isfinite(loss))
            break
        previous = loss
        cached["loss"] = loss
        opt.step(closure)
        cached.clear()
    with torch.no_grad():
        loss, terms = ufm_full_batch_objective(model, y, cfg, warm_weight)
        acc = (terms.pop("logits_t").argmax(0) == y).float().mean()
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "acc": acc.item()}, converged


def is_ufm_lbfgs(cfg, num_train, objective):
    """Whether train_run takes the UFM's own full-batch L-BFGS loop (ufm_lbfgs_epoch)."""
    return (is_ufm(cfg["network"]) and cfg["optimizer"].lower() == "lbfgs" and objective is None
            and cfg["batch_size"] >= num_train)
