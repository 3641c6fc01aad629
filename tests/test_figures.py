"""End-to-end tests of the imbalanced-NC figure scripts on tiny settings (UFM and small MLPs).

Each script runs in a temporary folder (models, plots and data there); the files, the JSON
format, sweep reuse, `--point I` + assembly, replotting from a saved JSON, bad input and the
"must show" minority-collapse results on the UFM are checked."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import block_main  # noqa: E402
import limit_main  # noqa: E402
import minority_l_main  # noqa: E402
import minority_n_main  # noqa: E402
import plot_utils  # noqa: E402
import result_files
import sweep_plan
import utils  # noqa: E402
from conftest import ROOT, dirs

POINT_KEYS = {"params", "sizes", "clusters", "Z", "b", "nc", "minority_spread", "minority_spread_rel", "cosines",
              "theory", "run_dir", "index"}
THEORY_KEYS = {"Z", "b", "minority_spread", "minority_spread_rel", "cosines", "verdict", "minority_threshold",
               "cluster_thresholds", "status"}


def run_main(module, argv, capsys):
    """main(argv) in-process; returns (paths printed, stderr)."""
    assert module.main(argv) == 0
    out, err = capsys.readouterr()
    paths = [ln for ln in out.splitlines() if ln.strip()]
    for p in paths:
        assert os.path.exists(p), p
    return paths, err


def load_json(paths):
    js = [p for p in paths if p.endswith(".json")]
    assert len(js) == 1 and any(p.endswith(".png") for p in paths)
    assert os.path.splitext(js[0])[0] + ".png" in paths  # same stem
    with open(js[0]) as f:
        return js[0], json.load(f)


def final_mtimes(models_dir):
    out = {}
    for root, _, files in os.walk(models_dir):
        for f in files:
            if f == "final.json":
                out[os.path.join(root, f)] = os.path.getmtime(os.path.join(root, f))
    return out


def check_points(result, K=10):
    for p in result["points"]:
        assert POINT_KEYS <= set(p), set(p)
        assert THEORY_KEYS <= set(p["theory"]), set(p["theory"])
        assert np.array(p["Z"]).shape == (K, K) and len(p["b"]) == K
        assert {"nc1", "nc1_weighted", "nc2_equiangle", "nc3", "nc4", "train_acc"} <= set(p["nc"])
        assert np.array(p["theory"]["Z"]).shape == (K, K)
        assert p["theory"]["verdict"] in ("collapse", "no collapse")


@pytest.mark.slow
def test_minority_l_ufm_point_assemble_and_reuse(tmp_path, capsys):
    base = ["--network", "UFM", "--ka", "5", "--na", "50", "--nb", "10", "--reg_z_l", "0.005", "0.02", "0.04",
            "--epoch", "8"] + dirs(tmp_path)
    with pytest.raises(SystemExit) as done:  # a job of a sweep trains its run and writes no figure
        minority_l_main.main(base + ["--point", "1"])
    out, err = capsys.readouterr()
    assert done.value.code == 0 and out == "" and not (tmp_path / "plots").exists() or not os.listdir(
        tmp_path / "plots")
    assert "run 1 finished; 2 of 3 runs still missing" in err.splitlines()[-1] and "--assemble" in err
    first = final_mtimes(tmp_path / "models")
    assert len(first) == 1

    with pytest.raises(SystemExit) as done:  # missing runs: one line naming them, no figure
        utils.cli(minority_l_main.main, base + ["--assemble"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err[-1].startswith("error: --assemble: 2 of 3 runs are not finished: 0 (lam=0.005")
    assert "2 (lam=0.04" in err[-1] and "--partial" in err[-1] and not any("missing points" in ln for ln in err)
    paths, err = run_main(minority_l_main, base + ["--assemble", "--partial"], capsys)  # trains nothing
    js, res = load_json(paths)
    assert res["figure"] == "minority_l" and len(res["points"]) == 1 and res["points"][0]["index"] == 1
    assert [m["index"] for m in res["missing"]] == [0, 2] and res["runs"] == {"finished": 1, "total": 3}
    assert "missing points" in err and "0 (lam=0.005" in err
    check_points(res)
    assert final_mtimes(tmp_path / "models") == first
    paths, err = run_main(minority_l_main, base, capsys)  # trains 0 and 2, reuses 1
    _, res = load_json(paths)
    assert len(res["points"]) == 3 and res["missing"] == [] and "missing" not in err
    second = final_mtimes(tmp_path / "models")
    assert len(second) == 3 and all(second[k] == v for k, v in first.items())
    paths, _ = run_main(minority_l_main, base, capsys)  # everything reused
    assert final_mtimes(tmp_path / "models") == second
    _, res = load_json(paths)
    check_points(res)
    assert res["threshold"] == pytest.approx(np.sqrt(10) / 300)
    assert len(res["theory_curve"]["x"]) == len(res["theory_curve"]["minority_spread"]) > 10
    for p in res["points"]:
        assert set(p["params"]) == {"lam", "k_A", "n_A", "n_B"}
        assert p["train"]["lam_h"] == pytest.approx(p["params"]["lam"] / 20)
        assert p["train"]["lam_w"] == pytest.approx(5 * p["params"]["lam"])
        # the trained UFM agrees with the convex program
        assert np.abs(np.array(p["Z"]) - np.array(p["theory"]["Z"])).max() < 0.05


@pytest.mark.slow
def test_minority_n_mlp_quick(tmp_path, capsys):
    argv = ["--quick", "--ka", "3", "--nalist", "10", "30", "--epoch", "2"] + dirs(tmp_path)
    paths, _ = run_main(minority_n_main, argv, capsys)
    _, res = load_json(paths)
    check_points(res)
    assert [p["params"]["n_A"] for p in res["points"]] == [10, 30]
    assert res["settings"]["network"] == "mlp_linear" and res["settings"]["n_B"] == 20
    assert res["points"][0]["params"]["lam"] == pytest.approx(0.005 * np.sqrt(5))
    assert res["threshold"] == pytest.approx((np.sqrt(20) / (0.005 * np.sqrt(5)) - 7 * 20) / 3)


@pytest.mark.slow
def test_minority_l_quick_batched_matches_one_by_one(tmp_path, capsys):
    """--batched (the --quick default) trains the sweep's points as one vmapped model: the same
    figure numbers as --no-batched, which trains them one by one."""
    base = ["--quick", "--na", "30", "--nb", "10", "--reg_z_l", "0.003", "0.006", "--epoch", "3"]
    paths, err = run_main(minority_l_main, base + ["--no-batched"] + dirs(tmp_path / "a"), capsys)
    _, alone = load_json(paths)
    assert "[batched]" not in err
    paths, err = run_main(minority_l_main, base + dirs(tmp_path / "b"), capsys)
    _, together = load_json(paths)
    assert "[batched] training 2 points together" in err
    assert together["points"][0]["train"]["width"] == 64 and together["points"][0]["train"]["lr"] == 0.1
    # Batched and alone differ by the rounding of bmm against mm, amplified by training. Measured: loss
    # equal and |dZ| <= 2.2e-8 here (AMD EPYC, torch 2.14.1, OMP_NUM_THREADS=1 and 2); relative loss 1.0e-4
    # on the issue-20 machines. A real fault is far larger: lambda x 1.1 moves the loss by 2.4e-2 (relative)
    # and Z by 1.2e-2, so the bounds sit 20x above the worst spread and 10x below that signal.
    for a, b in zip(alone["points"], together["points"]):
        assert b["nc"]["loss"] == pytest.approx(a["nc"]["loss"], rel=2e-3)
        np.testing.assert_allclose(b["Z"], a["Z"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("flags, expected", [
    ([], ()), (["--quick"], ("mlp", "mlp_linear", "cnn")), (["--quick", "--no-batched"], ()),
    (["--batched"], ("mlp", "mlp_linear", "cnn", "resnet18", "resnet18_nobias", "vgg11", "vgg13"))])
def test_batched_by_default_only_the_quick_small_networks(flags, expected):
    """--quick batches the MLPs and the small CNN (ResNet18 and VGG gain nothing on a CPU); --batched
    every network train_batched can train; --no-batched none."""
    assert tuple(sweep_plan.batched_networks(minority_l_main.parse_args(flags))) == expected


@pytest.mark.slow
def test_limit_mlp_quick(tmp_path, capsys):
    argv = ["--quick", "--nalist", "10", "21", "--epoch", "2"] + dirs(tmp_path)
    paths, _ = run_main(limit_main, argv, capsys)
    _, res = load_json(paths)
    check_points(res)
    p = res["points"][1]
    assert p["params"]["n_B"] == 10 and p["params"]["N"] == 5 * 21 + 5 * 10
    assert p["params"]["lam"] == pytest.approx(0.1 / p["params"]["N"])
    assert len(p["cosines"]["within"]) == 2 and p["cosines"]["across"] is not None
    assert {"within_A", "within_B", "across"} <= set(res["theory_curve"])


@pytest.mark.slow
def test_block_quick_and_ufm(tmp_path, capsys):
    paths, _ = run_main(block_main, ["--quick", "--structure", "2", "--epoch", "3"] + dirs(tmp_path), capsys)
    _, res = load_json(paths)
    check_points(res)
    assert [r["epoch"] for r in res["history"]] == [1, 2, 3]
    assert res["points"][0]["sizes"] == [100] * 4 + [60] * 2 + [20] * 4
    paths, _ = run_main(block_main, ["--quick", "--network", "UFM", "--epoch", "5"] + dirs(tmp_path), capsys)
    _, res = load_json(paths)
    check_points(res)
    p = res["points"][0]
    assert p["params"]["lam"] == pytest.approx(2 * np.sqrt(1e-9) * np.sqrt(50))
    assert np.abs(np.array(p["Z"]) - np.array(p["theory"]["Z"])).max() < 0.05  # UFM reaches the block optimum


@pytest.mark.slow
def test_replot_from_json_including_missing_theory(tmp_path, capsys):
    paths, _ = run_main(minority_l_main, ["--network", "UFM", "--na", "40", "--nb", "8", "--reg_z_l", "0.01",
                                          "--epoch", "3"] + dirs(tmp_path), capsys)
    js, res = load_json(paths)
    out = plot_utils.plot_figure_json(js, str(tmp_path / "again.png"))
    assert os.path.getsize(out) > 1000
    # a failed convex solve and an empty sweep must still plot
    res["points"][0]["theory"].update(Z=None, minority_spread=None)
    res["theory_curve"]["minority_spread"][0] = None
    result_files.atomic_write_json(str(tmp_path / "broken.json"), res)
    assert os.path.exists(plot_utils.plot_figure_json(str(tmp_path / "broken.json")))
    res["points"] = []
    result_files.atomic_write_json(str(tmp_path / "empty.json"), res)
    assert os.path.exists(plot_utils.plot_figure_json(str(tmp_path / "empty.json")))
    res["figure"] = "limit"
    result_files.atomic_write_json(str(tmp_path / "empty_limit.json"), res)
    assert os.path.exists(plot_utils.plot_figure_json(str(tmp_path / "empty_limit.json")))


BAD = [
    (minority_l_main, ["--reg_z_l", "-0.003"], "--reg_z_l"),
    (minority_l_main, ["--dataset_t", "digits", "--na", "500"], "--na"),
    (minority_l_main, ["--network", "UFM", "--reg_z_l", "0.003", "--point", "1"], "--point"),
    (minority_l_main, ["--network", "LeNet"], "--network"),
    (minority_l_main, ["--dataset_t", "imagenet"], "--dataset"),
    (minority_l_main, ["--ka", "10"], "--ka"),
    (minority_n_main, ["--nalist", "100", "-5"], "--nalist"),
    (minority_n_main, ["--nb", "0"], "--nb"),
    (limit_main, ["--nalist", "500", "5500"], "--nalist"),
    (limit_main, ["--nalist", "1", "--ratio", "2"], "--nalist"),
    (block_main, ["--structure", "3"], "--structure"),
    (block_main, ["--reg_h", "-1"], "--reg_h"),
    (block_main, ["--epoch", "many"], "--epoch"),
]


@pytest.mark.parametrize("module,argv,name", BAD, ids=[f"{m.__name__}:{' '.join(a)}" for m, a, _ in BAD])
def test_bad_input(module, argv, name, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        utils.cli(module.main, argv + dirs(tmp_path))
    assert e.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert not (tmp_path / "models").exists()  # nothing trained


@pytest.mark.slow
def test_bad_input_subprocess(tmp_path):
    """The real command line: exit 2, one line, no traceback."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "limit_main.py"), "--nalist", "500", "5500"]
                       + dirs(tmp_path),
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--allow_test_fill" in r.stderr


