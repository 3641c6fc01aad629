"""SIGTERM (what a scheduler sends) ends a figure script as Ctrl-C does: one line, exit 143, its locks
released, its last checkpoint kept; the same command then resumes and ends with the numbers of an
uninterrupted run. Tested on a real process."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# block --quick evaluates (and checkpoints) at epochs 1-5, every 10th and the last: a kill mid-way leaves one
ARGV = ["--quick", "--structure", "1", "--epoch", "400", "--device", "cpu"]


def command(folder):
    return [sys.executable, os.path.join(ROOT, "block_main.py")] + ARGV + [
        "--models_dir", str(folder / "models"), "--plot_dir", str(folder / "plots"), "--data_dir", str(folder / "data")]


def run(folder):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command(folder), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def checkpoint_epoch(folder):
    """Epoch of the run's checkpoint, 0 while there is none."""
    paths = glob.glob(str(folder / "models" / "block_*" / "checkpoint.pt"))
    try:
        return torch.load(paths[0], weights_only=True)["epoch"] if paths else 0
    except (OSError, RuntimeError, EOFError):  # being renamed into place
        return 0


def figure(stdout):
    with open(next(ln for ln in stdout.splitlines() if ln.endswith(".json"))) as f:
        return json.load(f)


def test_sigterm_releases_locks_keeps_checkpoint_and_resumes(tmp_path):
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    end = time.time() + 300
    while checkpoint_epoch(killed) < 10 and proc.poll() is None and time.time() < end:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped_at = checkpoint_epoch(killed)
    assert proc.returncode == 143
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("terminated (SIGTERM); the run resumes")
    assert sum("SIGTERM" in ln for ln in err.splitlines()) == 1 and out == ""
    names = [os.path.basename(p) for p in glob.glob(str(killed / "models" / "**" / "*"), recursive=True)]
    assert "checkpoint.pt" in names and not [n for n in names if n == "lock" or ".lock" in n]
    assert 10 <= stopped_at < 400 and not glob.glob(str(killed / "models" / "block_*" / "final.json"))

    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from epoch {stopped_at}" in resumed.stderr
    reference = run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    got, ref = figure(resumed.stdout), figure(reference.stdout)
    assert got["points"][0]["Z"] == ref["points"][0]["Z"]
    untimed = [[{k: v for k, v in row.items() if k != "seconds_per_epoch"} for row in r["history"]] for r in (got, ref)]
    assert untimed[0] == untimed[1] and len(untimed[0]) > 10


def test_sigterm_during_a_batched_sweep_releases_every_lock(tmp_path):
    """minority_l --quick trains its points as one batched model, each run under its lock: SIGTERM while
    they train ends with the one line and exit 143, and leaves no lock behind."""
    argv = [sys.executable, os.path.join(ROOT, "minority_l_main.py"), "--quick", "--epoch", "5000", "--device", "cpu",
            "--models_dir", str(tmp_path / "models"), "--plot_dir", str(tmp_path / "plots"),
            "--data_dir", str(tmp_path / "data")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    end = time.time() + 300
    while len(glob.glob(str(tmp_path / "models" / "minority_l_*" / "lock"))) < 10 and time.time() < end:
        assert proc.poll() is None, "the sweep ended before it could be terminated"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err
    assert "[batched] training 10 points together" in err
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM)") and out == ""
    names = [os.path.basename(p) for p in glob.glob(str(tmp_path / "models" / "**" / "*"), recursive=True)]
    assert names and not [n for n in names if n == "lock" or ".lock" in n]
