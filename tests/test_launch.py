"""The submitit launcher (--launch local, --wait), --list_points, the point lock, the SLURM
parameters, and the logs of a run whose stderr is a file (one line per evaluated epoch, one device
line). The local jobs are tiny quick sweeps run through submitit's LocalExecutor, as on a cluster."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import submitit
import torch

import job_launch
import limit_main
import minority_l_main
import result_files
import utils
from conftest import ROOT, dirs

N_AS = [20, 40, 60, 80]
KILLED = 2  # the run killed half-way (n_A = 60)


def sweep_argv(tmp):
    """A 4-point sweep of limit_main on synthetic data (tiny MLP runs of 60 epochs, evaluated and
    checkpointed at epochs 1-5, 10, 20, ...; --quick would evaluate only the last)."""
    return (["--dataset_t", "synthetic", "--network", "MLP_linear", "--width", "32", "--nalist"]
            + [str(n) for n in N_AS] + ["--epoch", "60"] + dirs(tmp))


def run_dir_of_n_A(models_dir, n_A):
    """The run folder whose config.json says n_A (None until it exists)."""
    for cfg_path in glob.glob(os.path.join(models_dir, "limit_*", "config.json")):
        try:
            if result_files.read_json(cfg_path)["sizes"][0] == n_A:
                return os.path.dirname(cfg_path)
        except (OSError, ValueError):  # being written
            pass
    return None


def job_process(models_dir, point):
    """pid of the training process of `--point point` with this models_dir (the job's command), or None."""
    for cmd_path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmd_path, "rb") as f:
                cmd = f.read().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:
            continue
        if "limit_main.py" in " ".join(cmd) and models_dir in cmd and cmd[-2:] == ["--point", str(point)]:
            return int(cmd_path.split("/")[2])
    return None


