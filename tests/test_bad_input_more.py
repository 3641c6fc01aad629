"""Bad input, second pass (issue 24 and the late checks of issue 20): files read back without a part
they need, a solver size limit, options that do not apply, repeated sweep values, checks that used to
come after training began. Each: exit status 2, exactly one `error:` line naming the argument or the
file and its part, no traceback, nothing trained or written."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import arg_combinations
import mixup_geometry
import opt_main
import point_records
import result_files
import snapshot_files
import sweep
import train_utils
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, argv, capsys):
    """module.main(argv) under utils.cli; returns (exit status, stderr lines)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        utils.cli(main, argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code, lines, *names):
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    for name in names:
        assert name in lines[0], (name, lines)


def assert_nothing_written(tmp_path):
    """No run folder, point record, figure or solver result: the output folders are absent or empty."""
    for name in ("models", "plots", "opt_results"):
        folder = tmp_path / name
        assert not folder.exists() or os.listdir(folder) == [], (name, os.listdir(folder))


@pytest.fixture
def no_training(tmp_path, monkeypatch):
    """Run in tmp_path; any training (one run, a batch of runs, a dry run's probe) fails the test."""
    monkeypatch.chdir(tmp_path)
    for name in ("train_run", "probe_seconds_per_epoch"):
        monkeypatch.setattr(train_utils, name, lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(sweep.batched_training, "train_batched", lambda *a, **k: pytest.fail("training started"))
    return tmp_path


MINORITY = {"figure": "minority_l", "settings": {"x_key": "lam", "x_label": "λ", "network": "mlp"},
            "points": [{"params": {"lam": 0.01}, "sizes": [4, 2], "clusters": [[0], [1]],
                        "Z": [[1.0, -1.0], [-1.0, 1.0]], "z_norm": 2.0, "minority_spread": 0.0,
                        "theory": {"verdict": "collapse", "z_norm": 2.0}}],
            "theory_curve": {"x": [0.01], "minority_spread": [0.0], "z_norm": [2.0]}, "threshold": 0.02}


def without(obj, dotted):
    """A deep copy of obj with the part at `dotted` ('points.0.Z') removed."""
    obj = json.loads(json.dumps(obj))
    *path, last = dotted.split(".")
    inner = obj
    for key in path:
        inner = inner[int(key)] if isinstance(inner, list) else inner[key]
    del inner[int(last) if isinstance(inner, list) else last]
    return obj


def snapshot(**drop):
    snap = mixup_geometry.ufm_mixup_snapshot("cross_entropy", 4, 0.01, classes=(0, 1, 2), n_mix=5)
    return {k: v for k, v in snap.items() if k not in drop}


def write_run(folder, snap, summary=True, csv="epoch,loss,train_acc,test_acc,test_loss\n1,0.5,0.9,0.8,0.6\n"):
    """A mixup run folder: config.json, summary.csv, one snapshot (and its summary JSON unless not asked)."""
    os.makedirs(folder, exist_ok=True)
    result_files.atomic_write_json(os.path.join(folder, "config.json"), {"loss": "cross_entropy", "seed": 0})
    result_files.atomic_write(os.path.join(folder, "summary.csv"), lambda f: f.write(csv.encode()))
    result_files.atomic_savez(snapshot_files.mixup_snapshot_path(folder, 1), **snap)
    if summary:
        result_files.atomic_write_json(snapshot_files.mixup_snapshot_path(folder, 1, "json"),
                                       {"same_angle_deg_mean": 1.0})


READ_BACK = [  # (what the file is, how to write it, command after the file, the part the error line names)
    ("figure JSON without points", lambda d: result_files.atomic_write_json(d / "F.json", without(MINORITY, "points")),
     ["replot-figure", "F.json"], "points"),
    ("figure point without its spread", lambda d: result_files.atomic_write_json(
        d / "F.json", without(MINORITY, "points.0.minority_spread")), ["replot-figure", "F.json"],
     "points[0].minority_spread"),
    ("figure point without the swept value", lambda d: result_files.atomic_write_json(
        d / "F.json", without(MINORITY, "points.0.params.lam")), ["replot-figure", "F.json"], "points[0].params.lam"),
    ("figure Z of the wrong size", lambda d: result_files.atomic_write_json(
        d / "F.json", dict(MINORITY, points=[dict(MINORITY["points"][0], Z=[[1.0]])])),
     ["replot-figure", "F.json"], "Z"),
    ("theory curve shorter than its x", lambda d: result_files.atomic_write_json(
        d / "F.json", dict(MINORITY, theory_curve={"x": [0.01, 0.02], "minority_spread": [0.0]})),
     ["replot-figure", "F.json"], "theory_curve.minority_spread"),
    ("block figure without history", lambda d: result_files.atomic_write_json(d / "F.json", dict(
        MINORITY, figure="block", points=[dict(MINORITY["points"][0], theory={"Z": None})])),
     ["replot-figure", "F.json"], "history"),
    ("limit figure without cosines", lambda d: result_files.atomic_write_json(d / "F.json", dict(
        MINORITY, figure="limit", points=[dict(MINORITY["points"][0], params={"lam": 0.1, "n_A": 4})])),
     ["replot-figure", "F.json"], "points[0].cosines"),
    ("opt_main JSON with a Z of the wrong size", lambda d: result_files.atomic_write_json(
        d / "F.json", {"cluster_s": [2, 1], "Z": [[1.0, 0.0], [0.0, 1.0]], "lam": 0.1}),
     ["replot-figure", "F.json"], "Z"),
    ("snapshot without b", lambda d: result_files.atomic_savez(str(d / "S.npz"), **snapshot(b=1)),
     ["mixup-projection", "S.npz"], "b"),
    ("snapshot whose classes exceed W", lambda d: result_files.atomic_savez(
        str(d / "S.npz"), **dict(snapshot(), classes=np.array([0, 1, 9]))), ["mixup-projection", "S.npz"], "classes"),
    ("run folder whose snapshot lacks W", lambda d: write_run(str(d / "run"), snapshot(W=1)),
     ["mixup-grid", "run"], "W"),
    ("run folder whose config is a list", lambda d: (write_run(str(d / "run"), snapshot()),
                                                     result_files.atomic_write_json(
        str(d / "run" / "config.json"), [1])), ["mixup-loss", "run"], "config.json"),
    ("CSV without the epoch column", lambda d: write_run(str(d / "run"), snapshot(), csv="loss,test_loss\n0.5,0.6\n"),
     ["mixup-loss", "run"], "epoch"),
    ("CSV without rows", lambda d: write_run(str(d / "run"), snapshot(), csv="epoch,loss\n"),
     ["mixup-accuracy", "run"], "no rows"),
    ("snapshot without its summary", lambda d: write_run(str(d / "run"), snapshot(), summary=False),
     ["mixup-compare", "run"], "mixup_e0001.json"),
    ("finished run whose final.json is a list", lambda d: (os.makedirs(d / "runs" / "r"),
                                                           result_files.atomic_write_json(
        str(d / "runs" / "r" / "final.json"), [1])), ["collect", "runs", "--out", "runs.csv"], "final.json"),
]


@pytest.mark.parametrize("make,argv,part", [c[1:] for c in READ_BACK], ids=[c[0] for c in READ_BACK])
def test_file_read_back_without_a_required_part(no_training, capsys, make, argv, part):
    make(no_training)
    before = sorted(os.listdir(no_training))
    out = ["--out", "out.png"] if argv[0] not in ("collect",) else []
    code, lines = run_cli("replot", argv + out, capsys)
    file_named = os.path.basename(argv[1])
    assert_one_error_line(code, lines, file_named, part)
    assert sorted(os.listdir(no_training)) == before  # no picture, no CSV, no plots folder


def test_the_intact_files_of_these_cases_are_drawn(no_training, capsys):
    """The checks refuse only what lacks a part: the complete versions of the files above are drawn."""
    result_files.atomic_write_json(no_training / "F.json", MINORITY)
    result_files.atomic_savez(str(no_training / "S.npz"), **snapshot())
    write_run(str(no_training / "run"), snapshot())
    for argv in (["replot-figure", "F.json"], ["mixup-projection", "S.npz"], ["mixup-grid", "run"],
                 ["mixup-loss", "run"], ["mixup-compare", "run"]):
        out = str(no_training / f"{argv[0]}.png")
        utils.cli(importlib.import_module("replot").main, argv + ["--out", out])
        assert os.path.getsize(out) > 0, argv


def test_point_record_without_a_part_counts_as_missing(tmp_path, capsys):
    """A point record that matches its point but lacks what the figure plots (z_norm) is named on
    stderr and recomputed, not plotted with a KeyError."""
    point = {"figure": "t", "params": {"lam": 0.1}, "seed": 0, "sizes": [2, 2], "clusters": [[0], [1]]}
    record = {"params": {"lam": 0.1}, "sizes": [2, 2], "clusters": [[0], [1]], "Z": [[1.0, 0.0], [0.0, 1.0]],
              "minority_spread": 0.0, "cosines": {"within": [None, None], "across": -1.0}, "train": {"seed": 0}}
    path = point_records.point_record_path(str(tmp_path), point)
    result_files.atomic_write_json(path, record)
    records, missing = sweep.run_sweep([point], None, str(tmp_path), assemble_only=True)
    assert missing == [0] and records == [None]
    assert f"point record {path}: lacks z_norm" in capsys.readouterr().err
    result_files.atomic_write_json(path, dict(record, z_norm=1.4))
    assert sweep.run_sweep([point], None, str(tmp_path), assemble_only=True)[1] == []


@pytest.mark.parametrize("argv,part", [(["replot-figure", "F.json"], "points"), (["mixup-projection", "S.npz"], "b")])
def test_read_back_in_a_real_process(tmp_path, argv, part):
    result_files.atomic_write_json(tmp_path / "F.json", without(MINORITY, "points"))
    result_files.atomic_savez(str(tmp_path / "S.npz"), **snapshot(b=1))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "utils.py")] + argv, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_one_error_line(r.returncode, r.stderr.strip().splitlines(), argv[1], part)
    assert_nothing_written(tmp_path)


