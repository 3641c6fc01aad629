"""Tests import the top-level modules from the repository root and run on the CPU. Shared here: ROOT,
dirs() (a script's output folders under a test's tmp_path), the tiny training configuration and
its data, kill_at() (a run killed at an evaluated epoch, to test resume) and spawn_ranks() (real
torch.distributed processes under a watchdog)."""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")

import datasets  # noqa: E402  (after ROOT is on the path)

# a run of a few seconds: 3 epochs of a width-16 MLP on 30 4x4 images (tiny_data)
TINY_CFG = dict(name="t", network="mlp", width=16, epochs=3, lr=0.05, batch_size=16, lam_h=1e-5, lam_w=5e-4,
                lam_b=1e-2, eval_epochs=[1, 2, 3])


def dirs(tmp):
    """A script's output folders under `tmp` (a test's tmp_path) and the CPU, as command-line arguments."""
    return ["--models_dir", str(tmp / "models"), "--plot_dir", str(tmp / "plots"), "--data_dir", str(tmp / "data"),
            "--device", "cpu"]


def tiny_data():
    """The data of TINY_CFG: synthetic 4x4 single-channel images, classes of 12, 12 and 6."""
    return datasets.get_data("synthetic", [12, 12, 6], seed=0, synthetic={"image_size": 4, "channels": 1})


def kill_at(epoch):
    """train_run's on_eval that kills the run (KeyboardInterrupt, as Ctrl-C) at the evaluation of `epoch`,
    after the checkpoint of the evaluated epoch before it: the resume tests' kill."""
    def on_eval(model, evaluated, run_dir):
        if evaluated == epoch:
            raise KeyboardInterrupt
        return {}
    return on_eval


def spawn_ranks(worker, world, out_dir, watchdog_s):
    """Run worker(rank, world, out_dir) in `world` spawned processes; kill them and fail the test when they are
    still running after watchdog_s (a hang fails one test, never the whole suite)."""
    import pytest
    import torch.multiprocessing as mp
    ranks = mp.start_processes(worker, args=(world, out_dir), nprocs=world, join=False, daemon=True,
                               start_method="spawn")
    deadline = time.monotonic() + watchdog_s
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail(f"{world} {worker.__name__} processes still running after {watchdog_s} s: killed")


def pytest_terminal_summary(terminalreporter):
    """One line saying whether tests/test_slurm.py's SLURM tests ran or skipped, and why (CI's log shows it)."""
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, [])
               if "test_slurm.py" in getattr(r, "nodeid", "") and (r.when == "call" or r.skipped)]
    if reports:
        skipped = [r for r in reports if r.skipped]
        why = f": {skipped[0].longrepr[-1]}" if skipped and isinstance(skipped[0].longrepr, tuple) else ""
        terminalreporter.write_line(f"tests/test_slurm.py: {len(reports) - len(skipped)} ran, "
                                    f"{len(skipped)} skipped{why}")
