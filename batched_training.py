"""Batched training: the points of a sweep that share network, data and schedule trained as one
vmapped model (torch.func), each with its own lambda, seed, data order and run folder, which
train_utils.train_run then reuses (--batched of the figure scripts)."""
import contextlib
import math
import os
import sys
import time

import torch

import data_parallel
import networks
import result_files
import run_locks
import train_utils
import utils
from utils import UserError

# ResNet18 and the VGGs batch unchanged: under vmap every BatchNorm2d normalises its own run's batch
# and updates that run's slice of the stacked running statistics in place, as BatchNorm1d does in
# the MLP (torch.func turns the M convolutions into one grouped convolution).
BATCHED_NETWORKS = ("mlp", "mlp_linear", "cnn", "resnet18", "resnet18_nobias", "vgg11", "vgg13")
SMALL_NETWORKS = ("mlp", "mlp_linear", "cnn")  # batched by default in the --quick previews
BATCHED_OWN_KEYS = ("name", "lam_h", "lam_w", "lam_b", "seed")  # what may differ between batched runs


def batchable(cfg):
    """Whether train_batched can train this configuration (SGD, no AMP, a network of BATCHED_NETWORKS)."""
    cfg = {**train_utils.TRAIN_DEFAULTS, **cfg}
    return cfg["network"] in BATCHED_NETWORKS and cfg["optimizer"] == "sgd" and not cfg["amp"]


def train_batched(cfgs, data, device, models_dir="models"):
    """Train configurations that differ only in BATCHED_OWN_KEYS as one vmapped model
    (torch.func.stack_module_state + functional_call); returns train_run's result of each.

    Each run keeps its own seed (initial weights and data order, drawn as train_run draws them),
    lambdas, run folder, config.json (with `record`), CSV rows and final.json, so a later train_run
    reuses it; SGD on the stacked weights is SGD on each. The runs differ from one-by-one training
    only by the rounding of batched matrix products and convolutions. Every run is trained under
    its lock file, as train_run trains it: the locks are taken in the order of their paths (two
    processes batching overlapping groups cannot deadlock), a run finished by another process
    meanwhile is reused, not retrained, and a single run left is trained by train_run's own loop.
    A CSV row's seconds_per_epoch is the batch's training seconds per epoch since the previous row
    (evaluation excluded) divided by the number of runs trained together: each run's share, the
    figure --dry_run estimates from. At every evaluated epoch each run writes train_run's checkpoint
    (its weights, its slice of the momentum, its data order): a killed batch resumes together when
    its runs stopped at the same epoch, otherwise each run resumes alone in train_run's loop. Not under torchrun
    (refused in one line): the vmapped batch is not data-parallel."""
    data_parallel.refuse("--batched", "a vmapped sweep is not data-parallel; add --no_batched")
    cfgs = _checked_configs(cfgs)
    run_dirs = [train_utils.run_dir_of(c, data, models_dir) for c in cfgs]
    first = {d: m for m, d in reversed(list(enumerate(run_dirs)))}  # a configuration given twice is trained once
    finals = [os.path.join(d, "final.json") for d in run_dirs]

    def reuse_finished(todo):  # as train_run: a finished run is reused, not retrained
        for m in todo:
            if os.path.exists(finals[m]):
                results[m] = train_utils.reuse_finished_run(finals[m], cfgs[m], data)
        return [m for m in todo if results[m] is None]

    results = [None] * len(cfgs)
    todo = reuse_finished(sorted(first.values()))
    for m in todo:
        result_files.ensure_writable_dir(run_dirs[m], "--models_dir")
    with contextlib.ExitStack() as locks:
        for m in sorted(todo, key=lambda m: run_dirs[m]):
            locks.enter_context(run_locks.run_lock(os.path.join(run_dirs[m], "lock"), f"the run {run_dirs[m]}"))
        todo = reuse_finished(todo)  # finished by the processes this one waited for
        ckpts = {}
        for m in todo:
            result_files.remove_leftovers(run_dirs[m])  # temporary files of writes killed midway
            path = os.path.join(run_dirs[m], "checkpoint.pt")
            ckpts[m] = train_utils.load_checkpoint(path) if os.path.exists(path) else None
        # together when all start fresh or all stopped at one epoch before the last; otherwise the runs
        # with a checkpoint resume alone (train_run's loop, which also finishes one killed before final.json)
        stopped = {ckpts[m]["epoch"] if ckpts[m] else 0 for m in todo}
        last = max(stopped, default=0)
        alone = [m for m in todo if ckpts[m]] if len(stopped) > 1 or last >= cfgs[0]["epochs"] else []
        together = [m for m in todo if m not in alone]
        if len(together) == 1:
            alone, together = alone + together, []
        for m in alone:  # resumes its own checkpoint, or trains the single run left
            results[m] = train_utils.train_locked_run(cfgs[m], data, device, run_dirs[m], None, None)
        if together:
            for m, res in zip(together, _train_together([cfgs[m] for m in together], [run_dirs[m] for m in together],
                                                        data, device, [ckpts[m] for m in together])):
                results[m] = res
    return [results[first[d]] for d in run_dirs]


