"""The mixup study (issue 14): one coefficient per batch by default, the ViT-B/4 and WRN-40-10
presets at their published sizes, and a small study grid whose table recomputes from its
per-seed rows and separates CE from MSE on the convex-combination residual."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

import mixup_batches
import mixup_main
import networks
import result_files
import seed_stats
import utils
from conftest import ROOT, dirs


def _coefficients(x_mixed, perm_free_rows):
    """The coefficient on each row's own input, read off x_mixed when x is the identity matrix
    (x_mixed[i] = m_i e_i + (1 - m_i) e_partner): independent of what mix_batch returns."""
    return np.diag(x_mixed.numpy())[perm_free_rows]


@pytest.mark.parametrize("lam_per", ["batch", "sample"])
def test_mix_batch_one_coefficient_per_batch_or_per_sample(lam_per):
    n = 64
    x, y = torch.eye(n), torch.arange(n)
    x_mixed, y_a, y_b, mix = mixup_batches.mix_batch(x, y, 1.0, torch.Generator().manual_seed(1), lam_per)
    moved = (y_a != y_b).numpy()                    # rows mixed with another row
    own = _coefficients(x_mixed, moved)
    partner = x_mixed.numpy()[np.flatnonzero(moved), y_b.numpy()[moved]]
    assert np.allclose(own + partner, 1, atol=1e-6)  # a convex combination of the row and its partner
    if lam_per == "batch":
        assert mix.dim() == 0 and np.allclose(own, mix.item(), atol=1e-6)
    else:
        assert mix.shape == (n,) and np.allclose(own, mix.numpy()[moved], atol=1e-6) and np.ptp(own) > 0.5


def test_batch_coefficients_follow_beta_alpha_alpha():
    gen = torch.Generator().manual_seed(0)
    draws = [mixup_batches.mix_batch(torch.zeros(4, 1), torch.arange(4), 0.4, gen)[3].item() for _ in range(2000)]
    assert scipy.stats.kstest(draws, scipy.stats.beta(0.4, 0.4).cdf).pvalue > 1e-3


def test_batch_is_the_default_and_training_draws_one_coefficient_per_batch(tmp_path, monkeypatch):
    assert mixup_main.parse_args([]).mix_per == "batch"
    calls = []
    real = mixup_batches.mix_batch

    def recording(x, y, alpha, gen, lam_per="batch"):
        out = real(x, y, alpha, gen, lam_per)
        calls.append((len(x), tuple(out[3].shape)))
        return out
    monkeypatch.setattr(mixup_batches, "mix_batch", recording)
    common = ["--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "20", "--model", "mlp",
              "--width", "8", "--epochs", "1", "--batch_size", "16", "--snapshot_size", "12", "--device", "cpu",
              "--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p")]
    mixup_main.main(common)
    assert calls == [(16, ()), (16, ()), (16, ()), (12, ())]   # 60 samples: 3 batches of 16 and one of 12
    config = result_files.read_json(os.path.join(tmp_path / "m", os.listdir(tmp_path / "m")[0], "config.json"))
    assert config["lam_per"] == "batch"
    calls.clear()
    mixup_main.main(common + ["--lam_per", "sample"])
    assert calls == [(16, (16,)), (16, (16,)), (16, (16,)), (12, (12,))]
    with pytest.raises(utils.UserError, match="--mix_per"):
        mixup_main.main(common + ["--lam_per", "epoch"])


def _vit_params(image, patch, channels, D, layers, mlp, K):
    """ViT parameter count from the architecture (Dosovitskiy et al.): patch embedding, class
    token, position embeddings, per block two LayerNorms, attention (qkv and output) and MLP,
    the final LayerNorm and the linear head."""
    tokens = (image // patch) ** 2 + 1
    block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * mlp + mlp) + (mlp * D + D)
    return channels * patch * patch * D + D + D + tokens * D + layers * block + 2 * D + D * K + K


def test_vit_b4_and_wrn_have_the_published_parameter_counts():
    # the formula gives torchvision's published size of ViT-B/16 (224x224, 1000 classes): 86,567,656
    assert _vit_params(224, 16, 3, 768, 12, 3072, 1000) == 86_567_656
    vit = networks.build_model("vit_b4", 10, 3)
    assert sum(p.numel() for p in vit.parameters()) == _vit_params(32, 4, 3, 768, 12, 3072, 10)  # 85.15M
    attn = [m for m in vit.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attn) == 12 and all(m.num_heads == 12 and m.embed_dim == 768 for m in attn)
    logits, h = vit(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and h.shape == (2, 768)
    assert torch.allclose(logits, vit.classifier(h), atol=1e-5)
    del vit
    wrn = networks.build_model("wrn", 10, 3)         # WRN-40-10: 55.8M on CIFAR-10 (Zagoruyko & Komodakis)
    assert abs(sum(p.numel() for p in wrn.parameters()) - 55.85e6) < 0.05e6
    with pytest.raises(utils.UserError, match="vit_b4"):
        networks.build_model("vit_b4", 10, 3, width=192)


def test_small_vit_uses_heads_of_64_dimensions():
    for width, heads in ((192, 3), (384, 6), (768, 12)):
        vit = networks.build_model("vit", 10, 3, width=width, depth=1)
        assert vit.blocks[0].self_attn.num_heads == heads


def test_seed_interval_by_hand_and_undefined_cases():
    s = seed_stats.seed_interval([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(np.sqrt(7 / 3))
    assert s["ci_hi"] - s["mean"] == pytest.approx(4.302653 * np.sqrt(7 / 3) / np.sqrt(3), rel=1e-5)  # t_0.975,2
    one = seed_stats.seed_interval([0.5, None])
    assert one["n"] == 1 and one["mean"] == 0.5 and np.isnan(one["std"]) and np.isnan(one["ci_lo"])
    assert np.isnan(seed_stats.seed_interval([])["mean"])


STUDY = ["--study", "--quick", "--datasets", "synthetic", "--models", "mlp", "--panel_losses", "--seeds", "0", "1", "2",
         "--no_baselines", "--device", "cpu"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    dirs = ["--models_dir", str(tmp / "m"), "--plot_dir", str(tmp / "p"), "--data_dir", str(tmp / "d")]
    mixup_main.main(STUDY + dirs)
    return tmp, dirs


@pytest.mark.slow
def test_study_table_recomputes_from_per_seed_rows_and_ce_is_above_mse(study):
    tmp, _ = study
    result = result_files.read_json(tmp / "p" / "mixup_study_quick.json")
    csv_rows = result_files.read_csv(tmp / "p" / "mixup_study_quick.csv")
    assert len(result["table"]) == len(csv_rows) == 2 and len(result["cells"]) == 6
    for row, csv_row in zip(result["table"], csv_rows):
        cells = [c for c in result["cells"] if all(c[k] == row[k] for k in ("dataset", "model", "loss", "mixup"))]
        assert row["n_seeds"] == len(cells) == 3
        for m in result["metrics"]:
            v = np.array([c[m] for c in cells], dtype=float)
            lo, hi = (scipy.stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=scipy.stats.sem(v))
                      if np.ptp(v) > 0 else (v[0], v[0]))   # scipy gives NaN for zero spread
            assert (row[f"{m}_mean"], row[f"{m}_std"]) == pytest.approx((v.mean(), v.std(ddof=1)))
            rlo, rhi = seed_stats.quantity_range(m)  # clipped to the metric's range
            assert (row[f"{m}_ci_lo"], row[f"{m}_ci_hi"]) == pytest.approx((max(lo, rlo), min(hi, rhi)))
            assert csv_row[f"{m}_mean"] == pytest.approx(row[f"{m}_mean"])
    ce, mse = ({r["loss"]: r for r in result["table"]}[k] for k in ("cross_entropy", "mse"))
    # the free-feature model: CE bends away from the chord (residual 0.36), MSE stays on it (0)
    key = "diff_convex_residual_mean"
    assert ce[f"{key}_ci_lo"] > mse[f"{key}_ci_hi"], (ce, mse)
    for name in ("projections", "losses", "dynamics", "calibration"):
        assert os.path.getsize(tmp / "p" / f"mixup_study_quick_{name}.png") > 0
    dyn = result["dynamics"]["cross_entropy"]
    assert len(dyn["nc3"]["mean"]) == len(dyn["epochs"]) and len(dyn["residual"]["mean"]) == len(dyn["snapshot_epochs"])


@pytest.mark.slow
def test_study_point_reuses_finished_cells_and_checks_its_range(study, capsys):
    tmp, dirs = study
    mixup_main.main(STUDY + dirs + ["--point", "1"])
    assert "[point" not in capsys.readouterr().err      # every cell finished: nothing trains
    with pytest.raises(utils.UserError, match="--point 6"):
        mixup_main.main(STUDY + dirs + ["--point", "6"])
    with pytest.raises(utils.UserError, match="--study"):
        mixup_main.main(["--point", "0"])
    with pytest.raises(utils.UserError, match="--losses"):
        mixup_main.main(STUDY + dirs + ["--losses", "hinge"])


@pytest.mark.slow
def test_study_launch_local_runs_every_cell_as_a_job_and_assembles(tmp_path, capsys):
    """--launch local: one job per missing cell (this command with --point I), then the table of all."""
    argv = (["--study", "--quick", "--datasets", "synthetic", "--models", "mlp", "--panel_losses", "--seeds", "0",
             "--no_baselines", "--epochs", "4", "--device", "cpu", "--launch", "local", "--wait"]
            + ["--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"),
               "--data_dir", str(tmp_path / "d")])
    mixup_main.main(argv)
    out = capsys.readouterr().out
    assert "submitted 2 local jobs" in out and "--assemble" in out
    result = result_files.read_json(tmp_path / "p" / "mixup_study_quick.json")
    assert len(result["cells"]) == 2 and result["missing"] == []
    assert sorted(c["loss"] for c in result["cells"]) == ["cross_entropy", "mse"]


def test_study_dry_run_trains_nothing(tmp_path, capsys):
    """--study --dry_run lists every cell and estimates the time from probes in throw-away folders."""
    argv = ["--study", "--quick", "--dry_run", "--datasets", "synthetic", "--models", "mlp", "--losses",
            "cross_entropy",
            "--panel_losses", "--seeds", "0", "3", "--epochs", "2", "--width", "8", "--device", "cpu",
            "--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"), "--data_dir", str(tmp_path / "d")]
    mixup_main.main(argv)
    out = capsys.readouterr().out
    assert out.count("epochs: to train") == 4 and "cell 4 of 4 (--point 3)" in out
    assert "estimate for the 4 cells to train" in out
    assert not os.path.exists(tmp_path / "m") or os.listdir(tmp_path / "m") == []
    assert not os.path.exists(tmp_path / "p") or os.listdir(tmp_path / "p") == []


def test_study_csv_intervals_stay_within_each_quantitys_range(study):
    tmp, _ = study
    ranges = {"test_acc": (0, 1), "test_ece": (0, 1), "same_angle_deg_mean": (0, 180),
              "diff_logit_gap_vs_log_odds_spearman": (-1, 1), "diff_convex_residual_mean": (0, np.inf),
              "diff_convex_residual_binned": (0, np.inf), "same_spread": (0, np.inf),
              "diff_residual_row_space": (0, np.inf), "diff_residual_orthogonal": (0, np.inf)}
    rows = result_files.read_csv(tmp / "p" / "mixup_study_quick.csv")
    assert set(result_files.read_json(tmp / "p" / "mixup_study_quick.json")["metrics"]) == set(ranges)
    for row in rows:
        for m, (lo, hi) in ranges.items():
            assert lo <= row[f"{m}_ci_lo"] <= row[f"{m}_mean"] <= row[f"{m}_ci_hi"] <= hi, (m, row)
            assert row[f"{m}_min"] <= row[f"{m}_mean"] <= row[f"{m}_max"]


def test_study_assemble_with_missing_cells_fails_naming_them_unless_partial(tmp_path):
    """--assemble on an empty models folder: exit 2, one line naming the missing cells, nothing written;
    with --partial the table is written, its missing cells listed."""
    argv = ["mixup_main.py", "--study", "--quick", "--datasets", "synthetic", "--models", "mlp", "--panel_losses",
            "--seeds", "0", "--no_baselines", "--assemble"] + dirs(tmp_path)
    got = subprocess.run([sys.executable] + argv, cwd=ROOT, capture_output=True, text=True)
    assert got.returncode == 2 and got.stderr.count("error:") == 1 and "Traceback" not in got.stderr
    assert "2 of 2 cells are not finished" in got.stderr and "--partial" in got.stderr
    assert not (tmp_path / "plots").exists() or os.listdir(tmp_path / "plots") == []
    got = subprocess.run([sys.executable] + argv + ["--partial"], cwd=ROOT, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    assert len(result_files.read_json(tmp_path / "plots" / "mixup_study_quick.json")["missing"]) == 2
