"""Training: the loop of one run with checkpoints and resume, and what it trains with: the mixup objective
(batches in mixup_batches.py, the per-sample losses in losses.py), a fixed simplex-ETF classifier, the
regularised objective of theory.md section 2, optimizers, and the epoch steps the batched loop shares
(schedule, data order, history restore, CSV row and log line). The UFM's full-batch L-BFGS is in ufm_training.py."""
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data_parallel
import figure_theory
import mixup_batches
import mixup_geometry
import nc_stream
import recipes
import result_files
import run_locks
import stop_signals
import ufm_training
import utils
from networks import build_model, is_ufm
from rebalance_losses import feature_weights, rebalanced_cross_entropy
from utils import UserError


def make_mixup_objective(loss_fn, alpha, mixup=True, mix_per="batch"):
    """An objective(model, xb, yb, epoch, gen) -> (loss, terms) for train_run that feeds the
    network the mixed inputs (mix_batch, one coefficient per batch or per sample) and applies the
    mixed loss (the plain loss when mixup is False). Under torchrun it mixes the whole batch (the same draws
    from `gen` on every rank) and computes the loss of its rank's part (data_parallel.batch_part)."""
    def objective(model, xb, yb, epoch, gen):
        if mixup:
            x_in, y_a, y_b, mix = mixup_batches.mix_batch(xb, yb, alpha, gen, mix_per)
        else:
            x_in, y_a, y_b, mix = xb, yb, yb, 1.0
        part, _ = data_parallel.batch_part(len(xb))
        logits, _ = model(x_in[part])
        mix = mix[part] if isinstance(mix, torch.Tensor) and mix.ndim else mix
        loss = mixup_batches.mixup_loss(loss_fn, logits.float(), y_a[part], y_b[part], mix)
        return loss, {"loss": loss}
    objective.data_parallel = True   # takes its rank's part itself: train_run may run it under torchrun
    return objective


def fixed_etf_classifier_(linear, omega=1.0, seed=0):
    """Set `linear` (K outputs, d >= K inputs) to a simplex ETF with row norms omega, zero its
    bias, and freeze both (requires_grad False, so optimizers and weight decay skip them)."""
    K, d = linear.weight.shape
    etf = mixup_geometry.simplex_etf(K, d, omega=omega, seed=seed)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(etf, dtype=linear.weight.dtype))
        linear.weight.requires_grad_(False)
        if linear.bias is not None:
            linear.bias.zero_()
            linear.bias.requires_grad_(False)
    return linear


TRAIN_DEFAULTS = dict(
    name="run", network="resnet18", epochs=100, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
    lr_milestones=[], lr_gamma=0.1, weight_decay=0.0, lam_h=0.0, lam_w=0.0, lam_b=0.0,
    warm_epochs=0, warm_factor=1.0, eval_epochs=None, seed=0, width=None, feat_dim=None, amp=False,
)
OPTIMIZERS = ("sgd", "adam", "adamw", "lbfgs")


def default_eval_epochs(epochs):
    """Epochs 1-5, every 10th, and the last."""
    return sorted(set(range(1, min(epochs, 5) + 1)) | set(range(10, epochs + 1, 10)) | {epochs})


def check_train_config(cfg, prefix=""):
    """Reject bad settings with one line naming the configuration key, before anything is built;
    a script whose flags are these keys passes prefix="--" so the line names its flag."""
    for k in ("lam_h", "lam_w", "lam_b", "weight_decay", "momentum", "warm_factor"):
        utils.check_nonneg(prefix + k, cfg[k])
    for k in ("lr", "lr_gamma"):
        utils.check_positive(prefix + k, cfg[k])
    utils.check_positive_ints(prefix + "epochs", [cfg["epochs"]])
    utils.check_positive_ints(prefix + "batch_size", [cfg["batch_size"]])
    utils.check_choice(prefix + "optimizer", str(cfg["optimizer"]).lower(), OPTIMIZERS)
    for k in ("lr_milestones", "eval_epochs"):
        bad = [e for e in cfg[k] or [] if not 1 <= e <= cfg["epochs"]]
        if bad:
            raise UserError(f"{prefix}{k} {bad}: epochs must lie in 1..{cfg['epochs']}")
    if cfg.get("mixup"):
        utils.check_positive(prefix + "alpha", cfg["alpha"])
        # lam_per: the key stored in run configurations (their hashes), the mixup coefficient's per batch or sample
        utils.check_choice(prefix + "lam_per", cfg.get("lam_per", "batch"), mixup_batches.MIX_PER)


