"""Networks, the regularised training loop, resume, reuse and training errors."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import batched_training
import datasets
import networks
import result_files
import run_locks
import train_utils
import ufm_training
from conftest import ROOT, kill_at
from utils import UserError

CPU = torch.device("cpu")


def small_data(sizes=(30, 30, 12, 12), seed=0):
    return datasets.get_data("synthetic", list(sizes), seed=seed, synthetic={"image_size": 8, "noise": 3.0})


CFG = dict(name="t", network="mlp", width=32, epochs=8, lr=0.05, batch_size=16, lam_h=1e-5, lam_w=5e-4,
           lam_b=1e-2, eval_epochs=[1, 2, 4, 6, 8])


@pytest.mark.parametrize("name,feat", [("ResNet18", 512), ("resnet18_nobias", 512), ("VGG11", 512),
                                       ("vgg13", 512), ("MLP", 256), ("cnn", 128)])
def test_networks_share_one_interface(name, feat):
    model = networks.build_model(name, num_classes=7, in_channels=3)
    logits, h = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and h.shape == (2, feat) and model.feat_dim == feat
    assert isinstance(model.classifier, torch.nn.Linear)
    assert (model.classifier.bias is None) == (name == "resnet18_nobias")


def test_ufm_features_are_free_parameters():
    model = networks.build_model("UFM", num_classes=3, num_samples=5, feat_dim=4)
    logits, h = model(torch.tensor([4, 0]))
    assert torch.equal(h, model.H[[4, 0]]) and logits.shape == (2, 3)
    with pytest.raises(UserError, match="network resnet50: unknown"):
        networks.build_model("resnet50", 10)


def test_objective_matches_theory_formula():
    """Full batch: loss = mean CE + lam_W ||W||^2 + lam_H sum ||h||^2 + lam_b ||b||^2 (theory.md section 2)."""
    torch.manual_seed(0)
    model = networks.build_model("ufm", num_classes=3, num_samples=6, feat_dim=4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = dict(lam_h=0.01, lam_w=0.02, lam_b=0.03)
    loss, terms = train_utils.regularized_objective(model, torch.arange(6), y, cfg, 6, 1.0)
    W, b, H = model.classifier.weight, model.classifier.bias, model.H
    expected = (torch.nn.functional.cross_entropy(H @ W.T + b, y) + 0.02 * W.pow(2).sum()
                + 0.01 * H.pow(2).sum() + 0.03 * b.pow(2).sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # a minibatch estimates the feature term as lam_H * N * mean over the batch
    _, t = train_utils.regularized_objective(model, torch.arange(2), y[:2], cfg, 6, 1.0)
    assert t["reg_h"].item() == pytest.approx(0.01 * 6 * H[:2].pow(2).sum(1).mean().item(), rel=1e-6)


def test_short_run_nc1_falls_and_files_are_written(tmp_path):
    out = train_utils.train_run(CFG, small_data(), CPU, models_dir=str(tmp_path))
    rows = result_files.read_csv(os.path.join(out["run_dir"], "summary.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 4, 6, 8]
    assert rows[-1]["nc1"] < 0.5 * rows[0]["nc1"]
    assert {"loss", "ce", "reg_w", "reg_h", "reg_b", "train_acc", "test_acc", "nc1_weighted", "nc4"} <= set(rows[0])
    cfg = result_files.read_json(os.path.join(out["run_dir"], "config.json"))
    assert cfg["seed"] == 0 and cfg["lam_h"] == 1e-5 and cfg["sizes"] == [30, 30, 12, 12]
    assert np.array(out["Z"]).shape == (4, 4) and len(out["b"]) == 4
    assert not os.path.exists(os.path.join(out["run_dir"], "checkpoint.pt"))
    assert os.path.exists(os.path.join(out["run_dir"], "model.pt"))


def test_finished_run_is_reused(tmp_path):
    first = train_utils.train_run(CFG, small_data(), CPU, models_dir=str(tmp_path))
    stamp = os.path.getmtime(os.path.join(first["run_dir"], "final.json"))
    again = train_utils.train_run(CFG, small_data(), CPU, models_dir=str(tmp_path))
    assert again["reused"] and again["run_dir"] == first["run_dir"]
    assert os.path.getmtime(os.path.join(first["run_dir"], "final.json")) == stamp
    other = train_utils.train_run(dict(CFG, lam_w=1e-3), small_data(), CPU, models_dir=str(tmp_path))
    assert other["run_dir"] != first["run_dir"] and not other["reused"]


UFM_CFG = dict(name="u", network="ufm", optimizer="lbfgs", lr=1.0, batch_size=84, epochs=8, feat_dim=8,
               lam_h=1e-3, lam_w=1e-2, lam_b=1e-2, eval_epochs=[1, 2, 4, 6, 8])


@pytest.mark.parametrize("cfg", [CFG], ids=["mlp_sgd"])
def test_killed_run_resumes_to_the_same_result(tmp_path, cfg):
    whole = train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "a"))

    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "b"), on_eval=kill_at(6))
    run_dir = train_utils.run_dir_of({**train_utils.TRAIN_DEFAULTS, **cfg}, small_data(), str(tmp_path / "b"))
    assert torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["epoch"] == 4
    resumed = train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "b"))
    assert not resumed["reused"]
    for k, v in whole["final"].items():
        if k != "seconds_per_epoch":  # wall-clock time, the one column a resume cannot reproduce
            assert resumed["final"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    np.testing.assert_allclose(resumed["Z"], whole["Z"], rtol=1e-6)


def test_ufm_stops_at_relative_gradient_test(tmp_path):
    """The UFM's L-BFGS stops before its 40 epochs, where an independent float64 gradient of the
    objective (N x K logits, autograd) in the balanced variables passes ||grad|| ||theta|| <= tol |f|."""
    cfg = dict(UFM_CFG, epochs=40, eval_epochs=[40])
    data = small_data()
    out = train_utils.train_run(cfg, data, CPU, models_dir=str(tmp_path))
    assert out["final"]["epoch"] < 40
    state = torch.load(os.path.join(out["run_dir"], "model.pt"), weights_only=True)
    scale = np.sqrt(cfg["lam_w"] / cfg["lam_h"])  # the test is taken in U = H / scale, W, b
    U, W, b = (state[k].double().requires_grad_() for k in ("H", "classifier.weight", "classifier.bias"))
    U = (U / scale).detach().requires_grad_()
    y = data.y_train
    H = scale * U
    f = (torch.nn.functional.cross_entropy(H @ W.T + b, y) + cfg["lam_w"] * (W ** 2).sum()
         + cfg["lam_h"] * len(y) * (H ** 2).sum(1).mean() + cfg["lam_b"] * (b ** 2).sum())
    grads = torch.autograd.grad(f, (U, W, b))
    g = torch.sqrt(sum((x ** 2).sum() for x in grads))
    theta = torch.sqrt(sum((x ** 2).sum() for x in (U, W, b)))
    assert g * theta <= ufm_training.UFM_REL_GRAD_TOL * f
    assert out["final"]["loss"] == pytest.approx(f.item(), rel=1e-9)


def test_killed_ufm_resumes_to_the_same_optimum(tmp_path):
    """The UFM checkpoint holds no L-BFGS history (small), and the resumed run ends at the same
    optimum to the stop test's accuracy."""
    cfg = dict(UFM_CFG, lam_h=1e-6, lam_w=1e-5, epochs=40, eval_epochs=[1, 2, 40])
    whole = train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "a"))
    assert whole["final"]["epoch"] > 2

    def kill_after_1(model, epoch, run_dir):
        if epoch == 2:
            raise KeyboardInterrupt
        return {}
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "b"), on_eval=kill_after_1)
    run_dir = train_utils.run_dir_of({**train_utils.TRAIN_DEFAULTS, **cfg}, small_data(), str(tmp_path / "b"))
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == 1 and "optimizer" not in ckpt
    resumed = train_utils.train_run(cfg, small_data(), CPU, models_dir=str(tmp_path / "b"))
    assert resumed["final"]["loss"] == pytest.approx(whole["final"]["loss"], rel=1e-8)
    np.testing.assert_allclose(resumed["Z"], whole["Z"], rtol=0, atol=1e-3 * np.abs(whole["Z"]).max())


