"""Bad input over every script and command: exit status 2, one line `error: ...` naming the
argument or file, no traceback, nothing trained (what keeps results safe: test_results_safe.py)."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_utils
import utils
from conftest import ROOT
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