def regularized_objective(model, xb, yb, cfg, num_train, warm_weight):
    """theory.md section 2: mean CE + lam_W ||W||^2 + lam_H * N * mean ||h||^2 + lam_b ||b||^2."""
    logits, h = model(xb)
    return regularized_terms(logits, h, model.classifier.weight, model.classifier.bias, yb, cfg, num_train, warm_weight)


def regularized_terms(logits, h, W, b, yb, cfg, num_train, warm_weight):
    """regularized_objective from a forward pass's logits and features and the classifier (W, b);
    the lam_* of cfg may be tensors (one per model of a vmapped batch)."""
    spec = cfg.get("loss")  # a re-balanced loss (rebalance_losses); None: cross-entropy
    ce = F.cross_entropy(logits.float(), yb) if spec is None else rebalanced_cross_entropy(logits.float(), yb, spec, b)
    reg_w = cfg["lam_w"] * W.pow(2).sum()
    hh = h.float().pow(2).sum(1)
    reg_h = cfg["lam_h"] * num_train * (hh if spec is None else hh * feature_weights(yb, spec, hh)).mean()
    reg_b = cfg["lam_b"] * b.pow(2).sum() if b is not None else ce.new_zeros(())
    loss = ce + warm_weight * (reg_w + reg_h + reg_b)
    acc = (logits.argmax(1) == yb).float().mean()
    return loss, {"loss": loss, "ce": ce, "reg_w": reg_w, "reg_h": reg_h, "reg_b": reg_b, "acc": acc}


def make_optimizer(model, cfg):
    """The optimizer of cfg over the model's trained parameters: recipes.build_optimizer, or L-BFGS."""
    name = cfg["optimizer"].lower()
    trained = [p for p in model.parameters() if p.requires_grad]
    if name != "lbfgs":
        return recipes.build_optimizer(trained, cfg)
    # lbfgs: full-batch quasi-Newton, for the UFM, whose optimum plain SGD approaches very slowly
    return torch.optim.LBFGS(trained, lr=cfg["lr"], max_iter=50, history_size=50, tolerance_grad=1e-12,
                             tolerance_change=1e-15, line_search_fn="strong_wolfe")


def lr_at(cfg, epoch):
    """Learning rate in (1-based) epoch: recipes.lr_at (step decays at the milestones by default;
    a cosine schedule and a linear warm-up where cfg names them)."""
    return recipes.lr_at(cfg, epoch)


def start_epoch(opt, cfg, epoch):
    """Set the (1-based) epoch's learning rate on every parameter group of `opt`; return the epoch's
    warm weight, the factor of the regularisation (warm_factor in the first warm_epochs, else 1).
    Shared by train_run's loop and the batched one, so their schedules cannot drift apart."""
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, epoch)
    return cfg["warm_factor"] if epoch <= cfg["warm_epochs"] else 1.0


def epoch_order(N, batch_size, gen):
    """An epoch's order of the N samples, drawn from the CPU generator `gen`, without a final batch of
    one sample (batch norm cannot normalise it): the last sample is dropped for that epoch."""
    perm = torch.randperm(N, generator=gen)
    return perm[:-1] if N % batch_size == 1 and N > 1 else perm


def restore_history(run_dir, ckpt, gen):
    """Resume a run's data order and CSV from its checkpoint: `gen` takes the checkpoint's state and
    summary.csv is rewritten with the checkpoint's rows, no more, no less (a kill after a CSV row and
    before its checkpoint left one row too many). Returns (history, the checkpoint's epoch)."""
    gen.set_state(ckpt["gen"])
    data_parallel.rank0_only(result_files.atomic_write_csv, os.path.join(run_dir, "summary.csv"), ckpt["history"])
    return ckpt["history"], ckpt["epoch"]


