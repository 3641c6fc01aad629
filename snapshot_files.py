"""Mixup snapshot files: where a run keeps an epoch's snapshot, a run's snapshots listed, one read back."""
import os

import numpy as np

from utils import UserError


def load_snapshot(path):
    """A mixup snapshot .npz as a dict of arrays (no pickle)."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:
        raise UserError(f"snapshot {path} is unreadable ({type(e).__name__}); move it away (rerun to rewrite "
                        "it)") from None


def mixup_snapshot_path(run_dir, epoch, ext="npz"):
    """Where a run keeps the snapshot of an epoch (ext 'npz') and its geometry summary ('json')."""
    return os.path.join(run_dir, f"mixup_e{epoch:04d}.{ext}")


def mixup_snapshots(run_dir):
    """Sorted [(epoch, npz path)] of a run's snapshots."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run_dir: no such folder {run_dir}")
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("mixup_e") and n.endswith(".npz"))
    if not names:
        raise UserError(f"run_dir: {run_dir} holds no mixup_e*.npz snapshots")
    return [(int(n[7:-4]), os.path.join(run_dir, n)) for n in names]
