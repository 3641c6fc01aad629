"""Issue 15: the --quick previews follow the UFM, runs record how they were made, --dry_run, and
calibration on the confidence the loss defines."""
import datetime
import json
import os
import re
import socket
import sys

import numpy as np
import pytest
import torch

import block_main  # noqa: E402
import datasets  # noqa: E402
import limit_main  # noqa: E402
import minority_l_main  # noqa: E402
import minority_n_main  # noqa: E402
import mixup_geometry  # noqa: E402
import opt_main  # noqa: E402
import result_files
import train_utils  # noqa: E402
from conftest import dirs


def figure_json(out):
    path = [ln for ln in out.splitlines() if ln.endswith(".json")][0]
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("module, argv", [
    (minority_l_main, ["--reg_z_l", "0.0039", "0.0063"]),
    (minority_n_main, ["--ka", "3", "--nalist", "560"]),
    (block_main, ["--structure", "1"]),
    (limit_main, ["--nalist", "25"])], ids=["minority_l", "minority_n", "block", "limit"])
@pytest.mark.slow
def test_quick_preview_follows_the_convex_program(module, argv, tmp_path, capsys):
    """A smaller grid of each --quick figure (all other settings of the preview), including the
    points past the collapse threshold where the ReLU-feature MLP fell short: the trained ||Z||
    is within 10% of the convex program's, and where the theory says the minority collapses, its
    columns of the trained Z nearly coincide."""
    assert module.main(["--quick"] + argv + dirs(tmp_path)) == 0
    res = figure_json(capsys.readouterr().out)
    assert res["settings"]["network"] == "mlp_linear"
    for p in res["points"]:
        assert p["train"]["lr"] == module.QUICK["lr"] and p["train"]["weight_decay"] == 0.0
        assert p["train"]["width"] == module.QUICK["mlp_width"] and p["train"]["epochs"] == module.QUICK["train_epochs"]
        ufm = np.linalg.norm(np.array(p["theory"]["Z"]))  # independent of the record's z_norm
        assert abs(np.linalg.norm(np.array(p["Z"])) / ufm - 1) < 0.10
        if p["theory"]["verdict"] == "collapse":
            assert p["minority_spread"] < 0.05 * ufm
        assert len(p["test_acc_per_class"]) == len(p["sizes"])
        if module is not block_main:
            assert 0 <= p["test_acc_minority"] <= p["test_acc_majority"] <= 1


CFG = dict(name="t", network="mlp", width=16, epochs=3, lr=0.05, batch_size=16, lam_h=1e-5, lam_w=5e-4, seed=0)