def test_cvxpy_at_k_2000_is_refused_before_solving(tmp_path):
    """It used to abort the process (a 5.1e14-byte allocation) after 49 s; now one line, at once."""
    argv = ["--cluster_s", "1000", "1000", "--sample_s", "50", "10", "--reg_z", "0.001", "--solver", "cvxpy"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "opt_main.py")] + argv, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_one_error_line(r.returncode, r.stderr.strip().splitlines(), "--solver cvxpy", "K = 2000", "--solver fast")
    assert_nothing_written(tmp_path)


def test_cvxpy_limit_follows_the_measured_memory():
    """0.12 GB + 210 K^4 bytes reproduces the measured peaks (0.32 GB at K = 30, 0.65 at 40, 1.37 at 50, to 10 %);
    on 24 GB the limit is K = 96, and exactly there the refusal starts."""
    def need(K):
        return opt_main.CVXPY_BASE_BYTES + opt_main.CVXPY_BYTES_PER_K4 * K ** 4
    for K, measured in ((30, 0.32e9), (40, 0.65e9), (50, 1.37e9)):
        assert need(K) == pytest.approx(measured, rel=0.1)
    assert opt_main.cvxpy_max_k(24e9) == 96
    opt_main.check_cvxpy_size(96, 24e9)
    with pytest.raises(utils.UserError, match=r"K = 97: .* allow K <= 96; use --solver fast"):
        opt_main.check_cvxpy_size(97, 24e9)


