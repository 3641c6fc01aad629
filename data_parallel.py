"""Data-parallel training mechanics under torchrun: the process group from torchrun's environment, each rank's
part of a batch and shard of a set, gradients summed over ranks, and rank 0 alone writing and printing the run's
lines (the others wait).

Without torchrun (no WORLD_SIZE above 1 in the environment, no process group) every function is the
single-process identity: one rank, the whole batch, nothing reduced. docs/nc_measurement.md, "Data-parallel runs"."""
import atexit
import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist

from utils import UserError

TIMEOUT = datetime.timedelta(hours=2)   # a collective (a rank waiting for rank 0's run lock) gives up after this


def launched():
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1 in its environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def active():
    """Whether a process group of more than one rank is initialised (by init_from_env or by the caller)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's rank (0 in one process)."""
    return dist.get_rank() if active() else 0


def world():
    """The number of ranks (1 in one process)."""
    return dist.get_world_size() if active() else 1


def is_rank0():
    """Whether this process writes the files (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device):
    """Join torchrun's process group (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) once, gloo on the CPU and
    NCCL on CUDA with one GPU per LOCAL_RANK; returns the device this rank trains on. A group the caller initialised
    is used as it is. At exit every rank passes a barrier before destroy_process_group (torch 2.4.1's gloo can hang
    in destroy without it)."""
    if not launched() and not active():
        return device
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device.type} under torchrun: allowed are cpu (gloo) and cuda (NCCL)")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        except ValueError as e:   # WORLD_SIZE set without the rest of torchrun's environment
            raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} without torchrun's environment ({e}); start the "
                            "script with torchrun, or unset WORLD_SIZE") from None
        atexit.register(_leave)
    return device


def _leave():
    """Barrier, then destroy the group (registered at exit by init_from_env)."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def refuse(option, why):
    """Under torchrun: one error line naming `option`, which cannot train data-parallel, and why (before any work)."""
    if launched() or active():
        raise UserError(f"{option} under torchrun: {why}; run it as one process (python, not torchrun)")


def batch_part(n):
    """(part, share): this rank's contiguous part of a batch of n samples (a slice; the ranks' sizes differ by at
    most one) and its share of the batch, by which its mean loss is scaled before the gradients are summed. A rank
    whose part would be empty (n < world) takes the whole batch with share 0: a finite loss, no gradient."""
    r, w = rank(), world()
    part = slice(r * n // w, (r + 1) * n // w)
    return (part, (part.stop - part.start) / n) if part.stop > part.start else (slice(0, n), 0.0)


def shard(t):
    """This rank's shard of a set (every world-th sample from its rank on); the set itself in one process."""
    return t if not active() else t[rank()::world()]


def sum_gradients(params, loss):
    """Sum the gradients of `params` (None counts as zero) and the loss over all ranks, in one flat all_reduce:
    with each rank's loss scaled by its part's share of the batch, the sum is the whole batch's step.
    Returns the summed loss (a tensor); a no-op in one process."""
    if not active():
        return loss
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().reshape(1).to(params[0].grad.dtype)])
    dist.all_reduce(flat)
    start = 0
    for p in params:
        p.grad.copy_(flat[start:start + p.numel()].view_as(p.grad))
        start += p.numel()
    return flat[-1].to(loss.dtype)


def all_sum(t):
    """A tensor summed over all ranks (a new tensor; the tensor itself in one process)."""
    if not active():
        return t
    nccl_cpu = dist.get_backend() == "nccl" and t.device.type != "cuda"
    out = t.to(torch.device("cuda", torch.cuda.current_device())) if nccl_cpu else t.clone()
    dist.all_reduce(out)
    return out.to(t.device)


def any_rank(flag):
    """Whether `flag` holds on any rank (so every rank takes the same branch)."""
    return bool(all_sum(torch.tensor([float(bool(flag))])).item() > 0)


def sync_model(model):
    """Every rank's parameters and buffers set to rank 0's (at the start and after a resume)."""
    if active():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)


def average_buffers(model):
    """Floating buffers (BatchNorm's running statistics, per rank without SyncBatchNorm) averaged over ranks, so
    every rank evaluates and rank 0 saves the same model."""
    if active():
        for t in model.buffers():
            if t.is_floating_point():
                dist.all_reduce(t.data)
                t.data /= world()


def sync_batchnorm(model, device):
    """On CUDA under torchrun, BatchNorm layers become SyncBatchNorm (batch statistics of the whole batch);
    on the CPU SyncBatchNorm cannot run, and each rank normalises by its own part's statistics."""
    if active() and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def from_rank0(compute):
    """compute() on rank 0 alone, its value (any picklable object) or its UserError given to every rank (another
    exception ends rank 0, and torchrun then stops the others)."""
    if not active():
        return compute()
    box = [None]
    if is_rank0():
        try:
            box[0] = ("value", compute())
        except UserError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, 0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


@contextlib.contextmanager
def rank0_holds(make_context):
    """Enter make_context() (a run lock) on rank 0 alone while the others wait at a barrier; every rank leaves
    through a second barrier before rank 0 releases it."""
    with make_context() if is_rank0() else contextlib.nullcontext():
        if active():
            dist.barrier()
        yield
        if active():
            dist.barrier()


def say(line):
    """Print one line on stderr from rank 0 alone (every rank runs the same command and would print it too)."""
    if is_rank0():
        print(line, file=sys.stderr, flush=True)


def rank0_only(write, *args, **kwargs):
    """write(*args, **kwargs) on rank 0 alone (a file written once); None elsewhere."""
    return write(*args, **kwargs) if is_rank0() else None