def test_ufm_full_batch_objective_matches_the_regularised_objective():
    """The K x N cross-entropy layout gives the value of regularized_objective on all samples."""
    cfg = {**train_utils.TRAIN_DEFAULTS, **UFM_CFG}
    model = networks.build_model("ufm", 4, num_samples=84, feat_dim=8)
    y = small_data().y_train
    fast, terms = ufm_training.ufm_full_batch_objective(model, y, cfg, 0.5)
    ref, ref_terms = train_utils.regularized_objective(model, torch.arange(84), y, cfg, 84, 0.5)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-6)
    for k in ("ce", "reg_w", "reg_h", "reg_b"):
        assert terms[k].item() == pytest.approx(ref_terms[k].item(), rel=1e-6), k


def test_divergence_names_epoch_and_terms(tmp_path):
    with pytest.raises(UserError, match=r"diverged at epoch \d+: non-finite .*loss"):
        train_utils.train_run(dict(CFG, lr=1e12, epochs=5, eval_epochs=[5]), small_data(), CPU,
                              models_dir=str(tmp_path))


@pytest.mark.parametrize("change,match", [
    (dict(lam_h=-1.0), "lam_h: -1.0 is not allowed"), (dict(epochs=0), "epochs"),
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(eval_epochs=[99]), "eval_epochs"),
])
def test_bad_training_settings(tmp_path, change, match):
    with pytest.raises(UserError, match=match):
        train_utils.train_run(dict(CFG, **change), small_data(), CPU, models_dir=str(tmp_path))
    assert not os.listdir(tmp_path)  # rejected before anything was written


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path):
    run_dir = train_utils.run_dir_of({**train_utils.TRAIN_DEFAULTS, **CFG}, small_data(), str(tmp_path))
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "checkpoint.pt"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(UserError, match="checkpoint .* unreadable"):
        train_utils.train_run(CFG, small_data(), CPU, models_dir=str(tmp_path))
    assert open(os.path.join(run_dir, "checkpoint.pt"), "rb").read() == b"garbage"