def record_evaluated_epoch(run_dir, cfg, history, epoch, means, metrics, seconds_per_epoch, extra=None):
    """Append the CSV row of an evaluated epoch (the training terms' means, the evaluation's metrics,
    seconds_per_epoch, then `extra` columns) to `history`, log it as one line when stderr is not a
    terminal (a cluster job or nohup: instead of the progress bar) and rewrite summary.csv; the CSV
    is written before the epoch's checkpoint, whose resume rewrites it. Returns the row."""
    row = {"epoch": epoch, "lr": lr_at(cfg, epoch), **means, **metrics, "seconds_per_epoch": seconds_per_epoch,
           **(extra or {})}
    history.append(row)
    if not data_parallel.is_rank0():   # under torchrun rank 0 alone logs and writes
        return row
    if not sys.stderr.isatty():
        print(epoch_log_line(cfg, row, list(means)), file=sys.stderr, flush=True)
    result_files.atomic_write_csv(os.path.join(run_dir, "summary.csv"), history)
    return row


def evaluate(model, data, x_train, cfg, device):
    """Train/test accuracy (test also per class), every NC metric of the current model on the training
    and the test set, per class-size group, and the modern set (nc_stream.evaluation_metrics: eval mode,
    no gradients, features streamed from the model into the class statistics); with lam_h, lam_w > 0,
    `z_theory_distance` of Z to the convex program's optimum (figure_theory.z_theory_distance). Under torchrun each
    rank streams its shard of both sets and nc_stream sums their statistics: every rank gets whole-set metrics."""
    data_parallel.average_buffers(model)
    W = model.classifier.weight.detach()
    b = model.classifier.bias.detach() if model.classifier.bias is not None else None
    shard = data_parallel.shard
    test = None if is_ufm(cfg["network"]) else (shard(data.x_test).to(device), shard(data.y_test).to(device))
    row, stats = nc_stream.evaluation_metrics(model, W, b, (shard(x_train), shard(data.y_train).to(device)), test,
                                              data.sizes, batch_size=max(cfg["batch_size"], 1024))
    Z = W.double().cpu().numpy() @ stats["means"].T       # column k is W times the mean feature of class k
    if cfg["lam_h"] > 0 and cfg["lam_w"] > 0:   # a run of the regularised UFM objective: the convex program's Z
        lam = 2 * math.sqrt(cfg["lam_h"] * cfg["lam_w"])
        row["z_theory_distance"] = figure_theory.z_theory_distance(Z, data.sizes, lam, cfg["lam_b"])
    return row, Z, (b.double().cpu().numpy() if b is not None else np.zeros(data.num_classes))


def run_dir_of(cfg, data, models_dir):
    """models/<name>_<hash of the configuration and the data subset>."""
    keyed = {k: v for k, v in cfg.items() if k not in ("name",)}
    keyed["data"] = data.key
    return os.path.join(models_dir, f"{cfg['name']}_{utils.config_key(keyed)}")


def probe_seconds_per_epoch(cfg, data, device, objective=None):
    """Training seconds per epoch of `cfg` (evaluation excluded), measured by training it for 3
    epochs, without milestones or warm phase, in a throw-away folder: --dry_run's estimate. The
    first epoch is not counted: it pays one-time costs (the optimizer's first step imports
    torch._dynamo, over a second)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = train_run(dict(cfg, epochs=3, eval_epochs=[1, 3], lr_milestones=[], warm_epochs=0), data, device, tmp,
                        objective=objective)
        return result_files.read_csv(os.path.join(res["run_dir"], "summary.csv"))[-1]["seconds_per_epoch"]


def save_checkpoint(path, model, gen, history, epoch, converged=False, optimizer=None):
    """Write a run's resume state atomically (load_checkpoint reads it): weights, the data-order
    generator, torch's RNG, the CSV rows so far, the epoch, and the optimizer state when given; rank 0 alone."""
    if not data_parallel.is_rank0():
        return
    state = {"model": model.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "history": history, "epoch": epoch, "converged": converged}
    if optimizer is not None:
        state["optimizer"] = optimizer
    result_files.atomic_torch_save(state, path)


