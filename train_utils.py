"""Networks (including the UFM), losses, mixup, the regularised training loop and checkpoints."""
import math
import os
import sys

import numpy as np
import scipy.special
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import ana_utils
import utils
from utils import UserError

# ======================================================================================
# Networks: ResNet18, VGG, MLP, small CNN, UFM  (foundation)
# ======================================================================================
# Every network maps x to (logits, features): features are the penultimate layer, and the
# classifier is the one nn.Linear named `classifier`, so analysis code never guesses.


class FeatureClassifier(nn.Module):
    """A feature extractor `body` followed by the linear `classifier`."""

    def __init__(self, body, feat_dim, num_classes, bias=True):
        super().__init__()
        self.body, self.feat_dim = body, feat_dim
        self.classifier = nn.Linear(feat_dim, num_classes, bias=bias)

    def forward(self, x):
        h = self.body(x)
        return self.classifier(h), h


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_body(in_channels, width=64):
    """CIFAR ResNet18 (3x3 stem, no max-pool); features of size 8 * width (512 by default)."""
    layers, cin = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
    for i, stride in enumerate([1, 2, 2, 2]):
        cout = width * 2**i
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin


_VGG = {"vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
        "vgg13": [1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]}


def vgg_body(name, in_channels, width=64):
    """CIFAR VGG with batch norm; channel multipliers of `width`, features of size 8 * width."""
    layers, cin = [], in_channels
    for v in _VGG[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(cin, v * width, 3, padding=1), nn.BatchNorm2d(v * width), nn.ReLU()]
            cin = v * width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin


def mlp_body(in_features, width=256, depth=3):
    """Fully connected ReLU network on flattened images (CPU-sized)."""
    layers, cin = [nn.Flatten()], in_features
    for _ in range(depth):
        layers += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU()]
        cin = width
    return nn.Sequential(*layers), width


def cnn_body(in_channels, width=32):
    """Small three-stage CNN for CPU work; features of size 4 * width."""
    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
    layers = stage(in_channels, width) + stage(width, 2 * width) + stage(2 * width, 4 * width)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4 * width


class UFM(nn.Module):
    """Unconstrained feature model: one free feature vector per training sample.

    The input is a LongTensor of sample indices; its features are rows of the parameter H."""

    def __init__(self, num_samples, feat_dim, num_classes, init_scale=0.1):
        super().__init__()
        self.feat_dim = feat_dim
        self.H = nn.Parameter(init_scale * torch.randn(num_samples, feat_dim))
        self.classifier = nn.Linear(feat_dim, num_classes)

    def forward(self, idx):
        h = self.H[idx]
        return self.classifier(h), h


NETWORKS = ("resnet18", "resnet18_nobias", "vgg11", "vgg13", "mlp", "cnn", "ufm")


def build_model(name, num_classes, in_channels=3, num_samples=None, width=None, feat_dim=None, image_size=32,
                depth=None):
    """Build a network by (case-insensitive) name; see NETWORKS and MIXUP_NETWORKS. `width` scales
    the body; `depth` is used by the mixup networks (wrn, vit)."""
    key = str(name).lower()
    if key in MIXUP_NETWORKS:  # (mixup)
        return MIXUP_NETWORKS[key](num_classes, in_channels, width=width, depth=depth, image_size=image_size)
    if key == "ufm":
        if not num_samples:
            raise UserError("--network UFM needs the number of training samples")
        return UFM(num_samples, feat_dim or max(num_classes, 16), num_classes)
    if key in ("resnet18", "resnet18_nobias"):
        body, d = resnet18_body(in_channels, width or 64)
        return FeatureClassifier(body, d, num_classes, bias=(key == "resnet18"))
    if key in _VGG:
        body, d = vgg_body(key, in_channels, width or 64)
    elif key == "mlp":
        body, d = mlp_body(in_channels * image_size**2, width or 256)
    elif key == "cnn":
        body, d = cnn_body(in_channels, width or 32)
    else:
        raise UserError(f"--network {name}: unknown network; allowed are "
                        f"{', '.join(NETWORKS + tuple(MIXUP_NETWORKS))} (any case)")
    return FeatureClassifier(body, d, num_classes)


def is_ufm(name):
    return str(name).lower() == "ufm"


