"""Bad input over every script and command: exit status 2, one line `error: ...` naming the
argument or file, no traceback, nothing trained. And what keeps results safe: atomic writes
(fsync, umask), run locks, the CSV/checkpoint order, leftover cleanup, records checked before reuse."""
import errno
import importlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import datasets
import point_records
import result_files
import run_locks
import snapshot_files
import sweep
import train_utils
import utils
from conftest import ROOT, TINY_CFG, kill_at, tiny_data
from utils import UserError

CPU = torch.device("cpu")
OPT = ["--cluster_s", "3", "3", "--sample_s", "5", "4", "--reg_z", "0.01"]

# (script module, argv, text the error line must contain: the argument or file it names)
CASES = [
    # figure scripts: fractions, zero/negative counts, negative seeds, non-finite numbers, choices, files
    ("minority_l_main", ["--quick", "--warm_frac", "5"], "--warm_frac"),
    ("minority_l_main", ["--quick", "--warm_frac", "nan"], "--warm_frac"),
    ("minority_l_main", ["--quick", "--epoch", "0"], "--epoch"),
    ("minority_l_main", ["--quick", "--epoch", "abc"], "--epoch"),
    ("minority_l_main", ["--quick", "--width", "0"], "--width"),
    ("minority_l_main", ["--quick", "--width", "-3"], "--width"),
    ("minority_l_main", ["--quick", "--seed", "-1"], "--seed"),
    ("minority_l_main", ["--quick", "--seeds", "0", "-1"], "--seeds"),
    ("minority_l_main", ["--quick", "--reg_z_l", "-1e-3"], "--reg_z_l"),
    ("minority_l_main", ["--quick", "--reg_z_l", "inf"], "--reg_z_l"),
    ("minority_l_main", ["--quick", "--ka", "10"], "--ka"),
    ("minority_l_main", ["--quick", "--na", "0"], "--na"),
    ("minority_l_main", ["--quick", "--dataset", "svhn"], "--dataset"),
    ("minority_l_main", ["--quick", "--network", "resnet50"], "resnet50"),
    ("minority_l_main", ["--quick", "--point", "99"], "--point"),
    ("minority_l_main", ["--quick", "--point", "0", "--assemble"], "--point"),
    ("minority_l_main", ["--quick", "--no_such_flag"], "--no_such_flag"),
    ("minority_l_main", ["--dataset", "cifar10", "--na", "6000"], "--na"),
    ("minority_n_main", ["--quick", "--warm_frac", "-0.1"], "--warm_frac"),
    ("minority_n_main", ["--quick", "--nb", "0"], "--nb"),
    ("minority_n_main", ["--quick", "--reg_l", "-1e-6"], "--reg_l"),
    ("minority_n_main", ["--quick", "--nalist", "-5"], "--nalist"),
    ("minority_n_main", ["--quick", "--device", "tpu"], "--device"),
    ("block_main", ["--quick", "--reg_h", "-1e-6"], "--reg_h"),
    ("block_main", ["--quick", "--reg_w", "-1E+2"], "--reg_w"),
    ("block_main", ["--quick", "--reg_h", "1e-6x"], "--reg_h"),
    ("block_main", ["--quick", "--reg_b", "-inf"], "--reg_b"),
    ("block_main", ["--quick", "--structure", "3"], "--structure"),
    ("block_main", ["--quick", "--epoch", "-2"], "--epoch"),
    ("limit_main", ["--quick", "--ratio", "0"], "--ratio"),
    ("limit_main", ["--quick", "--ratio", "inf"], "--ratio"),
    ("limit_main", ["--quick", "--nalist", "1"], "--nalist"),
    ("limit_main", ["--quick", "--lam_n", "nan"], "--lam_n"),
    ("limit_main", ["--quick", "--seed", "1.5"], "--seed"),
    # mixup: the schedule, zeros, the overlay's beta, sizes it does not have, classes, snapshots
    ("mixup_main", ["--quick", "--lr_gamma", "-1"], "--lr_gamma"),
    ("mixup_main", ["--quick", "--lr_gamma", "nan"], "--lr_gamma"),
    ("mixup_main", ["--quick", "--lr_milestones", "0"], "--lr_milestones"),
    ("mixup_main", ["--quick", "--lr_milestones", "999"], "--lr_milestones"),
    ("mixup_main", ["--quick", "--alpha", "inf"], "--alpha"),
    ("mixup_main", ["--quick", "--alpha", "-1e-3"], "--alpha"),
    ("mixup_main", ["--quick", "--train_per_class", "0"], "--train_per_class"),
    ("mixup_main", ["--quick", "--train_per_class", "1000"], "--train_per_class"),
    ("mixup_main", ["--quick", "--theory_beta", "0"], "--theory_beta"),
    ("mixup_main", ["--quick", "--theory_beta", "-1"], "--theory_beta"),
    ("mixup_main", ["--quick", "--seed", "-5"], "--seed"),
    ("mixup_main", ["--study", "--quick", "--seeds", "-3"], "--seeds"),
    ("mixup_main", ["--quick", "--epochs", "0"], "--epochs"),
    ("mixup_main", ["--quick", "--width", "0"], "--width"),
    ("mixup_main", ["--quick", "--batch_size", "0"], "--batch_size"),
    ("mixup_main", ["--quick", "--lr", "0"], "--lr"),
    ("mixup_main", ["--quick", "--momentum", "-1"], "--momentum"),
    ("mixup_main", ["--quick", "--smoothing", "1.5"], "--smoothing"),
    ("mixup_main", ["--quick", "--loss", "hinge"], "--loss"),
    ("mixup_main", ["--quick", "--optimizer", "lbfgs"], "--optimizer"),
    ("mixup_main", ["--quick", "--feature_mode", "both"], "--feature_mode"),
    ("mixup_main", ["--quick", "--model", "ufm"], "--model"),
    ("mixup_main", ["--quick", "--snapshot_size", "1"], "--snapshot_size"),
    ("mixup_main", ["--quick", "--snapshots", "0"], "--snapshots"),
    ("mixup_main", ["--quick", "--classes", "0", "1", "99"], "--classes"),
    ("mixup_main", ["--quick", "--classes", "0", "0", "1"], "--classes"),
    # the convex program: lambda range, one file name, sizes
    ("opt_main", OPT[:-1] + ["1e300"], "--reg_z"),
    ("opt_main", OPT[:-1] + ["-1e-3"], "--reg_z"),
    ("opt_main", OPT[:-1] + ["0", "0.01"], "--reg_z"),
    ("opt_main", OPT[:-1] + ["0", "--loss", "ldam"], "--reg_z 0"),
    ("opt_main", OPT + ["--loss", "focal"], "--loss"),
    ("opt_main", OPT + ["--loss", "class_balanced", "--cb_beta", "1"], "--cb_beta"),
    ("opt_main", OPT + ["--oversample", "2"], "--oversample"),
    ("opt_main", OPT + ["--oversample", "0.5", "1", "1"], "--oversample"),
    ("opt_main", OPT + ["--profile", "exp"], "--profile"),
    ("opt_main", ["--profile", "zipf", "--reg_z", "0.01"], "--profile"),
    ("opt_main", ["--profile", "exp", "--ratio", "0.5", "--reg_z", "0.01"], "--ratio"),
    ("opt_main", ["--profile", "exp", "--n_max", "10", "--ratio", "100", "--reg_z", "0.01"], "--n_max"),
    ("opt_main", OPT + ["--reg_b", "1e300"], "--reg_b"),
    ("opt_main", OPT + ["--reg_b", "-1e-9"], "--reg_b"),
    ("opt_main", OPT + ["--name", "../plots/block"], "--name"),
    ("opt_main", OPT + ["--name", "/tmp/x"], "--name"),
    ("opt_main", OPT + ["--name", ""], "--name"),
    ("opt_main", OPT + ["--name", "a\nb"], "--name"),
    ("opt_main", OPT + ["--name", "x" * 300], "--name"),
    ("opt_main", OPT + ["--solver", "mosek"], "--solver"),
    ("opt_main", ["--cluster_s", "3", "--sample_s", "5", "4", "--reg_z", "0.01"], "--cluster_s"),
    ("opt_main", ["--cluster_s", "3", "0", "--sample_s", "5", "4", "--reg_z", "0.01"], "--cluster_s"),
    ("opt_main", ["--cluster_s", "3", "3", "--reg_z", "0.01"], "--sample_s"),
    # python utils.py <command>
    ("replot", ["prepare", "--dataset", "digits", "--sizes"] + ["5"] * 10 + ["--seed", "-1"], "--seed"),
    ("replot", ["prepare", "--dataset", "svhn", "--sizes", "5"], "--dataset"),
    ("replot", ["prepare", "--dataset", "digits", "--sizes", "5", "0"], "class sizes"),
    ("replot", ["mixup-ufm", "--beta", "inf"], "--beta"),
    ("replot", ["mixup-ufm", "--beta", "-1e-2"], "--beta"),
    ("replot", ["mixup-ufm", "--num_classes", "2"], "--num_classes"),
    ("replot", ["mixup-ufm", "--loss", "hinge"], "hinge"),
    ("replot", ["replot-figure", "no_such.json"], "no_such.json"),
    ("replot", ["mixup-grid", "no_such_dir"], "no_such_dir"),
    ("replot", ["mixup-loss", "no_such_dir"], "no_such_dir"),
    ("replot", ["nonsense"], "nonsense"),
]