def load_checkpoint(path):
    """The resume state of a run; weights_only: loading it runs no code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}); move it away to start that run "
                        "over") from None


def epoch_log_line(cfg, row, terms):
    """One log line of an evaluated epoch: the loss terms, the accuracies and nc1."""
    keys = terms + [k for k in ("train_acc", "test_acc", "nc1") if k in row]
    return f"{cfg['name']} epoch {row['epoch']}/{cfg['epochs']}: " + " ".join(
        f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys)


def _minibatch_epoch(model, opt, x_train, y_train, cfg, epoch, gen, objective, warm_weight, amp, N, device):
    """One epoch of mini-batches in the order drawn from `gen`; returns the sample-weighted means
    of the objective's terms. Under torchrun each rank computes the loss of its part of every batch, scaled by
    the part's share, and the gradients are summed over ranks (data_parallel): one step of the whole batch. A
    custom objective gets the whole batch and takes its part itself (make_mixup_objective)."""
    bs = min(cfg["batch_size"], N)
    perm = epoch_order(N, bs, gen).to(device)
    sums = 0
    for start_i in range(0, len(perm), bs):
        idx = perm[start_i:start_i + bs]
        xb, yb = x_train[idx], y_train[idx]
        part, share = data_parallel.batch_part(len(idx))

        def closure():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                if objective is None:
                    loss, terms = regularized_objective(model, xb[part], yb[part], cfg, N, warm_weight)
                else:
                    loss, terms = objective(model, xb, yb, epoch, gen)
            (loss * share).backward()
            last["terms"] = terms  # in a dict, not on the closure: no reference cycle keeps the graph alive
            return data_parallel.sum_gradients(model.parameters(), loss * share)

        last = {}
        opt.step(closure)
        names = list(last["terms"])
        sums = sums + torch.stack([v.detach().float() for v in last["terms"].values()]) * (share * len(idx))
    return dict(zip(names, (data_parallel.all_sum(sums) / len(perm)).tolist()))


def train_run(cfg, data, device, models_dir="models", objective=None, on_eval=None):
    """Train one configuration (or reuse / resume it) and return its final results.

    The run folder holds config.json (the configuration, plus `record`: utils.run_record),
    summary.csv (one row per evaluated epoch; seconds_per_epoch is the mean training time of the
    epochs since the previous row, evaluation excluded), checkpoint.pt
    while training (written atomically at every evaluated epoch; a killed run resumes from it),
    and, when finished, model.pt and final.json. A finished run is reused, not retrained; a run is
    trained under its lock file (a second task waits, then reuses it), the UFM on one thread.
    `objective(model, xb, yb, epoch, gen) -> (loss, terms)` replaces the regularised CE of
    theory.md section 2 (terms: dict of scalar tensors, averaged per epoch into the CSV);
    `on_eval(model, epoch, run_dir) -> dict` adds columns to the CSV row of an evaluated epoch (on every rank).
    Under torchrun it trains data-parallel (_minibatch_epoch, evaluate); rank 0 alone holds the lock, reads and
    writes the run's files, the other ranks wait for it at barriers and get its results."""
    cfg = {**TRAIN_DEFAULTS, **cfg}
    cfg["eval_epochs"] = sorted(set(cfg["eval_epochs"] or default_eval_epochs(cfg["epochs"])))
    check_train_config(cfg)
    cfg["eval_epochs"] = sorted(set(cfg["eval_epochs"]) | {cfg["epochs"]})  # the last epoch is always evaluated
    device = check_data_parallel(cfg, data, device, objective)
    run_dir = run_dir_of(cfg, data, models_dir)
    final_path = os.path.join(run_dir, "final.json")
    reuse = data_parallel.from_rank0(lambda: reuse_finished_run(final_path, cfg, data)
                                     if os.path.exists(final_path) else None)
    if reuse is not None:
        return reuse
    data_parallel.from_rank0(lambda: result_files.ensure_writable_dir(run_dir, "--models_dir"))
    with data_parallel.rank0_holds(lambda: run_locks.run_lock(os.path.join(run_dir, "lock"), f"the run {run_dir}")):
        reuse = data_parallel.from_rank0(lambda: reuse_finished_run(final_path, cfg, data)
                                         if os.path.exists(final_path) else None)
        if reuse is not None:  # finished by the process this one waited for
            return reuse
        data_parallel.rank0_only(result_files.remove_leftovers, run_dir)  # temporary files of writes killed midway
        threads = torch.get_num_threads()
        if is_ufm(cfg["network"]):  # one thread: the same Z whatever the machine's core count (2e-3 apart otherwise)
            torch.set_num_threads(1)
        try:
            return train_locked_run(cfg, data, device, run_dir, objective, on_eval)
        finally:
            torch.set_num_threads(threads)


