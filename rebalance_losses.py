"""The re-balanced training losses (theory.md section 9), the training side of rebalance_program: the
weighted, scaled, offset and margin cross-entropy of a train configuration's 'loss' entry, and the
per-sample feature-penalty weights that oversampling gives."""
import torch
import torch.nn.functional as F


def _vector(spec, key, like):
    return torch.as_tensor(spec[key], dtype=like.dtype, device=like.device)


def rebalanced_cross_entropy(logits, y, spec, b=None):
    """Mean over the batch of w_y CE(s * (logits - b) + b + o - mu_y e_y, y): the scale acts on W h, not on
    the bias b (as in the convex program); spec None is the plain cross-entropy."""
    if spec is None:
        return F.cross_entropy(logits, y)
    w, s, o, mu = (_vector(spec, k, logits) for k in ("weight", "scale", "offset", "margin"))
    v = s * (logits if b is None else logits - b) + o + (0.0 if b is None else b)
    v = v - mu[y][:, None] * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return (w[y] * F.cross_entropy(v, y, reduction="none")).mean()


def feature_weights(y, spec, like):
    """Per-sample weights of the feature penalty (oversampling's f_y; ones without a spec)."""
    if spec is None or "feature_weight" not in spec:
        return torch.ones_like(y, dtype=like.dtype)
    return _vector(spec, "feature_weight", like)[y]