@pytest.mark.slow
def test_must_show_minority_l_ufm(tmp_path, capsys):
    paths, _ = run_main(minority_l_main, ["--network", "UFM", "--ka", "5", "--reg_z_l", "0.0027", "0.0045"]
                        + dirs(tmp_path), capsys)
    _, res = load_json(paths)
    low, high = sorted(res["points"], key=lambda p: p["params"]["lam"])
    assert low["theory"]["verdict"] == "no collapse" and high["theory"]["verdict"] == "collapse"
    assert low["minority_spread"] > 1.0 and high["minority_spread"] < 0.01
    assert low["minority_spread"] == pytest.approx(low["theory"]["minority_spread"], rel=0.02)


@pytest.mark.slow
def test_must_show_minority_n_ufm(tmp_path, capsys):
    paths, _ = run_main(minority_n_main, ["--network", "UFM", "--ka", "3", "--nalist", "400", "470"]
                        + dirs(tmp_path), capsys)
    _, res = load_json(paths)
    assert res["threshold"] == pytest.approx(433.33, abs=0.01)
    below, above = sorted(res["points"], key=lambda p: p["params"]["n_A"])
    assert below["theory"]["verdict"] == "no collapse" and above["theory"]["verdict"] == "collapse"
    assert below["minority_spread"] > 0.1 and above["minority_spread"] < 0.01
    assert below["minority_spread"] == pytest.approx(below["theory"]["minority_spread"], rel=0.05)