NOT_APPLYING = [
    ("mixup_main", ["--quick", "--image_size", "2"], ["--image_size", "digits"]),
    ("mixup_main", ["--quick", "--num_classes", "5"], ["--num_classes", "digits"]),
    ("mixup_main", ["--quick", "--seeds", "0", "1"], ["--seeds", "--study"]),
    ("mixup_main", ["--quick", "--models", "mlp"], ["--models", "--study"]),
    ("mixup_main", ["--study", "--quick", "--seed", "3"], ["--seed", "--study", "--seeds"]),
    ("mixup_main", ["--study", "--quick", "--model", "cnn"], ["--model", "--study", "--models"]),
    ("mixup_main", ["--quick", "--mse_scale", "2"], ["--mse_scale", "mse"]),
    ("mixup_main", ["--quick", "--loss", "mse", "--smoothing", "0.2"], ["--smoothing", "label_smoothing"]),
    ("mixup_main", ["--quick", "--no_mixup", "--alpha", "0.4"], ["--alpha", "--no_mixup"]),
    ("mixup_main", ["--quick", "--optimizer", "adam", "--momentum", "0.5"], ["--momentum", "adam"]),
    ("mixup_main", ["--quick", "--model", "vit", "--momentum", "0.5"], ["--momentum", "vit (adamw)"]),
    ("mixup_main", ["--quick", "--depth", "16"], ["--depth", "mlp"]),
    ("minority_l_main", ["--quick", "--batched", "--network", "UFM"], ["--batched", "--network ufm"]),
    ("minority_l_main", ["--network", "UFM", "--lr", "0.1"], ["--lr", "--network UFM"]),
    ("minority_l_main", ["--network", "UFM", "--width", "64"], ["--width", "--network UFM"]),
    ("minority_n_main", ["--network", "UFM", "--warm_frac", "0.5"], ["--warm_frac", "--network UFM"]),
    ("block_main", ["--quick", "--slurm_partition", "gpu"], ["--slurm_partition", "--launch slurm"]),
    ("mixup_main", ["--study", "--quick", "--launch", "local", "--slurm_extra", "mem=4G"], ["--slurm_extra", "slurm"]),
    ("minority_l_main", ["--quick", "--slurm_time", "10"], ["--slurm_time", "--launch"]),
    ("minority_l_main", ["--quick", "--assemble", "--dry_run"], ["--dry_run", "--assemble"]),
    ("mixup_main", ["--study", "--quick", "--assemble", "--dry_run"], ["--dry_run"]),
    ("mixup_main", ["--quick", "--panel_losses", "mse"], ["--panel_losses", "--study"]),
    ("limit_main", ["--quick", "--seeds", "0", "1", "--seed", "3"], ["--seeds 0 1", "--seed 3"]),
]