def _checked_configs(cfgs):
    """The configurations with train_run's defaults and evaluated epochs filled in, checked as train_run checks
    them; a ValueError unless they are batchable and differ only in BATCHED_OWN_KEYS."""
    cfgs = [{**train_utils.TRAIN_DEFAULTS, **c} for c in cfgs]
    for c in cfgs:
        c["eval_epochs"] = sorted(set(c["eval_epochs"] or train_utils.default_eval_epochs(c["epochs"])) | {c["epochs"]})
        train_utils.check_train_config(c)
    shared = {k: v for k, v in cfgs[0].items() if k not in BATCHED_OWN_KEYS}
    if not batchable(cfgs[0]) or any({k: v for k, v in c.items() if k not in BATCHED_OWN_KEYS} != shared for c in cfgs):
        raise ValueError("train_batched: configurations must be batchable and differ only in "
                         + ", ".join(BATCHED_OWN_KEYS))
    return cfgs


def _train_together(cfgs, run_dirs, data, device, ckpts):
    """train_batched's training part, under the runs' locks: one vmapped model, from the start or
    from the runs' checkpoints `ckpts` (all None, or all of one epoch)."""
    from torch.func import functional_call, stack_module_state
    cfg, M, N = cfgs[0], len(cfgs), len(data.y_train)
    record = utils.run_record(device)
    for c, run_dir in zip(cfgs, run_dirs):
        result_files.atomic_write_json(os.path.join(run_dir, "config.json"), dict(c, data=data.key, sizes=data.sizes,
                                                                            record=record))
    models = _member_models(cfgs, ckpts, data, device)
    weights, buffers = stack_module_state(models)
    skeleton = networks.build_model(cfg["network"], data.num_classes, data.in_channels, width=cfg["width"],
                           feat_dim=cfg["feat_dim"], image_size=data.x_train.shape[-1]).to("meta")
    lams = {k: torch.tensor([c[k] for c in cfgs], device=device) for k in ("lam_h", "lam_w", "lam_b")}
    opt = torch.optim.SGD(weights.values(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    gens = [torch.Generator().manual_seed(c["seed"]) for c in cfgs]
    histories, start = _resume_together(opt, ckpts, gens, run_dirs)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    bs = min(cfg["batch_size"], N)

    def member_terms(p, b, xb, yb, lam, warm_weight):  # one model's objective; vmapped over the runs
        logits, h = functional_call(skeleton, (p, b), (xb,))
        return train_utils.regularized_terms(logits, h, p["classifier.weight"], p.get("classifier.bias"), yb,
                                             dict(lam, loss=cfg.get("loss")), N, warm_weight)[1]

    results = [None] * M
    train_seconds, timed_epochs = 0.0, 0  # since the last evaluated epoch
    for epoch in range(start + 1, cfg["epochs"] + 1):
        t_epoch = time.perf_counter()
        warm_weight = train_utils.start_epoch(opt, cfg, epoch)
        perms = torch.stack([train_utils.epoch_order(N, bs, g) for g in gens]).to(device)
        names, means = _batched_epoch(member_terms, opt, weights, buffers, x_train, y_train, lams, warm_weight,
                                      perms, bs)
        if not all(math.isfinite(v) for row in means for v in row):
            raise UserError(f"training diverged at epoch {epoch} in a batched run; lower --lr or the regularisation")
        train_seconds, timed_epochs = train_seconds + time.perf_counter() - t_epoch, timed_epochs + 1
        if epoch in cfg["eval_epochs"]:
            seconds_per_epoch = train_seconds / timed_epochs / M  # each run's share of the batch's time
            train_seconds, timed_epochs = 0.0, 0
            opt_state = opt.state_dict()
            for m, (model, c) in enumerate(zip(models, cfgs)):
                _copy_member_(model, weights, buffers, m)
                model.train()
                metrics, Z, b = train_utils.evaluate(model, data, x_train, c, device)
                train_utils.record_evaluated_epoch(run_dirs[m], c, histories[m], epoch, dict(zip(names, means[m])),
                                                   metrics, seconds_per_epoch)
                if epoch == cfg["epochs"]:
                    results[m] = train_utils.finish_run(run_dirs[m], c, data, model, histories[m], Z, b)
                else:  # train_run's checkpoint of this run, with its slice of the optimizer state (copied)
                    own = _member_optimizer_state(opt_state, m)
                    train_utils.save_checkpoint(os.path.join(run_dirs[m], "checkpoint.pt"), model, gens[m],
                                                histories[m], epoch,
                                                optimizer={"state": own, "param_groups": opt_state["param_groups"]})
    return results


def _batched_epoch(member_terms, opt, weights, buffers, x_train, y_train, lams, warm_weight, perms, bs):
    """One epoch of the vmapped runs over their batch orders `perms`: (the loss terms' names, each run's epoch
    means of them)."""
    from torch.func import vmap
    sums, seen = 0, 0
    for start_i in range(0, perms.shape[1], bs):
        idx = perms[:, start_i:start_i + bs]
        opt.zero_grad(set_to_none=True)
        terms = vmap(member_terms, in_dims=(0, 0, 0, 0, 0, None))(weights, buffers, x_train[idx], y_train[idx],
                                                                 lams, warm_weight)
        terms["loss"].sum().backward()  # the runs share no weight: each gets its own gradient
        opt.step()
        names = list(terms)
        batch_terms = torch.stack([v.detach().float() for v in terms.values()], 1) * idx.shape[1]
        sums, seen = sums + batch_terms, seen + idx.shape[1]
    return names, (sums / seen).tolist()  # waits for the device: the epoch's time is complete


def _member_models(cfgs, ckpts, data, device):
    """Each run's model on `device`: its initial weights as train_run draws them, or its checkpoint's."""
    models = []
    for c, ckpt in zip(cfgs, ckpts):  # each model's initial weights as train_run draws them, or its checkpoint's
        utils.set_seed(c["seed"])
        models.append(networks.build_model(c["network"], data.num_classes, data.in_channels, width=c["width"],
                                           feat_dim=c["feat_dim"], image_size=data.x_train.shape[-1]).to(device))
        if ckpt:
            models[-1].load_state_dict(ckpt["model"])
    return models


def _resume_together(opt, ckpts, gens, run_dirs):
    """(histories, start epoch) of the runs: fresh, or restored from their checkpoints `ckpts` of one epoch, with
    the momentum of each run stacked back into `opt` and each run's data order `gens` and CSV rows."""
    histories, start = [[] for _ in ckpts], 0
    if ckpts[0]:  # the momentum of each run stacked back, its data order, its CSV rows
        state = {i: {k: torch.stack([ck["optimizer"]["state"][i][k] for ck in ckpts]) if torch.is_tensor(v) else v
                     for k, v in s.items()} for i, s in ckpts[0]["optimizer"]["state"].items()}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        histories, starts = zip(*[train_utils.restore_history(run_dir, ck, gen)
                                  for gen, ck, run_dir in zip(gens, ckpts, run_dirs)])
        histories, start = list(histories), starts[0]
        print(f"resuming {len(ckpts)} batched runs from epoch {start}", file=sys.stderr)
    return histories, start


def _copy_member_(model, weights, buffers, m):
    """Copy run m's slice of the stacked weights and buffers into its own model (to evaluate and checkpoint it)."""
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(weights[k][m])
        for k, v in model.named_buffers():
            v.copy_(buffers[k][m])


def _member_optimizer_state(opt_state, m):
    """Run m's slice of the stacked optimizer state (copied), as train_run's checkpoint holds it."""
    return {i: {k: v[m].clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in opt_state["state"].items()}