def check_data_parallel(cfg, data, device, objective):
    """Under torchrun: join the process group and return this rank's device; refuse (one error line) what cannot
    train data-parallel: the UFM's full-batch L-BFGS and an objective that does not take its rank's part."""
    if not (data_parallel.launched() or data_parallel.active()):
        return device
    if ufm_training.is_ufm_lbfgs(cfg, len(data.y_train), objective):
        data_parallel.refuse("--network UFM", "its full-batch L-BFGS trains on one process")
    if objective is not None and not getattr(objective, "data_parallel", False):
        data_parallel.refuse("this objective", "it does not take its rank's part of a batch (make_mixup_objective's "
                             "does)")
    return data_parallel.init_from_env(device)


def reuse_finished_run(final_path, cfg, data):
    """A finished run's final.json, checked against the configuration it claims; a checkpoint or
    temporary file a kill left beside it is removed."""
    run_dir = os.path.dirname(final_path)
    final = result_files.read_json(final_path)
    K = data.num_classes
    if not (isinstance(final, dict) and final.get("config") == result_files.to_jsonable(cfg)
            and final.get("data") == data.key
            and final.get("sizes") == data.sizes and np.shape(final.get("Z")) == (K, K)
            and np.shape(final.get("b")) == (K,) and isinstance(final.get("final"), dict)):
        raise UserError(f"{final_path} does not match the configuration of its run (config, data, sizes, Z {K}x{K}); "
                        "move the run folder away to retrain it")
    result_files.remove_leftovers(run_dir, "", [os.path.join(run_dir, "checkpoint.pt")])
    return dict(final, run_dir=run_dir, reused=True)


def train_locked_run(cfg, data, device, run_dir, objective, on_eval):
    """train_run's training part for a caller holding the run's lock (train_run, batched_training):
    resume or start, train, finish."""
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ckpt = data_parallel.from_rank0(lambda: load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None)
    data_parallel.rank0_only(result_files.atomic_write_json, os.path.join(run_dir, "config.json"),
                             dict(cfg, data=data.key, sizes=data.sizes, record=utils.run_record(device)))

    N = len(data.y_train)
    model, x_train, y_train, ufm_lbfgs, opt, gen = _new_run_model(cfg, data, device, objective, N)
    history, start, converged = _resume_run(ckpt, model, opt, gen, run_dir)
    data_parallel.sync_model(model)
    if ufm_lbfgs:  # L-BFGS on balanced variables, tested every UFM_CHUNK iterations, a short history
        balanced = ufm_training.BalancedUFM(model, cfg)
        opt = make_optimizer(balanced, cfg)
        opt.param_groups[0].update(max_iter=ufm_training.UFM_CHUNK, history_size=ufm_training.UFM_HISTORY)

    finished = start == cfg["epochs"] or converged  # killed after the last checkpoint, before final.json
    amp = cfg["amp"] and device.type == "cuda"
    bar = tqdm(range(start + 1, (start if finished else cfg["epochs"]) + 1), desc=cfg["name"], initial=start,
               total=cfg["epochs"], disable=not sys.stderr.isatty() or not data_parallel.is_rank0(), dynamic_ncols=True)
    train_seconds, timed_epochs = 0.0, 0  # since the last evaluated epoch: seconds_per_epoch of its CSV row
    for epoch in bar:
        t_epoch = time.perf_counter()
        warm_weight = start_epoch(opt, cfg, epoch)
        model.train()
        if ufm_lbfgs:
            means, converged = ufm_training.ufm_lbfgs_epoch(balanced, opt, y_train, cfg, warm_weight)
            balanced.write_back(model)
        else:
            means = _minibatch_epoch(model, opt, x_train, y_train, cfg, epoch, gen, objective, warm_weight, amp, N,
                                     device)
        _check_finite(epoch, means)
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()})  # every loss term and the accuracy
        train_seconds, timed_epochs = train_seconds + time.perf_counter() - t_epoch, timed_epochs + 1
        if epoch in cfg["eval_epochs"] or converged:
            metrics, Z, b = evaluate(model, data, x_train, cfg, device)
            record_evaluated_epoch(run_dir, cfg, history, epoch, means, metrics, train_seconds / timed_epochs,
                                   None if on_eval is None else on_eval(model, epoch, run_dir))
            train_seconds, timed_epochs = 0.0, 0
            # the UFM's L-BFGS history (up to 270 MB) is not kept; it rebuilds in a few steps
            save_checkpoint(ckpt_path, model, gen, history, epoch, converged, None if ufm_lbfgs else opt.state_dict())
        if converged:
            break
        _stop_if_signalled(ckpt_path, model, gen, history, epoch, converged, None if ufm_lbfgs else opt, cfg, run_dir)
    bar.close()

    if finished:
        _, Z, b = evaluate(model, data, x_train, cfg, device)
    return data_parallel.from_rank0(lambda: finish_run(run_dir, cfg, data, model, history, Z, b))