@pytest.mark.parametrize("module,argv,names", NOT_APPLYING, ids=[f"{m}:{' '.join(a)}" for m, a, _ in NOT_APPLYING])
def test_option_that_does_not_apply(no_training, capsys, module, argv, names):
    code, lines = run_cli(module, argv, capsys)
    assert_one_error_line(code, lines, *names)
    assert_nothing_written(no_training)


def test_typed_options_are_told_from_defaults_and_presets():
    import minority_l_main
    import mixup_main
    assert minority_l_main.parse_args(["--quick", "--seed", "0", "--no-batched"]).given == {"quick", "seed", "batched"}
    assert mixup_main.parse_args(["--study", "--quick"]).given == {"study", "quick"}  # presets are not typed


REPEATED = [
    ("minority_n_main", ["--quick", "--nalist", "100", "100"], ["--nalist", "100 is given twice"]),
    ("minority_l_main", ["--quick", "--reg_z_l", "0.003", "3e-3"], ["--reg_z_l", "0.003 is given twice"]),
    ("limit_main", ["--quick", "--nalist", "20", "40", "20"], ["--nalist", "20 is given twice"]),
    ("mixup_main", ["--study", "--quick", "--models", "mlp", "mlp"], ["--models", "mlp is given twice"]),
    ("mixup_main", ["--study", "--quick", "--datasets", "digits", "digits"], ["--datasets", "digits is given twice"]),
    ("mixup_main", ["--quick", "--snapshots", "5", "5"], ["--snapshots", "5 is given twice"]),
]