def run_cli(module, argv, capsys):
    """module.main(argv) under utils.cli; returns (exit status, stderr lines)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        utils.cli(main, argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code, lines, names):
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and names in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.parametrize("module,argv,names", CASES, ids=[f"{m}:{' '.join(a)[-40:]}" for m, a, _ in CASES])
def test_bad_input_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, module, argv, names):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_utils, "train_run", lambda *a, **k: pytest.fail("training started"))
    code, lines = run_cli(module, argv, capsys)
    assert_one_error_line(code, lines, names)
    assert not os.path.exists(tmp_path / "models")


@pytest.mark.parametrize("module,argv,names", [
    ("minority_l_main", ["--quick", "--plot_dir", "{file}"], "--plot_dir"),
    ("mixup_main", ["--quick", "--plot_dir", "{file}"], "--plot_dir"),
    ("opt_main", OPT + ["--out_dir", "{file}"], "--out_dir"),
    ("replot", ["mixup-ufm", "--num_classes", "3", "--out", "{file}/x.png"], "{file}/x.png"),
    ("replot", ["replot-figure", "{file}"], "{file}"),
    ("replot", ["mixup-projection", "{file}"], "{file}"),
])
def test_unwritable_or_broken_paths_are_named(tmp_path, monkeypatch, capsys, module, argv, names):
    """A file where a folder belongs, a file that is not JSON or not a snapshot: one line naming it."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("not json {")
    fill = [a.replace("{file}", str(blocker)) for a in argv]
    code, lines = run_cli(module, fill, capsys)
    assert_one_error_line(code, lines, names.replace("{file}", str(blocker)))


@pytest.mark.parametrize("argv,names", [
    (["utils.py", "prepare", "--dataset", "digits", "--sizes"] + ["5"] * 10 + ["--seed", "-1"], "--seed"),
    (["opt_main.py"] + OPT + ["--name", "../x"], "--name"),
    (["block_main.py", "--quick", "--reg_h", "-1e-6"], "--reg_h"),
])
@pytest.mark.slow
def test_bad_input_in_a_real_process(tmp_path, argv, names):
    r = subprocess.run([sys.executable, os.path.join(ROOT, argv[0])] + argv[1:], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_one_error_line(r.returncode, r.stderr.strip().splitlines(), names)


def test_negative_numbers_in_any_notation_are_values():
    p = utils.ArgumentParser()
    p.add_argument("--x", type=float)
    p.add_argument("--xs", type=float, nargs="+")
    assert p.parse_args(["--x", "-1e-6"]).x == -1e-6
    assert p.parse_args(["--xs", "-1E+3", "-.5", "-inf", "2"]).xs == [-1000.0, -0.5, -np.inf, 2.0]
    with pytest.raises(UserError, match="-y"):  # options still are options
        p.parse_args(["--x", "1", "-y"])


def test_ctrl_c_is_one_line_and_status_130(capsys):
    def main(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        utils.cli(main, [])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and len(lines) == 1 and lines[0].startswith("interrupted; the run resumes")


# --------------------------------------------------------------------------------------
# Atomic writes: fsync, umask, disk full
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        result_files.atomic_write_json(str(tmp_path / "a.json"), {"x": 1})
        result_files.atomic_torch_save({"w": torch.zeros(2)}, str(tmp_path / "b.pt"))
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode


def test_atomic_write_fsyncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    result_files.atomic_write_json(str(tmp_path / "a.json"), [1])
    assert len(synced) == 2 and os.path.basename(synced[0]).startswith(".tmp_a.json.")
    assert synced[1] == os.path.realpath(tmp_path)


def test_disk_full_is_one_line_naming_the_path_and_leaves_nothing(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    target = str(tmp_path / "model.pt")
    with pytest.raises(UserError, match=f"cannot write {target}: No space left"):
        result_files.atomic_write(target, full)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------

POINT = {"figure": "t", "params": {"lam": 0.1}, "seed": 0, "sizes": [2, 2], "clusters": [[0], [1]]}
RECORD = {"params": {"lam": 0.1}, "sizes": [2, 2], "clusters": [[0], [1]], "Z": [[1.0, 0.0], [0.0, 1.0]],
          "z_norm": 1.4142, "minority_spread": 0.0, "cosines": {"within": [None, None], "across": 0.0},
          "train": {"seed": 0}}  # the parts a figure reads back (read_back.POINT_RECORD)


def _slow_point(models_dir, started):
    def run_point(point):
        started.set()
        import time
        time.sleep(1.5)
        return RECORD
    sweep.run_sweep([POINT], run_point, models_dir)


def test_second_process_waits_and_reuses_the_point(tmp_path, capsys):
    """Two processes on one point: one computes it, the other waits on the lock and reuses it."""
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    other = ctx.Process(target=_slow_point, args=(str(tmp_path), started))
    other.start()
    assert started.wait(60)
    records, missing = sweep.run_sweep([POINT], lambda p: pytest.fail("trained twice"), str(tmp_path))
    other.join(60)
    assert other.exitcode == 0 and missing == [] and records[0]["Z"] == RECORD["Z"]
    assert f"waiting for pid {other.pid} on host {socket.gethostname()}" in capsys.readouterr().err
    record_name = os.path.basename(point_records.point_record_path(str(tmp_path), POINT))
    assert sorted(os.listdir(tmp_path / "points")) == [record_name]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_is_taken_over_and_live_lock_named(tmp_path, capsys):
    lock = str(tmp_path / "lock")
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": _dead_pid()}, f)
    with run_locks.run_lock(lock, "the run", wait_s=5, poll_s=0.05):
        assert result_files.read_json(lock) == {"host": socket.gethostname(), "pid": os.getpid()}
        assert "taking over the stale lock" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # released, and no helper file left
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getppid()}, f)  # alive
    with pytest.raises(UserError, match=f"the run is held by pid {os.getppid()} on host .*lock {lock}"):
        with run_locks.run_lock(lock, "the run", wait_s=0.2, poll_s=0.05):
            pass
    assert os.listdir(tmp_path) == ["lock"]


def test_train_run_holds_its_lock(tmp_path):
    seen = []

    def on_eval(model, epoch, run_dir):
        seen.append(result_files.read_json(os.path.join(run_dir, "lock"))["pid"])
        return {}
    res = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path), on_eval=on_eval)
    assert seen == [os.getpid()] * 3 and not os.path.exists(os.path.join(res["run_dir"], "lock"))


