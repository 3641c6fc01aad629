"""Training recipes: per network (and loss where it matters) the optimizer, learning rate and its
schedule with warm-up, weight decay, batch size and epochs, each with its published source; and
the optimizer and per-epoch learning rate a configuration's recipe values define.

A recipe fills the training settings a user did not give (mixup_main: a flag given wins). Paper
scale follows the sources named in `source`; the CPU recipes (`--quick`) are this project's own,
measured on the CPU preview (docs/mixup_study.md)."""
import dataclasses
import math

import torch

from utils import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training recipe. milestones: fractions of the epochs after which the lr is multiplied
    by lr_gamma (schedule "step"); warmup_epochs: linear warm-up from lr/warmup_epochs to lr."""
    name: str
    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    schedule: str = "step"
    milestones: tuple = ()
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    momentum: float = 0.9
    source: str = ""

    def settings(self):
        """The recipe's values under the names of the training configuration (mixup_main's flags)."""
        return dict(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    batch_size=self.batch_size, epochs=self.epochs, lr_schedule=self.schedule,
                    lr_milestones=milestone_epochs(self.milestones, self.epochs), lr_gamma=self.lr_gamma,
                    warmup_epochs=self.warmup_epochs)


def milestone_epochs(fractions, epochs):
    """The epochs after which a step schedule decays: round(f * epochs), at least 1, distinct."""
    return sorted({max(1, round(f * epochs)) for f in fractions})


RECIPES = {r.name: r for r in (
    Recipe("sgd_step", "sgd", 0.1, 1e-4, 128, 500, "step", (0.3, 0.5, 0.9),
           source="the seed's student repository (sdraeger/nc-mixup-loss-function, main.py and data.py: SGD lr 0.1, "
                  "momentum 0.9, weight decay 1e-4, lr x0.1 at 30/50/90% of 500 epochs, batch 128), the optimizer, "
                  "lr and weight decay of mixup on CIFAR (Zhang et al. 2018); Fisher et al. 2024 train WRN-40-10 "
                  "with SGD"),
    Recipe("vit_adamw", "adamw", 5e-4 * 128 / 512, 0.05, 128, 500, "cosine", warmup_epochs=5,
           source="DeiT (Touvron et al. 2021, Table 9): AdamW, lr 5e-4 x batch/512, weight decay 0.05, 5 epochs of "
                  "linear warm-up, cosine decay; at batch 128 and over the study's 500 epochs (the student "
                  "repository's length; Fisher et al. 2024 train ViT-B with Adam and AdamW)"),
    Recipe("mlp_cpu", "sgd", 0.05, 1e-2, 64, 200, "step", (0.3, 0.5, 0.9),
           source="this project's CPU preview (mixup_main.py --quick): the sgd_step recipe at lr 0.05, batch 64, "
                  "weight decay 1e-2, which collapses a small network's features within 200 epochs"),
    Recipe("cnn_cpu", "sgd", 0.05, 1e-2, 64, 200, "step", (0.3, 0.5, 0.9), warmup_epochs=5,
           source="this project's CPU preview: mlp_cpu with 5 warm-up epochs (without them the small CNN with MSE "
                  "diverged in its first three epochs at lr 0.05, or stalled near chance)"),
)}
# Paper scale: the recipe of each network; --quick: the CPU recipe (networks not named take sgd_step / mlp_cpu).
NETWORK_RECIPES = {"vit": "vit_adamw", "vit_b4": "vit_adamw"}
CPU_RECIPES = {"cnn": "cnn_cpu", "vit": "vit_adamw"}


def recipe_for(network, loss=None, cpu=False, name=None):
    """The recipe named `name`, else the one of `network` (at CPU scale with cpu=True). `loss` is
    accepted so that a loss-specific recipe can be added where one is measured to matter."""
    if name is not None:
        if name not in RECIPES:
            raise UserError(f"--recipe {name}: allowed are {', '.join(RECIPES)}")
        return RECIPES[name]
    table, default = (CPU_RECIPES, "mlp_cpu") if cpu else (NETWORK_RECIPES, "sgd_step")
    return RECIPES[table.get(str(network).lower(), default)]


def build_optimizer(params, cfg):
    """torch optimizer of cfg["optimizer"] (sgd with momentum, adam, adamw) at cfg["lr"] and
    cfg["weight_decay"] (coupled L2 for sgd and adam, decoupled for adamw)."""
    name = str(cfg["optimizer"]).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise UserError(f"optimizer {cfg['optimizer']}: allowed are {', '.join(OPTIMIZERS)}")


def lr_at(cfg, epoch):
    """Learning rate in (1-based) epoch. Schedule "step" (the default): lr times lr_gamma per
    milestone passed; "cosine": lr * (1 + cos(pi t)) / 2 with t = (epoch - W - 1) / (epochs - W)
    after W = warmup_epochs (full lr in the first epoch after warm-up, above 0 in the last). Both
    are multiplied by epoch / W during the warm-up (linear, per epoch as DeiT's scheduler)."""
    warmup = cfg.get("warmup_epochs", 0) or 0
    ramp = min(1.0, epoch / warmup) if warmup > 0 else 1.0
    if cfg.get("lr_schedule", "step") == "cosine":
        t = max(0, epoch - warmup - 1) / max(1, cfg["epochs"] - warmup)
        return cfg["lr"] * ramp * 0.5 * (1 + math.cos(math.pi * t))
    return cfg["lr"] * ramp * cfg["lr_gamma"] ** sum(epoch > m for m in cfg["lr_milestones"])
