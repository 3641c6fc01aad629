"""The per-sample losses of the mixup study by name (cross_entropy, mse, label_smoothing, focal),
written with tensor methods only: this module imports no torch, so the commands that only need a
loss's name or its free-feature optimum start without loading it."""
from utils import UserError


def cross_entropy_loss(logits, target):
    """Per-sample cross-entropy CE(z, y) = -z_y + logsumexp(z)."""
    return -logits.log_softmax(1).gather(1, target[:, None])[:, 0]


def mse_loss(logits, target, scale=1.0):
    """Per-sample squared error to a scaled one-hot target: 0.5 * ||z - scale e_y||^2."""
    onehot = logits.new_zeros(logits.shape).scatter_(1, target[:, None], 1.0)
    return 0.5 * (logits - scale * onehot).pow(2).sum(1)


def label_smoothing_loss(logits, target, eps=0.1):
    """Per-sample CE against (1 - eps) e_y + eps/K."""
    logp = logits.log_softmax(1)
    return -(1 - eps) * logp.gather(1, target[:, None])[:, 0] - eps * logp.mean(1)


def focal_loss(logits, target, gamma=2.0):
    """Per-sample focal loss -(1 - p_y)^gamma log p_y (gamma = 0 is cross-entropy)."""
    logp_y = logits.log_softmax(1).gather(1, target[:, None])[:, 0]
    return -(1 - logp_y.exp()).pow(gamma) * logp_y


LOSSES = {"cross_entropy": cross_entropy_loss, "mse": mse_loss,
          "label_smoothing": label_smoothing_loss, "focal": focal_loss}


def get_loss(name, mse_scale=1.0, smoothing=0.1, focal_gamma=2.0):
    """The per-sample loss called `name` with its parameter bound; checks the parameter."""
    if name not in LOSSES:
        raise UserError(f"loss {name!r}: unknown; allowed are {', '.join(LOSSES)}")
    if name == "mse":
        if not mse_scale > 0:
            raise UserError(f"mse_scale {mse_scale}: must be > 0")
        return lambda z, y: mse_loss(z, y, mse_scale)
    if name == "label_smoothing":
        if not 0 <= smoothing < 1:
            raise UserError(f"smoothing {smoothing}: must be in [0, 1)")
        return lambda z, y: label_smoothing_loss(z, y, smoothing)
    if name == "focal":
        if not focal_gamma >= 0:
            raise UserError(f"focal_gamma {focal_gamma}: must be >= 0")
        return lambda z, y: focal_loss(z, y, focal_gamma)
    return cross_entropy_loss