# --------------------------------------------------------------------------------------
# Runs: CSV order, leftovers, records checked before reuse, UFM threads
# --------------------------------------------------------------------------------------

CFG, small_data = TINY_CFG, tiny_data


def run_dir_of(tmp_path, cfg=CFG):
    return train_utils.run_dir_of({**train_utils.TRAIN_DEFAULTS, **cfg}, small_data(), str(tmp_path))


def test_kill_at_the_last_checkpoint_keeps_the_last_csv_row(tmp_path, monkeypatch):
    whole = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path / "a"))
    real = result_files.atomic_torch_save

    def killed_at_3(obj, path):
        if isinstance(obj, dict) and obj.get("epoch") == 3:
            raise KeyboardInterrupt
        real(obj, path)
    monkeypatch.setattr(result_files, "atomic_torch_save", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(CFG, small_data(), CPU, str(tmp_path / "b"))
    monkeypatch.setattr(result_files, "atomic_torch_save", real)
    resumed = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path / "b"))
    a, b = (result_files.read_csv(os.path.join(r["run_dir"], "summary.csv")) for r in (whole, resumed))
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):  # every number but the wall-clock seconds per epoch
        ra.pop("seconds_per_epoch"), rb.pop("seconds_per_epoch")
        assert ra == pytest.approx(rb, rel=1e-6)