def _new_run_model(cfg, data, device, objective, N):
    """A run's seeded model on `device`, its training inputs and labels (the UFM's inputs are sample indices),
    whether it trains by the UFM's L-BFGS (then in float64), its optimizer and its batch-order generator."""
    utils.set_seed(cfg["seed"])
    model = build_model(cfg["network"], data.num_classes, data.in_channels, num_samples=N, width=cfg["width"],
                        feat_dim=cfg["feat_dim"], image_size=data.x_train.shape[-1], depth=cfg.get("depth")).to(device)
    model = data_parallel.sync_batchnorm(model, device)
    if cfg.get("fixed_etf"):  # (mixup) a frozen simplex-ETF classifier, set before the optimizer sees it
        fixed_etf_classifier_(model.classifier, seed=cfg["seed"])
    ufm = is_ufm(cfg["network"])
    x_train = torch.arange(N, device=device) if ufm else data.x_train.to(device)
    y_train = data.y_train.to(device)
    ufm_lbfgs = ufm_training.is_ufm_lbfgs(cfg, N, objective)
    if ufm_lbfgs:  # float64 from the same random start: see UFM_REL_GRAD_TOL
        model.double()
    opt = None if ufm_lbfgs else make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg["seed"])
    return model, x_train, y_train, ufm_lbfgs, opt, gen


def _resume_run(ckpt, model, opt, gen, run_dir):
    """(history, start epoch, converged) of a run: restored with its model, optimizer and random state from the
    checkpoint `ckpt`, or a fresh start when there is none."""
    history, start, converged = [], 0, False
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:  # the UFM's checkpoint has none: L-BFGS restarts its history on resume
            opt.load_state_dict(ckpt["optimizer"])
        converged = ckpt.get("converged", False)
        torch.set_rng_state(ckpt["torch_rng"])
        history, start = restore_history(run_dir, ckpt, gen)
        data_parallel.say(f"resuming {run_dir} from epoch {start}")
    return history, start, converged


def _check_finite(epoch, means):
    """Stop a diverged run with one error line naming the non-finite terms of the epoch's means."""
    bad = [k for k, v in means.items() if not math.isfinite(v)]
    if bad:
        raise UserError(f"training diverged at epoch {epoch}: non-finite {', '.join(bad)} "
                        f"({', '.join(f'{k}={v:.4g}' for k, v in means.items())}); lower --lr or the "
                        "regularisation")


def _stop_if_signalled(ckpt_path, model, gen, history, epoch, converged, opt, cfg, run_dir):
    """On a stop signal (a job's time limit or preemption ahead) before the last epoch: checkpoint the epoch (unless
    evaluated, so checkpointed already; `opt` None keeps no optimizer state), say so, and raise Stopped."""
    if data_parallel.any_rank(stop_signals.stop_requested()) and epoch < cfg["epochs"]:
        if epoch not in cfg["eval_epochs"]:  # else checkpointed just above
            save_checkpoint(ckpt_path, model, gen, history, epoch, converged,
                            None if opt is None else opt.state_dict())
        why = stop_signals.stop_requested() or "a signal to another rank"
        data_parallel.say(f"stopped: {why} at epoch {epoch} of {cfg['epochs']}, checkpointed in {run_dir}; the same "
                          "command resumes it")
        raise stop_signals.Stopped(stop_signals.STOPPED_STATUS)


def finish_run(run_dir, cfg, data, model, history, Z, b):
    """Write a finished run's model.pt and final.json, drop its checkpoint; return its results."""
    final_path = os.path.join(run_dir, "final.json")
    result_files.atomic_torch_save(model.state_dict(), os.path.join(run_dir, "model.pt"))
    final = {"config": cfg, "data": data.key, "sizes": data.sizes, "final": history[-1], "Z": Z, "b": b}
    result_files.atomic_write_json(final_path, final)
    result_files.remove_leftovers(run_dir, "", [os.path.join(run_dir, "checkpoint.pt")])
    return dict(result_files.read_json(final_path), run_dir=run_dir, reused=False)
