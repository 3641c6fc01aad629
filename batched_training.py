"""Batched training: the points of a sweep that share network, data and schedule trained as one
vmapped model (torch.func), each with its own lambda, seed, data order and run folder, which
train_utils.train_run then reuses (--batched of the figure scripts)."""
import math
import os

import torch

import networks
import train_utils
import utils
from utils import UserError

BATCHED_NETWORKS = ("mlp", "mlp_linear", "cnn")
BATCHED_OWN_KEYS = ("name", "lam_h", "lam_w", "lam_b", "seed")  # what may differ between batched runs


def batchable(cfg):
    """Whether train_batched can train this configuration (SGD on a small network, no AMP)."""
    cfg = {**train_utils.TRAIN_DEFAULTS, **cfg}
    return cfg["network"] in BATCHED_NETWORKS and cfg["optimizer"] == "sgd" and not cfg["amp"]


def train_batched(cfgs, data, device, models_dir="models"):
    """Train configurations that differ only in BATCHED_OWN_KEYS as one vmapped model
    (torch.func.stack_module_state + functional_call); returns train_run's result of each.

    Each run keeps its own seed (initial weights and data order, drawn as train_run draws them),
    lambdas, run folder, CSV rows and final.json, so a later train_run reuses it; SGD on the stacked
    weights is SGD on each. The runs differ from one-by-one training only by the rounding of
    batched matrix products. No checkpoint is kept: a killed batch starts over."""
    from torch.func import functional_call, stack_module_state, vmap
    cfgs = [{**train_utils.TRAIN_DEFAULTS, **c} for c in cfgs]
    for c in cfgs:
        c["eval_epochs"] = sorted(set(c["eval_epochs"] or train_utils.default_eval_epochs(c["epochs"])) | {c["epochs"]})
        train_utils.check_train_config(c)
    shared = {k: v for k, v in cfgs[0].items() if k not in BATCHED_OWN_KEYS}
    if not batchable(cfgs[0]) or any({k: v for k, v in c.items() if k not in BATCHED_OWN_KEYS} != shared for c in cfgs):
        raise ValueError("train_batched: configurations must be batchable and differ only in " + ", ".join(BATCHED_OWN_KEYS))
    cfg, M, N = cfgs[0], len(cfgs), len(data.y_train)
    run_dirs = [train_utils.run_dir_of(c, data, models_dir) for c in cfgs]
    for c, run_dir in zip(cfgs, run_dirs):
        utils.ensure_writable_dir(run_dir, "--models_dir")
        utils.atomic_write_json(os.path.join(run_dir, "config.json"), dict(c, data=data.key, sizes=data.sizes))
    models = []
    for c in cfgs:  # each model's initial weights as train_run draws them
        utils.set_seed(c["seed"])
        models.append(networks.build_model(c["network"], data.num_classes, data.in_channels, width=c["width"],
                                  feat_dim=c["feat_dim"], image_size=data.x_train.shape[-1]).to(device))
    params, buffers = stack_module_state(models)
    skeleton = networks.build_model(cfg["network"], data.num_classes, data.in_channels, width=cfg["width"],
                           feat_dim=cfg["feat_dim"], image_size=data.x_train.shape[-1]).to("meta")
    lams = {k: torch.tensor([c[k] for c in cfgs], device=device) for k in ("lam_h", "lam_w", "lam_b")}
    opt = torch.optim.SGD(params.values(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    gens = [torch.Generator().manual_seed(c["seed"]) for c in cfgs]
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    bs = min(cfg["batch_size"], N)

    def member_terms(p, b, xb, yb, lam, warm_weight):  # one model's objective; vmapped over the runs
        logits, h = functional_call(skeleton, (p, b), (xb,))
        return train_utils.regularized_terms(logits, h, p["classifier.weight"], p.get("classifier.bias"), yb, lam, N, warm_weight)[1]

    histories = [[] for _ in cfgs]
    results = [None] * M
    for epoch in range(1, cfg["epochs"] + 1):
        for group in opt.param_groups:
            group["lr"] = train_utils.lr_at(cfg, epoch)
        warm_weight = cfg["warm_factor"] if epoch <= cfg["warm_epochs"] else 1.0
        perms = torch.stack([torch.randperm(N, generator=g) for g in gens]).to(device)
        if N % bs == 1 and N > 1:  # never a final batch of one sample (batch norm)
            perms = perms[:, :-1]
        sums, seen = 0, 0
        for start_i in range(0, perms.shape[1], bs):
            idx = perms[:, start_i:start_i + bs]
            opt.zero_grad(set_to_none=True)
            terms = vmap(member_terms, in_dims=(0, 0, 0, 0, 0, None))(params, buffers, x_train[idx], y_train[idx],
                                                                     lams, warm_weight)
            terms["loss"].sum().backward()  # the runs share no weight: each gets its own gradient
            opt.step()
            names = list(terms)
            batch_terms = torch.stack([v.detach().float() for v in terms.values()], 1) * idx.shape[1]
            sums, seen = sums + batch_terms, seen + idx.shape[1]
        means = (sums / seen).tolist()
        if not all(math.isfinite(v) for row in means for v in row):
            raise UserError(f"training diverged at epoch {epoch} in a batched run; lower --lr or the regularisation")
        if epoch in cfg["eval_epochs"]:
            for m, (model, c) in enumerate(zip(models, cfgs)):
                with torch.no_grad():
                    for k, v in model.named_parameters():
                        v.copy_(params[k][m])
                    for k, v in model.named_buffers():
                        v.copy_(buffers[k][m])
                model.train()
                row, Z, b = train_utils.evaluate(model, data, x_train, c, device)
                histories[m].append({"epoch": epoch, "lr": train_utils.lr_at(c, epoch), **dict(zip(names, means[m])), **row})
                utils.atomic_write_csv(os.path.join(run_dirs[m], "summary.csv"), histories[m])
                if epoch == cfg["epochs"]:
                    results[m] = train_utils.finish_run(run_dirs[m], c, data, model, histories[m], Z, b)
    return results