def test_resume_rewrites_a_csv_behind_its_checkpoint(tmp_path):
    """A CSV missing rows the checkpoint has (a kill in the old write order) is rewritten on resume."""
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(CFG, small_data(), CPU, str(tmp_path), on_eval=kill_at(3))
    run_dir = run_dir_of(tmp_path)
    result_files.atomic_write_csv(os.path.join(run_dir, "summary.csv"), [])  # the CSV lost every row
    res = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path))
    assert [r["epoch"] for r in result_files.read_csv(os.path.join(res["run_dir"], "summary.csv"))] == [1, 2, 3]


def test_leftovers_are_removed_when_a_run_starts_or_is_reused(tmp_path):
    run_dir = run_dir_of(tmp_path)
    os.makedirs(run_dir)
    tmp = os.path.join(run_dir, ".tmp_checkpoint.pt.abc123")
    open(tmp, "wb").write(b"x" * 1000)
    res = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path))
    assert not os.path.exists(tmp)
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    open(ckpt, "wb").write(b"kill between final.json and the checkpoint removal")
    again = train_utils.train_run(CFG, small_data(), CPU, str(tmp_path))
    assert again["reused"] and not os.path.exists(ckpt) and again["Z"] == res["Z"]
    assert sorted(os.listdir(run_dir)) == ["config.json", "final.json", "model.pt", "summary.csv"]