@pytest.mark.parametrize("module,argv,names", REPEATED, ids=[f"{m}:{' '.join(a)}" for m, a, _ in REPEATED])
def test_repeated_sweep_value(no_training, capsys, module, argv, names):
    code, lines = run_cli(module, argv, capsys)
    assert_one_error_line(code, lines, *names)
    assert_nothing_written(no_training)


LATE = [
    ("minority_l_main", ["--quick", "--threads", "0"], ["--threads 0"]),
    ("mixup_main", ["--quick", "--threads", "-1"], ["--threads -1"]),
    ("minority_l_main", ["--quick", "--models_dir", "{file}"], ["--models_dir", "{file}"]),
    ("mixup_main", ["--quick", "--models_dir", "{file}"], ["--models_dir", "{file}"]),
    ("minority_l_main", ["--quick", "--dataset", "digits", "--data_dir", "{file}"], ["--data_dir", "{file}"]),
    ("minority_l_main", ["--quick", "--dry_run", "--point", "99"], ["--point 99", "0..9"]),
    ("mixup_main", ["--study", "--quick", "--dry_run", "--point", "99"], ["--point 99", "cells"]),
    ("minority_l_main", ["--quick", "--nb", "200"], ["--nb 200", "--na 100"]),
]


@pytest.mark.parametrize("module,argv,names", LATE, ids=[f"{m}:{' '.join(a)}" for m, a, _ in LATE])
def test_late_checks_come_first(no_training, capsys, module, argv, names):
    blocker = no_training / "blocker"
    blocker.write_text("a file where a folder belongs")
    fill = [a.replace("{file}", "blocker") for a in argv]
    code, lines = run_cli(module, fill, capsys)
    assert_one_error_line(code, lines, *[n.replace("{file}", "blocker") for n in names])
    assert_nothing_written(no_training)


def test_threads_0_is_refused_even_when_everything_is_reused(tmp_path, capsys):
    """--threads 0 used to pass when every point was reused: it is refused whatever is finished."""
    dirs = ["--models_dir", str(tmp_path / "models"), "--plot_dir", str(tmp_path / "plots"), "--device", "cpu"]
    argv = ["--network", "UFM", "--reg_z_l", "0.01", "--na", "20", "--nb", "4", "--epoch", "2"] + dirs
    assert utils.cli(importlib.import_module("minority_l_main").main, argv) == 0
    capsys.readouterr()
    code, lines = run_cli("minority_l_main", argv + ["--threads", "0"], capsys)
    assert_one_error_line(code, lines, "--threads 0")


def test_minority_above_majority_in_a_sweep_is_one_warning(no_training, capsys):
    """minority_n --quick --nb 200: the n_A below n_B are named in one warning line, then it runs as asked."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module("minority_n_main").main(["--quick", "--nb", "200", "--list_points"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 0 and len(err) == 1 and err[0].startswith("warning: --nalist 20 40 ")
    assert "below --nb 200" in err[0]


def test_slow_cpu_preview_is_one_warning_with_its_estimate(no_training, capsys, monkeypatch):
    """--quick --network resnet18 on the CPU: one warning line with minutes per point and in all, before
    training (the step time measured here is replaced by 0.5 s: 1000 steps of a point make 8.3 min)."""
    monkeypatch.setattr(arg_combinations, "seconds_per_step", lambda *a, **k: 0.5)
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: sys.exit(0))
    with pytest.raises(SystemExit):
        importlib.import_module("minority_l_main").main(["--quick", "--network", "resnet18", "--device", "cpu"])
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: --network resnet18 with --quick on the CPU: about 8.3 min per point, 83 min for "
                        "the 10 to train (from 0.50 s per training step, 1000 steps per point); a GPU (--device cuda) "
                        "or the preview's own network takes seconds"]


def test_the_preview_network_is_not_warned_about(no_training, capsys):
    """The preset network of --quick is not measured or warned about."""
    class Args:
        quick, network = True, "mlp_linear"
    small = ("mlp", "mlp_linear", "cnn")
    assert arg_combinations.warn_slow_figure_preview([{}], Args, torch.device("cpu"), small) is None
    assert capsys.readouterr().err == ""
