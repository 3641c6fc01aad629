"""Networks: every model maps x to (logits, features), with the classifier the one nn.Linear
named `classifier`, so analysis code never guesses. ResNet18 (CIFAR form), VGG11/13, MLP, small
CNN, the unconstrained feature model (UFM), wide ResNet, small ViT and ViT-B/4; `build_model` by name."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError


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


def mlp_body(in_features, width=256, depth=3, linear_features=False):
    """Fully connected ReLU network on flattened images (CPU-sized). linear_features adds a last
    linear layer, so the features can take any sign, like the UFM's: features after a ReLU are
    non-negative, their Gram matrix cannot be the UFM optimum's (negative cosines between class
    means), and the extra feature norm this costs makes the network's Z shrink faster than the
    UFM's as lambda grows (theory.md section 4)."""
    layers, cin = [nn.Flatten()], in_features
    for _ in range(depth):
        layers += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU()]
        cin = width
    if linear_features:
        layers.append(nn.Linear(width, width))
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


NETWORKS = ("resnet18", "resnet18_nobias", "vgg11", "vgg13", "mlp", "mlp_linear", "cnn", "ufm")


def build_model(name, num_classes, in_channels=3, num_samples=None, width=None, feat_dim=None, image_size=32,
                depth=None):
    """Build a network by (case-insensitive) name; see NETWORKS and MIXUP_NETWORKS. `width` scales
    the body; `depth` is used by the mixup networks (wrn, vit)."""
    key = str(name).lower()
    if key in MIXUP_NETWORKS:  # (mixup)
        return MIXUP_NETWORKS[key](num_classes, in_channels, width=width, depth=depth, image_size=image_size)
    if key == "ufm":
        if not num_samples:
            raise UserError("network ufm: needs the number of training samples")
        return UFM(num_samples, feat_dim or max(num_classes, 16), num_classes)
    if key in ("resnet18", "resnet18_nobias"):
        body, d = resnet18_body(in_channels, width or 64)
        return FeatureClassifier(body, d, num_classes, bias=(key == "resnet18"))
    if key in _VGG:
        body, d = vgg_body(key, in_channels, width or 64)
    elif key in ("mlp", "mlp_linear"):
        body, d = mlp_body(in_channels * image_size**2, width or 256, linear_features=(key == "mlp_linear"))
    elif key == "cnn":
        body, d = cnn_body(in_channels, width or 32)
    else:
        raise UserError(f"network {name}: unknown; allowed are "
                        f"{', '.join(NETWORKS + tuple(MIXUP_NETWORKS))} (any case)")
    return FeatureClassifier(body, d, num_classes)


def step_work_size(name, batch, input_numel, width=None, feat_dim=None):
    """Elements of the largest tensor of one training step (for cpu_threads.set_threads): the UFM's
    batch x d features; an MLP's flattened input or hidden batch; otherwise the first feature maps
    (batch x width x pixels, input_numel / 3 pixels taken as the worst case; width 64 by default)."""
    key = str(name).lower()
    if key == "ufm":
        return batch * (feat_dim or 16)
    if key in ("mlp", "mlp_linear"):
        return batch * max(input_numel, width or 256)
    return batch * input_numel * (width or 64)


def is_ufm(name):
    return str(name).lower() == "ufm"


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
            raise UserError(f"depth {depth}: a wide ResNet needs depth = 6n + 4 >= 10")
        if width < 1:
            raise UserError(f"width {width}: a wide ResNet needs width >= 1")
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
            raise UserError(f"image size {image_size}: the ViT needs a multiple of {patch}")
        if width < 1 or depth < 1:
            raise UserError(f"width/depth {width}/{depth}: the ViT needs positive values")
        # heads of 64 dimensions as in ViT-Ti/S/B (192 -> 3, 384 -> 6, 768 -> 12), or the nearest count
        # below that divides the width
        heads = max(h for h in range(1, max(1, width // 64) + 1) if width % h == 0)
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


class TorchvisionViT(nn.Module):
    """torchvision's VisionTransformer with its head replaced by `classifier`; features are the
    class token after the encoder's final LayerNorm (what the original head reads)."""

    def __init__(self, vit, num_classes):
        super().__init__()
        vit.heads = nn.Identity()
        self.vit, self.feat_dim = vit, vit.hidden_dim
        self.classifier = nn.Linear(vit.hidden_dim, num_classes)

    def forward(self, x):
        h = self.vit(x)
        return self.classifier(h), h


VIT_B4 = dict(patch_size=4, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)


def make_vit_b4(num_classes, in_channels, width=None, depth=None, image_size=32):
    """ViT-B/4 (Dosovitskiy et al.'s ViT-Base: 12 layers, width 768, 12 heads, MLP 3072; 4x4
    patches), the paper's ViT at 32x32, built by torchvision; the patch embedding takes
    `in_channels`. Exactly this architecture: width and depth cannot be changed."""
    if width is not None or depth is not None:
        raise UserError("--width/--depth: vit_b4 is exactly ViT-B/4; use --network vit for a resizable ViT")
    if image_size % VIT_B4["patch_size"]:
        raise UserError(f"image size {image_size}: ViT-B/4 needs a multiple of 4")
    from torchvision.models import VisionTransformer  # lazily: only this preset needs torchvision
    vit = VisionTransformer(image_size=image_size, num_classes=num_classes, **VIT_B4)
    p = VIT_B4["patch_size"]
    vit.conv_proj = nn.Conv2d(in_channels, VIT_B4["hidden_dim"], p, p)
    nn.init.trunc_normal_(vit.conv_proj.weight, std=(in_channels * p * p) ** -0.5)  # torchvision's own init
    nn.init.zeros_(vit.conv_proj.bias)
    return TorchvisionViT(vit, num_classes)


MIXUP_NETWORKS = {"wrn": make_wrn, "vit": make_vit, "vit_b4": make_vit_b4}


def check_network_name(name, arg="--network"):
    """The network name as build_model spells it (lower case), or a UserError naming `arg` and the allowed ones."""
    if str(name).lower() not in NETWORKS:
        raise UserError(f"{arg} {name}: unknown network; allowed are {', '.join(NETWORKS)} (any case)")
    return str(name).lower()