def test_unwritable_models_dir(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(UserError, match="--models_dir"):
        train_utils.train_run(CFG, small_data(), CPU, models_dir=str(blocker))


@pytest.mark.slow
def test_cli_bad_input_is_one_line_without_traceback():
    r = subprocess.run([sys.executable, "utils.py", "prepare", "--dataset", "svhn", "--sizes", "1", "2"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: --dataset svhn: unknown dataset; allowed are " + ", ".join(datasets.DATASETS)


@pytest.mark.parametrize("network,width", [("mlp", 32), ("cnn", 8)])
def test_batched_runs_match_one_by_one_runs(tmp_path, network, width):
    """train_batched (one vmapped model) ends every run where train_run alone ends it with the same
    seed (initial weights and data order), up to the rounding of batched matrix products; its run
    folders are then reused by train_run."""
    cfgs = [dict(CFG, network=network, width=width, lam_h=1e-5 * (1 + i), lam_w=5e-4 * (1 + i), seed=i % 2)
            for i in range(3)]
    data = small_data()
    alone = [train_utils.train_run(c, data, CPU, models_dir=str(tmp_path / "a")) for c in cfgs]
    together = batched_training.train_batched(cfgs, data, CPU, models_dir=str(tmp_path / "b"))
    assert alone[0]["final"]["loss"] != pytest.approx(alone[2]["final"]["loss"], rel=1e-3)  # the runs differ
    for a, b in zip(alone, together):
        for k in ("loss", "ce", "reg_h", "nc1", "train_acc", "test_acc"):
            assert b["final"][k] == pytest.approx(a["final"][k], rel=1e-4, abs=1e-6), k
        np.testing.assert_allclose(b["Z"], a["Z"], rtol=1e-3, atol=1e-4)
        rows = result_files.read_csv(os.path.join(b["run_dir"], "summary.csv"))
        assert [r["epoch"] for r in rows] == [1, 2, 4, 6, 8]
        assert all(r["seconds_per_epoch"] > 0 for r in rows)  # each run's share of the batch's time (--dry_run)
        record = result_files.read_json(os.path.join(b["run_dir"], "config.json"))["record"]
        assert record["device"] == "cpu" and {"git_commit", "torch", "threads", "start_time"} <= set(record)
    assert all(train_utils.train_run(c, data, CPU, models_dir=str(tmp_path / "b"))["reused"] for c in cfgs)


@pytest.mark.parametrize("network", ["resnet18", "vgg11"])
def test_batched_conv_networks_match_one_by_one_runs(tmp_path, network):
    """ResNet18 and VGG batch unchanged: vmap gives each run's BatchNorm2d its own batch statistics
    and its own slice of the stacked running statistics. At width 4 on 16 x 16 images, lr 0.01, the
    runs agree with train_run's to about 1e-7 in Z and the loss and 1e-5 relative in nc1 (the size
    of the difference between 1 and 2 CPU threads of train_run itself); the tolerances leave 10x.
    (At lr 0.05 these toys amplify any rounding: 1 against 2 threads of train_run alone differ by
    0.1 in Z; on 8 x 8 images, BatchNorm over 1 x 1 pixels and a last batch of 2, so do batched runs.)"""
    data = datasets.get_data("synthetic", [8, 8, 4, 4], seed=0,
                             synthetic={"image_size": 16, "channels": 1, "noise": 3.0})
    cfgs = [dict(name="c", network=network, width=4, epochs=2, lr=0.01, batch_size=8, lam_h=1e-5 * (1 + i),
                 lam_w=5e-4 * (1 + i), lam_b=1e-2, seed=i) for i in range(2)]
    alone = [train_utils.train_run(c, data, CPU, models_dir=str(tmp_path / "a")) for c in cfgs]
    together = batched_training.train_batched(cfgs, data, CPU, models_dir=str(tmp_path / "b"))
    for a, b in zip(alone, together):
        assert not b["reused"]
        for k in ("loss", "ce", "reg_h", "nc1", "train_acc", "test_acc"):
            assert b["final"][k] == pytest.approx(a["final"][k], rel=1e-4, abs=1e-6), k
        np.testing.assert_allclose(b["Z"], a["Z"], rtol=0, atol=1e-6)


def test_batched_training_waits_for_a_held_run_and_reuses_it(tmp_path):
    """train_batched holds every run's lock: a run another process holds is waited for, then
    reused (not retrained); the others are trained together."""
    cfgs = [dict(CFG, epochs=2, eval_epochs=[2], lam_h=1e-5 * (1 + i)) for i in range(3)]
    data = small_data()
    held = {**train_utils.TRAIN_DEFAULTS, **cfgs[1]}
    run_dir = train_utils.run_dir_of(held, data, str(tmp_path))
    os.makedirs(run_dir)
    out = {}
    batch = threading.Thread(
        target=lambda: out.update(res=batched_training.train_batched(cfgs, data, CPU, str(tmp_path))))
    with run_locks.run_lock(os.path.join(run_dir, "lock"), "the run (held by the test)"):
        batch.start()
        # as another process's train_run would
        other = train_utils.train_locked_run(held, data, CPU, run_dir, None, None)
        assert batch.is_alive()  # waiting for the lock
    batch.join(120)
    res = out["res"]
    assert [r["reused"] for r in res] == [False, True, False]
    assert res[1]["final"] == other["final"] and res[1]["run_dir"] == run_dir
    assert res[0]["final"]["loss"] != res[2]["final"]["loss"]
    assert not any(f.startswith("lock") for r in res for f in os.listdir(r["run_dir"]))
    again = batched_training.train_batched(cfgs + cfgs[:1], data, CPU, str(tmp_path))  # finished: no lock, no training
    assert all(r["reused"] for r in again) and again[3]["run_dir"] == res[0]["run_dir"]


def test_killed_batch_resumes_from_the_runs_checkpoints(tmp_path, monkeypatch, capsys):
    """A batch killed after an evaluated epoch resumes from each run's checkpoint (train_run's format:
    weights, its slice of the momentum, its data order) and ends with the numbers of an uninterrupted
    batch; a batch whose runs stopped at different epochs resumes each run alone, as train_run would."""
    cfgs = [dict(CFG, lam_h=1e-5 * (1 + i), seed=i) for i in range(3)]   # 8 epochs, evaluated at 1, 2, 4, 6, 8
    data = small_data()
    whole = batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "whole"))
    real, calls = train_utils.evaluate, []

    def killed_at_epoch_6(*args, **kwargs):  # the evaluation of epoch 6: after the checkpoints of epoch 4
        calls.append(1)
        if len(calls) > 3 * 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train_utils, "evaluate", killed_at_epoch_6)
    with pytest.raises(KeyboardInterrupt):
        batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "killed"))
    monkeypatch.setattr(train_utils, "evaluate", real)
    ckpt = train_utils.load_checkpoint(os.path.join(whole[0]["run_dir"].replace("whole", "killed"), "checkpoint.pt"))
    assert ckpt["epoch"] == 4 and [r["epoch"] for r in ckpt["history"]] == [1, 2, 4]
    capsys.readouterr()
    resumed = batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "killed"))
    assert "resuming 3 batched runs from epoch 4" in capsys.readouterr().err
    for a, b in zip(whole, resumed):
        np.testing.assert_allclose(b["Z"], a["Z"], rtol=0, atol=1e-6)
        assert b["final"]["loss"] == pytest.approx(a["final"]["loss"], rel=1e-6)
        assert [r["epoch"] for r in result_files.read_csv(os.path.join(b["run_dir"], "summary.csv"))] == [1, 2, 4, 6, 8]
        assert not os.path.exists(os.path.join(b["run_dir"], "checkpoint.pt"))
    # runs stopped at different epochs (run 0 trained alone to its epoch-4 checkpoint): each resumes alone
    monkeypatch.setattr(train_utils, "evaluate", killed_at_epoch_6)
    calls.clear()
    calls.extend([1] * 6)  # dies at its 4th evaluation, epoch 6
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(cfgs[0], data, CPU, str(tmp_path / "mixed"))
    monkeypatch.setattr(train_utils, "evaluate", real)
    mixed = batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "mixed"))
    assert "resuming" in capsys.readouterr().err
    for a, b in zip(whole, mixed):
        np.testing.assert_allclose(b["Z"], a["Z"], rtol=1e-3, atol=1e-4)
    # a run killed after its last checkpoint, before final.json: finished alone, not trained again
    monkeypatch.setattr(train_utils, "finish_run", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(cfgs[0], data, CPU, str(tmp_path / "end"))
    monkeypatch.undo()
    end = batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "end"))
    assert "resuming" in capsys.readouterr().err and not end[0]["reused"]
    np.testing.assert_allclose(end[0]["Z"], whole[0]["Z"], rtol=1e-3, atol=1e-4)


def test_train_batched_refuses_configurations_that_differ_in_more_than_lambda_and_seed():
    with pytest.raises(ValueError, match="differ only"):
        batched_training.train_batched([CFG, dict(CFG, lr=0.1)], small_data(), CPU)