def wait_for(condition, what, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_launch_local_kill_resume_and_assemble(tmp_path, capsys):
    argv = sweep_argv(tmp_path)
    models = str(tmp_path / "models")
    # Launch the 4 points as local jobs and return at once.
    with pytest.raises(SystemExit) as done:
        limit_main.main(argv + ["--launch", "local"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "submitted 4 local jobs" in out and "--assemble" in out and "--launch" not in out.split("\n  ")[-1]
    assert len([ln for ln in out.splitlines() if ln.startswith("run ")]) == 4

    # Kill run KILLED's process once it has written a checkpoint: stop it, check it is half-way, kill it.
    run_dir = wait_for(lambda: (lambda d: d if d and os.path.exists(os.path.join(d, "checkpoint.pt")) else None)(
        run_dir_of_n_A(models, N_AS[KILLED])), "the first checkpoint")
    pid = wait_for(lambda: job_process(models, KILLED), "the job's process")
    os.kill(pid, signal.SIGSTOP)
    assert not os.path.exists(os.path.join(run_dir, "final.json")), "the run finished before it could be killed"
    stopped_at = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["epoch"]
    os.kill(pid, signal.SIGKILL)
    records = os.path.join(models, "points")
    wait_for(lambda: len(glob.glob(os.path.join(records, "*.json"))) == 3, "the other three jobs")
    assert not os.path.exists(os.path.join(run_dir, "final.json"))

    # --list_points: the killed run is the one not finished.
    with pytest.raises(SystemExit):
        limit_main.main(argv + ["--list_points"])
    listed = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in listed] == [0, 1, 2, 3]
    assert [r["finished"] for r in listed] == [i != KILLED for i in range(4)]
    assert [r["params"]["n_A"] for r in listed] == N_AS

    # Launch again and wait: only the killed run is submitted; it resumes from its checkpoint.
    assert limit_main.main(argv + ["--launch", "local", "--wait"]) == 0
    out, err = capsys.readouterr()
    assert "submitted 1 local jobs" in out and f"run {KILLED} (n_A={N_AS[KILLED]}" in out
    log = out.split(", log ")[1].split("\n")[0]
    with open(log) as f:
        job_log = f.read()
    assert 1 <= stopped_at < 60 and f"from epoch {stopped_at}" in job_log
    # the job's stderr is a file: one log line per evaluated epoch after the resume, one device line
    logged = [int(ln.split()[2].split("/")[0]) for ln in job_log.splitlines()
              if ln.startswith("limit_mlp_linear epoch ")]
    summary = result_files.read_csv(os.path.join(run_dir, "summary.csv"))
    assert logged == [int(r["epoch"]) for r in summary if r["epoch"] > stopped_at]
    assert job_log.count("device: cpu (") == 1   # one device line (its thread count follows OMP_NUM_THREADS)
    png, js = [ln for ln in out.splitlines() if ln.endswith((".png", ".json"))]
    result = result_files.read_json(js)
    assert [p["params"]["n_A"] for p in result["points"]] == N_AS and result["missing"] == []

    # The resumed run ends with the numbers of an uninterrupted run of the same point.
    ref_dir = tmp_path / "ref"
    with pytest.raises(SystemExit):  # a job writes no figure: assemble its run alone
        limit_main.main(sweep_argv(ref_dir) + ["--point", str(KILLED)])
    assert limit_main.main(sweep_argv(ref_dir) + ["--assemble", "--partial"]) == 0
    capsys.readouterr()
    ref = [p for p in result_files.read_json(glob.glob(str(ref_dir / "plots" / "*.json"))[0])["points"]][0]
    got = result["points"][KILLED]
    assert ref["params"] == got["params"]
    np.testing.assert_array_equal(np.array(got["Z"]), np.array(ref["Z"]))
    for key in ("nc1", "train_acc", "test_acc", "loss"):
        assert got["nc"][key] == ref["nc"][key], key


def test_slurm_parameters_reach_the_sbatch_script(tmp_path):
    args = limit_main.parse_args(["--launch", "slurm", "--slurm_partition", "gpu", "--slurm_time", "90",
                                  "--slurm_gpus_per_task", "1", "--slurm_array_parallelism", "2",
                                  "--slurm_extra", "account=abc", "mem=32G"])
    params = job_launch.slurm_parameters(args)
    text = submitit.slurm.slurm._make_sbatch_string(command="python x.py", folder=str(tmp_path), map_count=4,
                                                    **params)
    for line in ("--partition=gpu", "--time=90", "--gpus-per-task=1", "--array=0-3%2", "--account=abc", "--mem=32G"):
        assert f"#SBATCH {line}" in text, line


def test_job_command_drops_only_the_launcher_options():
    argv = ["--quick", "--launch", "slurm", "--nalist", "20", "40", "--wait", "--slurm_extra", "a=1", "b=2",
            "--slurm_time=5", "--epoch", "3"]
    assert job_launch.job_argv(argv) == ["--quick", "--nalist", "20", "40", "--epoch", "3"]


@pytest.mark.parametrize("bad, word", [
    (["--launch", "local", "--point", "0"], "--point"), (["--launch", "local", "--assemble"], "--assemble"),
    (["--wait"], "--wait"), (["--launch", "pbs"], "--launch"), (["--slurm_extra", "account"], "--slurm_extra"),
    (["--slurm_time", "0"], "--slurm_time"), (["--seeds", "1", "1"], "--seeds"),
    (["--list_points", "--point", "1"], "--point"), (["--launch", "slurm"], "--launch slurm")])
def test_bad_launch_input_is_one_clear_line(bad, word, tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: -1))  # no srun, even where SLURM is
    with pytest.raises(utils.UserError, match=word):
        minority_l_main.main(["--network", "UFM", "--reg_z_l", "0.01"] + dirs(tmp_path) + bad)
    assert not os.path.exists(tmp_path / "models" / "points")


@pytest.mark.slow
def test_stderr_to_a_file_logs_one_line_per_evaluated_epoch(tmp_path):
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "minority_l_main.py", "--dataset_t", "synthetic", "--network", "MLP",
                        "--width", "16", "--na", "20", "--nb", "4", "--reg_z_l", "0.01", "--epoch", "5"]
                       + dirs(tmp_path), cwd=ROOT, stderr=f,
                       stdout=subprocess.DEVNULL, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = log.read_text().splitlines()
    epochs = [ln for ln in lines if ln.startswith("minority_l_mlp epoch ")]
    summary = result_files.read_csv(glob.glob(str(tmp_path / "models" / "minority_l_mlp_*" / "summary.csv"))[0])
    assert [int(ln.split()[2].split("/")[0]) for ln in epochs] == [int(r["epoch"]) for r in summary] == [1, 2, 3, 4, 5]
    assert all(f"nc1={r['nc1']:.4g}" in ln and "train_acc=" in ln and " ce=" in ln for ln, r in zip(epochs, summary))
    device = [i for i, ln in enumerate(lines) if ln.startswith("device: ")]  # once, before training
    assert len(device) == 1 and lines[device[0]].startswith("device: cpu (") and device[0] < lines.index(epochs[0])
