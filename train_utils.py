"""Networks (including the UFM), losses, mixup, the regularised training loop and checkpoints."""

# ======================================================================================
# Networks: ResNet18, VGG, MLP, small CNN, UFM  (foundation)
# ======================================================================================


# ======================================================================================
# Networks: wide ResNet and small ViT  (mixup)
# ======================================================================================
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv twice, shortcut conv when the shape changes)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (None if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x):
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return o + skip


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis) for small images; features are the pooled
    64*width channels after the final BN-ReLU."""

    def __init__(self, num_classes, in_channels=3, depth=40, width=10):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise utils.UserError(f"--depth: a wide ResNet needs depth = 6n + 4 >= 10, got {depth}")
        if width < 1:
            raise utils.UserError(f"--width: a wide ResNet needs width >= 1, got {width}")
        n = (depth - 4) // 6
        chans = [16, 16 * width, 32 * width, 64 * width]
        layers = [nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False)]
        for stage in range(3):
            for i in range(n):
                c_in = chans[stage] if i == 0 else chans[stage + 1]
                layers.append(_WideBlock(c_in, chans[stage + 1], (1 if stage == 0 else 2) if i == 0 else 1))
        self.body = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(chans[3])
        self.feat_dim = chans[3]
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        h = F.relu(self.bn(self.body(x)))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.classifier(h), h


class SmallViT(nn.Module):
    """Vision transformer for small images: 4x4 patches, a class token, pre-norm encoder blocks;
    features are the final-LayerNorm class token."""

    def __init__(self, num_classes, in_channels=3, image_size=32, width=192, depth=6, patch=4):
        super().__init__()
        if image_size % patch:
            raise utils.UserError(f"--image_size: the ViT needs a multiple of {patch}, got {image_size}")
        if width < 1 or depth < 1:
            raise utils.UserError(f"--width/--depth: the ViT needs positive values, got {width}/{depth}")
        # heads of about 32 dimensions that divide the width
        heads = max(h for h in range(1, max(1, width // 32) + 1) if width % h == 0)
        self.patch_embed = nn.Conv2d(in_channels, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.feat_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        h = self.norm(t[:, 0])
        return self.classifier(h), h


def make_wrn(num_classes, in_channels, width=None, depth=None, image_size=32):
    """WRN-40-10 unless depth/width are given (image_size is accepted for a uniform signature)."""
    return WideResNet(num_classes, in_channels, depth=depth or 40, width=width or 10)


def make_vit(num_classes, in_channels, width=None, depth=None, image_size=32):
    """Small ViT: embedding width 192 and 6 blocks unless given."""
    return SmallViT(num_classes, in_channels, image_size=image_size, width=width or 192, depth=depth or 6)


MIXUP_NETWORKS = {"wrn": make_wrn, "vit": make_vit}


# ======================================================================================
# Losses and mixup  (mixup)
# ======================================================================================
import ana_utils


def cross_entropy_loss(logits, target):
    """Per-sample cross-entropy CE(z, y) = -z_y + logsumexp(z)."""
    return F.cross_entropy(logits, target, reduction="none")


def mse_loss(logits, target, scale=1.0):
    """Per-sample squared error to a scaled one-hot target: 0.5 * ||z - scale e_y||^2."""
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return 0.5 * (logits - scale * onehot).pow(2).sum(1)


def label_smoothing_loss(logits, target, eps=0.1):
    """Per-sample CE against (1 - eps) e_y + eps/K."""
    logp = F.log_softmax(logits, dim=1)
    return -(1 - eps) * logp.gather(1, target[:, None])[:, 0] - eps * logp.mean(1)


def focal_loss(logits, target, gamma=2.0):
    """Per-sample focal loss -(1 - p_y)^gamma log p_y (gamma = 0 is cross-entropy)."""
    logp_y = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    return -(1 - logp_y.exp()).pow(gamma) * logp_y


LOSSES = {"cross_entropy": cross_entropy_loss, "mse": mse_loss,
          "label_smoothing": label_smoothing_loss, "focal": focal_loss}


def get_loss(name, mse_scale=1.0, smoothing=0.1, focal_gamma=2.0):
    """The per-sample loss called `name` with its parameter bound; checks the parameter."""
    if name not in LOSSES:
        raise utils.UserError(f"--loss: unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    if name == "mse":
        if not mse_scale > 0:
            raise utils.UserError(f"--mse_scale: must be > 0, got {mse_scale}")
        return lambda z, y: mse_loss(z, y, mse_scale)
    if name == "label_smoothing":
        if not 0 <= smoothing < 1:
            raise utils.UserError(f"--smoothing: must be in [0, 1), got {smoothing}")
        return lambda z, y: label_smoothing_loss(z, y, smoothing)
    if name == "focal":
        if not focal_gamma >= 0:
            raise utils.UserError(f"--focal_gamma: must be >= 0, got {focal_gamma}")
        return lambda z, y: focal_loss(z, y, focal_gamma)
    return cross_entropy_loss


def mixup_loss(loss_fn, logits, y_a, y_b, lam):
    """Mean of lam * loss(y_a) + (1 - lam) * loss(y_b); lam is a scalar or one value per sample."""
    lam = torch.as_tensor(lam, dtype=logits.dtype, device=logits.device)
    return (lam * loss_fn(logits, y_a) + (1 - lam) * loss_fn(logits, y_b)).mean()


def mix_batch(x, y, alpha, rng):
    """Mixup of a batch with a random partner: returns (x_mixed, y_a, y_b, lam), lam ~ Beta(alpha,
    alpha) per sample (a float32 tensor on x's device). rng is a numpy Generator, so draws are
    reproducible on any device."""
    if not alpha > 0:
        raise utils.UserError(f"--alpha: the Beta(alpha, alpha) parameter must be > 0, got {alpha}")
    n = len(x)
    perm = torch.as_tensor(rng.permutation(n), device=x.device)
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=n), dtype=torch.float32, device=x.device)
    lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return lam_x * x + (1 - lam_x) * x[perm], y, y[perm], lam


def make_mixup_objective(loss_fn, alpha, rng, mixup=True):
    """An objective(model, xb, yb, epoch) -> (loss, terms, logits) for train_utils.train_run that
    feeds the network the mixed inputs and applies the mixed loss (or the plain loss when
    mixup is False). Logits are those of the inputs the network saw."""
    def objective(model, xb, yb, epoch):
        if mixup:
            x_in, y_a, y_b, lam = mix_batch(xb, yb, alpha, rng)
        else:
            x_in, y_a, y_b, lam = xb, yb, yb, 1.0
        logits, _ = model(x_in)
        loss = mixup_loss(loss_fn, logits, y_a, y_b, lam)
        return loss, {"loss": loss.item()}, logits
    return objective


def fixed_etf_classifier_(linear, omega=1.0, seed=0):
    """Set `linear` (K outputs, d >= K inputs) to a simplex ETF with row norms omega, zero its
    bias, and freeze both (requires_grad False, so optimizers and weight decay skip them)."""
    K, d = linear.weight.shape
    etf = ana_utils.simplex_etf(K, d, omega=omega, seed=seed)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(etf, dtype=linear.weight.dtype))
        linear.weight.requires_grad_(False)
        if linear.bias is not None:
            linear.bias.zero_()
            linear.bias.requires_grad_(False)
    return linear


# ======================================================================================
# Training loop, checkpoints, resume  (foundation)
# ======================================================================================