# ======================================================================================
# Networks: wide ResNet and small ViT  (mixup)
# ======================================================================================


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
            raise UserError(f"--depth: a wide ResNet needs depth = 6n + 4 >= 10, got {depth}")
        if width < 1:
            raise UserError(f"--width: a wide ResNet needs width >= 1, got {width}")
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
            raise UserError(f"--image_size: the ViT needs a multiple of {patch}, got {image_size}")
        if width < 1 or depth < 1:
            raise UserError(f"--width/--depth: the ViT needs positive values, got {width}/{depth}")
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
        raise UserError(f"--loss: unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    if name == "mse":
        if not mse_scale > 0:
            raise UserError(f"--mse_scale: must be > 0, got {mse_scale}")
        return lambda z, y: mse_loss(z, y, mse_scale)
    if name == "label_smoothing":
        if not 0 <= smoothing < 1:
            raise UserError(f"--smoothing: must be in [0, 1), got {smoothing}")
        return lambda z, y: label_smoothing_loss(z, y, smoothing)
    if name == "focal":
        if not focal_gamma >= 0:
            raise UserError(f"--focal_gamma: must be >= 0, got {focal_gamma}")
        return lambda z, y: focal_loss(z, y, focal_gamma)
    return cross_entropy_loss


def mixup_loss(loss_fn, logits, y_a, y_b, lam):
    """Mean of lam * loss(y_a) + (1 - lam) * loss(y_b); lam is a scalar or one value per sample."""
    lam = torch.as_tensor(lam, dtype=logits.dtype, device=logits.device)
    return (lam * loss_fn(logits, y_a) + (1 - lam) * loss_fn(logits, y_b)).mean()


def mix_batch(x, y, alpha, gen):
    """Mixup of a batch with a random partner: returns (x_mixed, y_a, y_b, lam), lam ~ Beta(alpha,
    alpha) per sample (float32 on x's device). Draws come from the CPU torch.Generator `gen` (the
    training loop's, checkpointed with the run), so they are reproducible on any device."""
    if not alpha > 0:
        raise UserError(f"--alpha: the Beta(alpha, alpha) parameter must be > 0, got {alpha}")
    n = len(x)
    perm = torch.randperm(n, generator=gen).to(x.device)
    u = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
    lam = torch.as_tensor(scipy.special.betaincinv(alpha, alpha, u), dtype=torch.float32, device=x.device)
    lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return lam_x * x + (1 - lam_x) * x[perm], y, y[perm], lam


def make_mixup_objective(loss_fn, alpha, mixup=True):
    """An objective(model, xb, yb, epoch, gen) -> (loss, terms) for train_run that feeds the
    network the mixed inputs and applies the mixed loss (the plain loss when mixup is False)."""
    def objective(model, xb, yb, epoch, gen):
        if mixup:
            x_in, y_a, y_b, lam = mix_batch(xb, yb, alpha, gen)
        else:
            x_in, y_a, y_b, lam = xb, yb, yb, 1.0
        logits, _ = model(x_in)
        loss = mixup_loss(loss_fn, logits.float(), y_a, y_b, lam)
        return loss, {"loss": loss}
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

TRAIN_DEFAULTS = dict(
    name="run", network="resnet18", epochs=100, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
    lr_milestones=[], lr_gamma=0.1, weight_decay=0.0, lam_h=0.0, lam_w=0.0, lam_b=0.0,
    warm_epochs=0, warm_factor=1.0, eval_epochs=None, seed=0, width=None, feat_dim=None, amp=False,
)
OPTIMIZERS = ("sgd", "adam", "adamw", "lbfgs")


def default_eval_epochs(epochs):
    """Epochs 1-5, every 10th, and the last."""
    return sorted(set(range(1, min(epochs, 5) + 1)) | set(range(10, epochs + 1, 10)) | {epochs})


def check_train_config(cfg):
    """Reject bad settings with one line naming the argument, before anything is built."""
    for k in ("lam_h", "lam_w", "lam_b", "weight_decay", "lr", "momentum", "warm_factor"):
        utils.check_nonneg(f"--{k}", cfg[k])
    if cfg["lr"] <= 0:
        raise UserError(f"--lr {cfg['lr']}: must be > 0")
    utils.check_positive_ints("--epochs", [cfg["epochs"]])
    utils.check_positive_ints("--batch_size", [cfg["batch_size"]])
    if str(cfg["optimizer"]).lower() not in OPTIMIZERS:
        raise UserError(f"--optimizer {cfg['optimizer']}: allowed are {', '.join(OPTIMIZERS)}")
    bad = [e for e in cfg["eval_epochs"] if not 1 <= e <= cfg["epochs"]]
    if bad:
        raise UserError(f"eval epochs {bad}: must lie in 1..{cfg['epochs']}")


def regularized_objective(model, xb, yb, cfg, num_train, reg_scale):
    """theory.md section 2: mean CE + lam_W ||W||^2 + lam_H * N * mean ||h||^2 + lam_b ||b||^2."""
    logits, h = model(xb)
    ce = F.cross_entropy(logits.float(), yb)
    W, b = model.classifier.weight, model.classifier.bias
    reg_w = cfg["lam_w"] * W.pow(2).sum()
    reg_h = cfg["lam_h"] * num_train * h.float().pow(2).sum(1).mean()
    reg_b = cfg["lam_b"] * b.pow(2).sum() if b is not None else ce.new_zeros(())
    loss = ce + reg_scale * (reg_w + reg_h + reg_b)
    acc = (logits.argmax(1) == yb).float().mean()
    return loss, {"loss": loss, "ce": ce, "reg_w": reg_w, "reg_h": reg_h, "reg_b": reg_b, "acc": acc}


def make_optimizer(model, cfg):
    name = cfg["optimizer"].lower()
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # lbfgs: full-batch quasi-Newton, for the UFM, whose optimum plain SGD approaches very slowly
    return torch.optim.LBFGS(params, lr=cfg["lr"], max_iter=50, history_size=50, tolerance_grad=1e-12,
                             tolerance_change=1e-15, line_search_fn="strong_wolfe")


def lr_at(cfg, epoch):
    """Learning rate in (1-based) epoch: multiplied by lr_gamma at each milestone passed."""
    return cfg["lr"] * cfg["lr_gamma"] ** sum(epoch > m for m in cfg["lr_milestones"])


def evaluate(model, data, x_train, cfg, device):
    """Train/test accuracy and every NC metric of the current model (eval mode, no gradients)."""
    H, logits = ana_utils.extract_features(model, x_train, batch_size=max(cfg["batch_size"], 1024))
    y = data.y_train
    W = model.classifier.weight.detach().cpu()
    b = model.classifier.bias.detach().cpu() if model.classifier.bias is not None else None
    row = {"train_acc": (logits.argmax(1) == y).float().mean().item()}
    if not is_ufm(cfg["network"]):
        _, test_logits = ana_utils.extract_features(model, data.x_test.to(device), batch_size=1024)
        row["test_acc"] = (test_logits.argmax(1) == data.y_test).float().mean().item()
    row.update(ana_utils.nc_metrics(H, y, W, b))
    Z = ana_utils.mean_logit_matrix(H, y, W, data.num_classes)
    return row, Z, (b.numpy() if b is not None else np.zeros(data.num_classes))


def run_dir_of(cfg, data, models_dir):
    """models/<name>_<hash of the configuration and the data subset>."""
    keyed = {k: v for k, v in cfg.items() if k not in ("name",)}
    keyed["data"] = data.key
    return os.path.join(models_dir, f"{cfg['name']}_{utils.config_key(keyed)}")


def _load_checkpoint(path):
    """The resume state of a run; weights_only: loading it runs no code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); move it away to start that run over") from None


def train_run(cfg, data, device, models_dir="models", objective=None, on_eval=None):
    """Train one configuration (or reuse / resume it) and return its final results.

    The run folder holds config.json, summary.csv (one row per evaluated epoch), checkpoint.pt
    while training (written atomically at every evaluated epoch; a killed run resumes from it),
    and, when finished, model.pt and final.json. A finished run is reused, not retrained.
    `objective(model, xb, yb, epoch, gen) -> (loss, terms)` replaces the regularised CE of
    theory.md section 2 (terms: dict of scalar tensors, averaged per epoch into the CSV);
    `on_eval(model, epoch, run_dir) -> dict` adds columns to the CSV row of an evaluated epoch."""
    cfg = {**TRAIN_DEFAULTS, **cfg}
    cfg["eval_epochs"] = sorted(set(cfg["eval_epochs"] or default_eval_epochs(cfg["epochs"])))
    check_train_config(cfg)
    cfg["eval_epochs"] = sorted(set(cfg["eval_epochs"]) | {cfg["epochs"]})  # the last epoch is always evaluated
    run_dir = run_dir_of(cfg, data, models_dir)
    final_path = os.path.join(run_dir, "final.json")
    if os.path.exists(final_path):
        return dict(utils.read_json(final_path), run_dir=run_dir, reused=True)
    utils.ensure_writable_dir(run_dir, "--models_dir")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ckpt = _load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None
    utils.atomic_write_json(os.path.join(run_dir, "config.json"), dict(cfg, data=data.key, sizes=data.sizes))

    utils.set_seed(cfg["seed"])
    N = len(data.y_train)
    model = build_model(cfg["network"], data.num_classes, data.in_channels, num_samples=N, width=cfg["width"],
                        feat_dim=cfg["feat_dim"], image_size=data.x_train.shape[-1], depth=cfg.get("depth")).to(device)
    if cfg.get("fixed_etf"):  # (mixup) a frozen simplex-ETF classifier, set before the optimizer sees it
        fixed_etf_classifier_(model.classifier, seed=cfg["seed"])
    ufm = is_ufm(cfg["network"])
    x_train = torch.arange(N, device=device) if ufm else data.x_train.to(device)
    y_train = data.y_train.to(device)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg["seed"])
    history, start = [], 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, start = ckpt["history"], ckpt["epoch"]
        print(f"resuming {run_dir} from epoch {start}", file=sys.stderr)

    bs = min(cfg["batch_size"], N)
    amp = cfg["amp"] and device.type == "cuda"
    bar = tqdm(range(start + 1, cfg["epochs"] + 1), desc=cfg["name"], initial=start, total=cfg["epochs"],
               disable=not sys.stderr.isatty(), dynamic_ncols=True)
    for epoch in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        reg_scale = cfg["warm_factor"] if epoch <= cfg["warm_epochs"] else 1.0
        model.train()
        perm = torch.randperm(N, generator=gen).to(device)
        if N % bs == 1 and N > 1:  # never a final batch of one sample (batch norm)
            perm = perm[:-1]
        sums, seen = 0, 0
        for start_i in range(0, len(perm), bs):
            idx = perm[start_i:start_i + bs]
            xb, yb = x_train[idx], y_train[idx]

            def closure():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    if objective is None:
                        loss, terms = regularized_objective(model, xb, yb, cfg, N, reg_scale)
                    else:
                        loss, terms = objective(model, xb, yb, epoch, gen)
                loss.backward()
                closure.terms = terms
                return loss

            opt.step(closure)
            names = list(closure.terms)
            batch_terms = torch.stack([v.detach().float() for v in closure.terms.values()]) * len(idx)
            sums = sums + batch_terms
            seen += len(idx)
        means = dict(zip(names, (sums / seen).tolist()))
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise UserError(f"training diverged at epoch {epoch}: non-finite {', '.join(bad)} "
                            f"({', '.join(f'{k}={v:.4g}' for k, v in means.items())}); lower --lr or the regularisation")
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})  # every loss term and the accuracy
        if epoch in cfg["eval_epochs"]:
            row, Z, b = evaluate(model, data, x_train, cfg, device)
            row = {"epoch": epoch, "lr": lr_at(cfg, epoch), **means, **row}
            if on_eval is not None:
                row.update(on_eval(model, epoch, run_dir))
            history.append(row)
            utils.atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "gen": gen.get_state(),
                                     "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch}, ckpt_path)
            utils.atomic_write_csv(os.path.join(run_dir, "summary.csv"), history)
    bar.close()

    if start == cfg["epochs"]:  # killed after the last checkpoint, before final.json
        _, Z, b = evaluate(model, data, x_train, cfg, device)
    utils.atomic_torch_save(model.state_dict(), os.path.join(run_dir, "model.pt"))
    final = {"config": cfg, "data": data.key, "sizes": data.sizes, "final": history[-1], "Z": Z, "b": b}
    utils.atomic_write_json(final_path, final)
    if os.path.exists(ckpt_path):
        os.remove(ckpt_path)
    return dict(utils.read_json(final_path), run_dir=run_dir, reused=False)
