"""Mixup study: projection, free-feature optimum, losses, the mixed-input guard, and a tiny
end-to-end run with the replot commands."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import losses  # noqa: E402
import mixup_batches
import mixup_geometry  # noqa: E402
import mixup_main  # noqa: E402
import mixup_run
import networks  # noqa: E402
import replot  # noqa: E402
import result_files
import snapshot_files
import train_utils  # noqa: E402
import utils  # noqa: E402
from conftest import ROOT


def test_projection_of_exact_etf_is_equilateral_with_class_k_at_vertex_k():
    W = mixup_geometry.simplex_etf(10, 16, omega=2.0, seed=3)
    classes = [7, 2, 5]
    P, centre = mixup_geometry.mixup_projection(W, classes)
    V = mixup_geometry.project(W[classes], P, centre)
    d = [np.linalg.norm(V[i] - V[j]) for i, j in [(0, 1), (0, 2), (1, 2)]]
    assert np.allclose(d, d[0], rtol=1e-10)
    layout = np.array([[0.5, -np.sqrt(3) / 6], [-0.5, -np.sqrt(3) / 6], [0.0, np.sqrt(3) / 3]])
    assert np.allclose(V / np.linalg.norm(V[0]), layout / np.linalg.norm(layout[0]), atol=1e-10)


def test_closed_form_numbers_of_theory_section_5():
    K, beta = 10, 0.01
    a, b, t = mixup_geometry.ufm_pair_logits(0.5, K, beta)
    a_same = mixup_geometry.ufm_same_class_logit(K, beta)
    # projected, the lam = 1/2 feature lies at 0.78 of the way to each same-class vertex
    assert (a - t) / (a_same * K / (K - 1)) == pytest.approx(0.778, abs=1e-3)
    for lam in (0.2, 0.7):
        a, b, _ = mixup_geometry.ufm_pair_logits(lam, K, 1e-6)
        assert a - b == pytest.approx(np.log(lam / (1 - lam)), abs=1e-4)
    ce = mixup_geometry.ufm_mixup_snapshot("cross_entropy", K, beta, n_mix=9)
    same = ce["y_a"] == ce["y_b"]
    for c in ce["classes"]:      # same-class optimum independent of lam, along w_c
        H = ce["features"][same & (ce["y_a"] == c)]
        assert np.allclose(H, H[0], atol=1e-12)
        assert np.allclose(H[0] / np.linalg.norm(H[0]), ce["W"][c] / np.linalg.norm(ce["W"][c]))
    s_ce = mixup_geometry.mixup_geometry_summary(ce)
    s_mse = mixup_geometry.mixup_geometry_summary(mixup_geometry.ufm_mixup_snapshot("mse", K, beta, n_mix=9))
    assert s_mse["diff_convex_residual_mean"] < 1e-12 < 0.2 < s_ce["diff_convex_residual_mean"]
    assert s_ce["diff_logit_gap_vs_log_odds_spearman"] > 0.99


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_direct_optimiser_matches_closed_forms(loss):
    closed = mixup_geometry.ufm_mixup_snapshot(loss, 6, 0.05, n_mix=5)
    direct = mixup_geometry.ufm_mixup_snapshot(loss, 6, 0.05, n_mix=5, loss_fn=losses.get_loss(loss))
    assert np.abs(closed["features"] - direct["features"]).max() < 1e-5


def test_network_is_fed_the_mixed_inputs():
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(12, 3)

        def forward(self, x):
            seen.append(x.detach().clone())
            h = x.flatten(1)
            return self.classifier(h), h

    x, y = torch.randn(8, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = Recorder()
    gen = torch.Generator().manual_seed(5)
    x_mix, y_a, y_b, lam = mixup_batches.mix_batch(x, y, 1.0, torch.Generator().manual_seed(5))
    loss, _ = train_utils.make_mixup_objective(losses.cross_entropy_loss, 1.0)(model, x, y, 1, gen)
    assert torch.allclose(seen[0], x_mix) and not torch.allclose(seen[0], x)
    expected = mixup_batches.mixup_loss(losses.cross_entropy_loss, model(x_mix)[0], y_a, y_b, lam)
    assert loss.item() == pytest.approx(expected.item())


def _value_and_grad(fn, z, y):
    z = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    v = fn(z, torch.tensor(y)).sum()
    v.backward()
    return v.item(), z.grad.numpy()


def test_losses_value_and_gradient_by_hand():
    z, y = [[1.0, 0.0, -1.0]], [0]
    p = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    v, g = _value_and_grad(losses.cross_entropy_loss, z, y)
    assert v == pytest.approx(-np.log(p[0])) and np.allclose(g, p - [1, 0, 0])
    v, g = _value_and_grad(lambda a, b: losses.mse_loss(a, b, scale=2.0), z, y)
    assert v == pytest.approx(0.5 * (1 + 0 + 1)) and np.allclose(g, [[-1, 0, -1]])
    eps = 0.3
    v, g = _value_and_grad(lambda a, b: losses.label_smoothing_loss(a, b, eps), z, y)
    target = (1 - eps) * np.array([1, 0, 0]) + eps / 3
    assert v == pytest.approx(-(target * np.log(p)).sum()) and np.allclose(g, p - target)
    v, g = _value_and_grad(lambda a, b: losses.focal_loss(a, b, 2.0), z, y)
    assert v == pytest.approx(-(1 - p[0]) ** 2 * np.log(p[0]))
    dl_dp = 2 * (1 - p[0]) * np.log(p[0]) - (1 - p[0]) ** 2 / p[0]
    assert np.allclose(g, dl_dp * p[0] * (np.array([1, 0, 0]) - p))
    # the mixed loss: lam l(y_a) + (1 - lam) l(y_b), per-sample lam
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    mixed = mixup_batches.mixup_loss(losses.cross_entropy_loss, logits, torch.tensor([0, 1]),
                                   torch.tensor([2, 0]), torch.tensor([0.25, 1.0]))
    ce = losses.cross_entropy_loss
    by_hand = (0.25 * ce(logits[:1], torch.tensor([0])) + 0.75 * ce(logits[:1], torch.tensor([2]))
               + ce(logits[1:], torch.tensor([1]))) / 2
    assert mixed.item() == pytest.approx(by_hand.item())


def test_wide_resnet_vit_and_fixed_etf():
    x = torch.randn(2, 3, 32, 32)
    for name, kw in [("wrn", dict(width=1, depth=10)), ("vit", dict(width=32, depth=1))]:
        model = networks.build_model(name, 5, 3, **kw)
        logits, h = model(x)
        assert logits.shape == (2, 5) and h.shape == (2, model.feat_dim)
    lin = train_utils.fixed_etf_classifier_(torch.nn.Linear(8, 4))
    G = lin.weight @ lin.weight.T
    assert torch.allclose(G, torch.eye(4) * 4 / 3 - 1 / 3, atol=1e-6) and not lin.weight.requires_grad


TINY = ["--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "24", "--model", "cnn",
        "--width", "4", "--epochs", "3", "--snapshots", "1", "3", "--snapshot_size", "60",
        "--batch_size", "16", "--lr", "0.05", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixup")
    dirs = dict(models_dir=str(tmp / "models"), plot_dir=str(tmp / "plots"), data_dir=str(tmp / "data"))
    extra = sum([[f"--{k}", v] for k, v in dirs.items()], [])
    for loss in ("cross_entropy", "mse"):
        mixup_main.main(TINY + extra + ["--loss", loss])
    mixup_main.main(TINY + extra + ["--loss", "focal", "--fixed_etf"])
    return tmp, sorted(os.path.join(dirs["models_dir"], d) for d in os.listdir(dirs["models_dir"]))


def test_summary_centres_features_by_their_global_mean():
    K, beta = 10, 0.01
    snap = mixup_geometry.ufm_mixup_snapshot("cross_entropy", K, beta, n_mix=9)
    shift = np.random.default_rng(0).normal(size=snap["features"].shape[1]) * 5
    shifted = dict(snap, features=snap["features"] + shift)
    plain, centred = mixup_geometry.mixup_geometry_summary(snap), mixup_geometry.mixup_geometry_summary(
        dict(shifted, feature_mean=shift))
    assert mixup_geometry.mixup_geometry_summary(shifted)["same_angle_deg_mean"] > 1  # an offset shows as an angle
    for key in ("same_angle_deg_mean", "diff_convex_residual_mean", "same_spread"):
        assert centred[key] == pytest.approx(plain[key], abs=1e-9)


def test_quick_defaults_yield_to_explicit_arguments():
    quick = mixup_main.parse_args(["--quick"])
    mixup_run.apply_recipe(quick)   # the training settings come from the network's CPU recipe (recipes.py)
    assert (quick.dataset, quick.epochs, quick.feature_mode, quick.weight_decay) == ("digits", 200, "eval", 1e-2)
    mine = mixup_main.parse_args(["--quick", "--epochs", "7", "--feature_mode", "train", "--dataset", "synthetic"])
    mixup_run.apply_recipe(mine)
    assert (mine.dataset, mine.epochs, mine.feature_mode) == ("synthetic", 7, "train")


@pytest.mark.slow
def test_end_to_end_writes_every_file(runs):
    tmp, run_dirs = runs
    assert len(run_dirs) == 3
    for run_dir in run_dirs:
        rows = result_files.read_csv(os.path.join(run_dir, "summary.csv"))
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert {"loss", "train_acc", "test_loss", "test_acc", "test_ece"} <= set(rows[0])
        for e in (1, 3):
            snap = snapshot_files.load_snapshot(snapshot_files.mixup_snapshot_path(run_dir, e))
            assert {"features", "mix", "y_a", "y_b", "logits", "W", "b", "classes", "feature_mean"} <= set(snap)
            assert snap["feature_mean"].shape == (16,)
            assert snap["features"].shape == (60, 16) and len(set(snap["classes"])) == 3
            summary_path = snapshot_files.mixup_snapshot_path(run_dir, e, "json")
            assert "diff_convex_residual_mean" in result_files.read_json(summary_path)
        plots = os.path.join(tmp, "plots", os.path.basename(run_dir))
        for name in ("projection_e0001.png", "projection_e0003.png", "projection_grid.png", "loss.png",
                     "accuracy.png", "geometry.json"):
            assert os.path.getsize(os.path.join(plots, name)) > 0
    etf = snapshot_files.load_snapshot(snapshot_files.mixup_snapshot_path(run_dirs[1], 3))  # the focal, fixed-ETF run
    assert np.allclose(etf["W"] @ etf["W"].T, np.eye(3) * 1.5 - 0.5, atol=1e-5)


@pytest.mark.slow
def test_finished_run_is_reused(runs, capsys):
    tmp, _ = runs
    mixup_main.main(TINY + ["--loss", "mse", "--models_dir", str(tmp / "models"), "--plot_dir",
                            str(tmp / "plots"), "--data_dir", str(tmp / "data")])
    assert "reusing finished run" in capsys.readouterr().out


@pytest.mark.slow
def test_replot_commands(runs, capsys):
    tmp, run_dirs = runs
    out = tmp / "replots"
    npz = snapshot_files.mixup_snapshot_path(run_dirs[0], 3)
    commands = [["mixup-projection", npz], ["mixup-grid", run_dirs[0]], ["mixup-loss"] + run_dirs,
                ["mixup-accuracy", run_dirs[0]], ["mixup-compare"] + run_dirs,
                ["mixup-ufm", "--loss", "mse", "--num_classes", "5"]]
    for i, cmd in enumerate(commands):
        replot.main(cmd + ["--out", str(out / f"{i}.png")])
        assert os.path.getsize(out / f"{i}.png") > 0
    assert os.path.exists(out / "4.json")


@pytest.mark.parametrize("bad, word", [
    (["--loss", "hinge"], "--loss"), (["--alpha", "0"], "--alpha"), (["--classes", "0", "1"], "--classes"),
    (["--classes", "0", "0", "1"], "--classes"), (["--classes", "0", "1", "3"], "--classes"),
    (["--snapshots", "4"], "--snapshots"), (["--model", "lenet"], "--model"), (["--model", "ufm"], "--model"),
    (["--dataset", "svhn"], "--dataset"), (["--optimizer", "lbfgs"], "--optimizer")])
def test_bad_input_is_one_clear_line(bad, word, tmp_path):
    with pytest.raises(utils.UserError, match=word):
        mixup_main.main(TINY + bad + ["--models_dir", str(tmp_path / "m")])
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.slow
def test_cli_exit_status_2_without_traceback():
    for cmd in ([sys.executable, "mixup_main.py", "--alpha", "-1"],
                [sys.executable, "utils.py", "mixup-ufm", "--loss", "hinge"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_losses_without_torch_functional_match_torch():
    """losses.py uses tensor methods only (no torch import); its values equal torch's own functions."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (7,), generator=g)
    assert torch.equal(losses.cross_entropy_loss(z, y), F.cross_entropy(z, y, reduction="none"))
    onehot = F.one_hot(y, 5).to(z.dtype)
    assert torch.allclose(losses.mse_loss(z, y, 2.0), 0.5 * (z - 2.0 * onehot).pow(2).sum(1), rtol=0, atol=1e-15)
    smooth = (1 - 0.1) * onehot + 0.1 / 5
    assert torch.allclose(losses.label_smoothing_loss(z, y, 0.1), -(smooth * F.log_softmax(z, 1)).sum(1))
