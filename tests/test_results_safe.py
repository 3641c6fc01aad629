"""What keeps results safe: atomic writes (fsync, umask, disk full), run locks between processes, the
CSV/checkpoint order on a kill, leftovers cleaned, records and caches checked before reuse."""
import errno
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
from conftest import TINY_CFG, kill_at, tiny_data
from utils import UserError

CPU = torch.device("cpu")


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