def test_run_records_how_it_was_made_and_keeps_its_key(tmp_path):
    data = datasets.get_data("synthetic", [20, 20, 20], 0, str(tmp_path), synthetic={"image_size": 8, "channels": 1})
    res = train_utils.train_run(CFG, data, torch.device("cpu"), str(tmp_path / "models"))
    with open(os.path.join(res["run_dir"], "config.json")) as f:
        saved = json.load(f)
    rec = saved["record"]
    assert rec["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", rec["git_commit"])
    assert rec["git_dirty"] in (True, False, None) and (rec["git_dirty"] is None) == (rec["git_commit"] is None)
    assert rec["torch"] == torch.__version__ and rec["numpy"] == np.__version__
    assert rec["python"] == ".".join(map(str, sys.version_info[:3]))
    assert rec["device"] == "cpu" and rec["threads"] == torch.get_num_threads()
    assert rec["host"] == socket.gethostname()
    started = datetime.datetime.strptime(rec["start_time"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs((datetime.datetime.utcnow() - started).total_seconds()) < 600
    # the record is not part of the run's key: the folder is the configuration's alone
    cfg = {**train_utils.TRAIN_DEFAULTS, **CFG}
    cfg["eval_epochs"] = train_utils.default_eval_epochs(cfg["epochs"])
    assert res["run_dir"] == train_utils.run_dir_of(cfg, data, str(tmp_path / "models"))
    assert "record" not in res["config"]
    rows = result_files.read_csv(os.path.join(res["run_dir"], "summary.csv"))
    assert all(r["seconds_per_epoch"] > 0 for r in rows)
    assert len(rows[0]) > 0 and {"test_acc_c0", "test_acc_c1", "test_acc_c2"} <= set(rows[0])
    # per-class accuracies average (equal test classes) to the overall one
    assert np.mean([rows[-1][f"test_acc_c{k}"] for k in range(3)]) == pytest.approx(rows[-1]["test_acc"], abs=1e-6)


def test_dry_run_lists_points_trains_nothing_and_reuse_is_reported(tmp_path, capsys):
    argv = ["--quick", "--structure", "2", "--epoch", "2"] + dirs(tmp_path)
    with pytest.raises(SystemExit) as e:
        block_main.main(argv + ["--dry_run"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "point 1 of 1 (--point 0)" in out and "to train" in out and "3-epoch probe" in out
    assert re.search(r"estimate for the 1 points to train: \d+\.\d min", out)
    assert not os.path.exists(tmp_path / "models" / "points") and not os.listdir(tmp_path / "plots")
    assert block_main.main(argv) == 0
    err = capsys.readouterr().err
    assert "[point 1 of 1 (--point 0)]" in err
    with pytest.raises(SystemExit):
        block_main.main(argv + ["--dry_run"])
    assert "finished" in capsys.readouterr().out
    assert block_main.main(argv) == 0
    assert "reused finished points (1 of 1" in capsys.readouterr().err


def test_mse_calibration_uses_the_clipped_renormalised_outputs():
    """For mse the confidence is max clip(z / s, 0, 1) renormalised: outputs exactly at the
    targets are perfectly calibrated (ECE 0) where the softmax would read 1 - e/(e + K - 1)."""
    K, s = 10, 2.0
    y = torch.arange(K).repeat(5)
    targets = s * torch.nn.functional.one_hot(y, K).double()
    assert mixup_geometry.expected_calibration_error(targets, y, loss="mse", mse_scale=s) == pytest.approx(0.0)
    softmax_ece = mixup_geometry.expected_calibration_error(targets, y)
    assert softmax_ece == pytest.approx(1 - np.exp(s) / (np.exp(s) + K - 1))
    # by hand: outputs (0.6, 0.3, -0.5) -> clipped (0.6, 0.3, 0) -> confidence 2/3; all outputs <= 0 -> 1/K
    z = torch.tensor([[0.6, 0.3, -0.5], [-1.0, -2.0, -0.1]], dtype=torch.float64)
    p = mixup_geometry.loss_probabilities(z, "mse", 1.0)
    assert torch.allclose(p, torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))
    # one correct sample at confidence 2/3 -> |1 - 2/3|; the logit losses keep the softmax
    assert mixup_geometry.expected_calibration_error(z[:1], torch.tensor([0]), loss="mse") == pytest.approx(1 / 3)
    assert torch.allclose(mixup_geometry.loss_probabilities(z, "focal"), torch.softmax(z, 1))


def test_opt_main_dry_run_solves_and_writes_nothing(tmp_path, capsys):
    # lambda above both thresholds: Z = 0 up to solver noise, which must not print as -0.
    argv = ["--cluster_s", "3", "7", "--sample_s", "500", "100", "--reg_z", "0.02", "--out_dir", str(tmp_path / "o"),
            "--plot_dir", str(tmp_path / "p"), "--name", "x"]
    opt_main.main(argv + ["--dry_run"])
    assert "K = 10, N = 2200" in capsys.readouterr().out and not os.listdir(tmp_path / "o")
    opt_main.main(argv)
    out = capsys.readouterr().out
    z_text = out.split("Z (classes as columns):")[1].split("b =")[0]
    assert re.findall(r"-?\d+\.\d*", z_text) and not re.search(r"-0\.(?!\d)", z_text)
    opt_main.main(argv + ["--dry_run"])
    assert "finished" in capsys.readouterr().out