@pytest.mark.parametrize("content", ["", "{", "{}", json.dumps({"config": {}, "Z": [[0]]})])
def test_broken_final_json_is_one_line(tmp_path, content):
    run_dir = run_dir_of(tmp_path)
    os.makedirs(run_dir)
    open(os.path.join(run_dir, "final.json"), "w").write(content)
    with pytest.raises(UserError, match="final.json .*move .* away"):
        train_utils.train_run(CFG, small_data(), CPU, str(tmp_path))


def test_broken_point_record_counts_as_missing(tmp_path, capsys):
    points = [dict(POINT, params={"lam": lam}) for lam in (0.1, 0.2, 0.3)]
    good = dict(RECORD, params={"lam": 0.1})
    os.makedirs(tmp_path / "points")
    result_files.atomic_write_json(point_records.point_record_path(str(tmp_path), points[0]), good)
    open(point_records.point_record_path(str(tmp_path), points[1]), "w").write('{"params": {"la')  # truncated
    result_files.atomic_write_json(point_records.point_record_path(str(tmp_path), points[2]), good)  # claims lam 0.1
    records, missing = sweep.run_sweep(points, lambda p: pytest.fail("trained"), str(tmp_path), assemble_only=True)
    assert missing == [1, 2] and records[0] == good
    err = capsys.readouterr().err
    assert "is unreadable or broken" in err and "does not match its point" in err and "missing points (2 of 3" in err
    redone = sweep.run_sweep(points, lambda p: dict(RECORD, params=p["params"]), str(tmp_path))[0]
    assert [r["params"]["lam"] for r in redone] == [0.1, 0.2, 0.3]


def test_tampered_cached_subset_and_truncated_snapshot(tmp_path):
    from fake_datasets import write_idx_dataset
    write_idx_dataset(tmp_path, "MNIST", 8, 2)
    sizes = [3] * 10
    datasets.get_data("mnist", sizes, seed=0, data_dir=str(tmp_path))
    path, _ = datasets.subset_cache_path("mnist", sizes, 0, str(tmp_path))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["y_train"][:3] = 9  # class counts no longer those the name claims
    result_files.atomic_savez(path, **arrays)
    with pytest.raises(UserError, match="cached subset .* does not match its name"):
        datasets.get_data("mnist", sizes, seed=0, data_dir=str(tmp_path))
    snap = tmp_path / "mixup_e0001.npz"
    result_files.atomic_savez(str(snap), h=np.zeros((50, 3)))
    snap.write_bytes(snap.read_bytes()[:100])
    with pytest.raises(UserError, match="snapshot .*mixup_e0001.npz is unreadable"):
        snapshot_files.load_snapshot(str(snap))


def test_ufm_result_does_not_depend_on_the_thread_count(tmp_path):
    """The UFM path trains on one thread (restored afterwards): Z is bit-identical for 1 and 2 threads."""
    cfg = dict(name="u", network="ufm", optimizer="lbfgs", lr=1.0, batch_size=30, epochs=3, feat_dim=8,
               lam_h=1e-3, lam_w=1e-2, lam_b=1e-2, eval_epochs=[3])
    old, Zs, inside = torch.get_num_threads(), [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = train_utils.train_run(cfg, small_data(), CPU, str(tmp_path / str(threads)),
                                        on_eval=lambda m, e, d: inside.append(torch.get_num_threads()) or {})
            Zs.append(np.array(res["Z"]))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(old)
    assert inside == [1, 1] and np.array_equal(Zs[0], Zs[1])


def test_broken_summary_csv_is_one_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"loss": "mse", "seed": 0}')
    (run / "summary.csv").write_text("")
    code, lines = run_cli("replot", ["mixup-loss", str(run), "--out", str(tmp_path / "x.png")], capsys)
    assert_one_error_line(code, lines, str(run / "summary.csv"))


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """A UFM too large for memory (torch's allocator fails): one line, exit status 2."""
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli("minority_l_main", ["--network", "UFM", "--na", str(10**12), "--reg_z_l", "0.003",
                                              "--epoch", "1"], capsys)
    assert code == 2 and lines[-1].startswith("error: out of memory") and not any("Traceback" in ln for ln in lines)
