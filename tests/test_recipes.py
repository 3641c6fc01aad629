"""Training recipes (issue 25): each recipe builds the optimizer and learning-rate schedule it
documents (checked against torch's own schedulers), each network gets its recipe, a flag the user
gives wins over the recipe, and the study's dry run names every cell's recipe."""
import os

import pytest
import torch

import fit_checks
import mixup_main
import mixup_plots
import mixup_run
import mixup_study
import recipes
import result_files
import train_utils
import utils

OPTIMIZER_CLASS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _torch_lrs(recipe):
    """The per-epoch lr of the recipe from torch's schedulers, stepped once per epoch: a linear
    warm-up from lr/W (LinearLR) times MultiStepLR (step), or the warm-up then CosineAnnealingLR to 0
    over the epochs after it (cosine)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    W, E, lr_sched = recipe.warmup_epochs, recipe.epochs, torch.optim.lr_scheduler
    warm = [lr_sched.LinearLR(opt, 1 / W, 1.0, total_iters=W - 1)] if W else []
    if recipe.schedule == "cosine":
        main = lr_sched.CosineAnnealingLR(opt, T_max=E - W, eta_min=0.0)
        sched = lr_sched.SequentialLR(opt, warm + [main], milestones=[W]) if W else main
    else:
        main = lr_sched.MultiStepLR(opt, recipe.settings()["lr_milestones"], recipe.lr_gamma)
        sched = lr_sched.ChainedScheduler(warm + [main])
    lrs = []
    for _ in range(E):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_each_recipe_builds_its_optimizer_and_schedule(name):
    recipe = recipes.RECIPES[name]
    cfg = recipe.settings()
    assert cfg["epochs"] == recipe.epochs and cfg["batch_size"] == recipe.batch_size and recipe.source
    opt = train_utils.make_optimizer(torch.nn.Linear(3, 2), cfg)
    assert type(opt) is OPTIMIZER_CLASS[recipe.optimizer]
    group = opt.param_groups[0]
    assert group["lr"] == recipe.lr and group["weight_decay"] == recipe.weight_decay
    if recipe.optimizer == "sgd":
        assert group["momentum"] == recipe.momentum
    # the schedule train_run applies (train_utils.lr_at) is torch's, epoch by epoch (float rounding: 1e-12 relative)
    ours = [train_utils.lr_at(cfg, e) for e in range(1, recipe.epochs + 1)]
    assert ours == pytest.approx(_torch_lrs(recipe), rel=1e-12, abs=1e-15)
    if recipe.warmup_epochs:
        assert ours[0] == pytest.approx(recipe.lr / recipe.warmup_epochs)
    assert max(ours) == pytest.approx(recipe.lr) and ours[-1] > 0


def test_documented_recipe_values():
    sgd, vit = recipes.RECIPES["sgd_step"], recipes.RECIPES["vit_adamw"]
    # the student repository: SGD 0.1, momentum 0.9, weight decay 1e-4, x0.1 at 30/50/90% of 500 epochs, batch 128
    assert sgd.settings() == dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, epochs=500,
                                  lr_schedule="step", lr_milestones=[150, 250, 450], lr_gamma=0.1, warmup_epochs=0)
    # DeiT: AdamW, 5e-4 x batch / 512, weight decay 0.05, 5 warm-up epochs, cosine
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.warmup_epochs, vit.schedule, vit.batch_size) == (
        "adamw", 1.25e-4, 0.05, 5, "cosine", 128)
    lrs = [recipes.lr_at(vit.settings(), e) for e in (1, 5, 6, 6 + (500 - 5) // 2)]
    assert lrs[:3] == pytest.approx([1.25e-4 / 5, 1.25e-4, 1.25e-4])
    assert lrs[3] == pytest.approx(1.25e-4 / 2, rel=1e-2)   # half-way through the cosine: half the lr


def test_each_network_gets_its_recipe():
    assert recipes.recipe_for("wrn").name == "sgd_step" and recipes.recipe_for("resnet18").name == "sgd_step"
    assert recipes.recipe_for("vit_b4").name == recipes.recipe_for("ViT").name == "vit_adamw"
    assert recipes.recipe_for("mlp", cpu=True).name == "mlp_cpu"
    assert recipes.recipe_for("cnn", cpu=True).name == "cnn_cpu"
    assert recipes.recipe_for("wrn", name="vit_adamw").name == "vit_adamw"
    with pytest.raises(utils.UserError, match="--recipe"):
        recipes.recipe_for("wrn", name="nope")


def _checked(argv):
    args = mixup_main.parse_args(argv + ["--device", "cpu"])
    mixup_run.check_args(args)
    return args


def test_a_given_flag_wins_over_the_recipe(tmp_path):
    plot = ["--plot_dir", str(tmp_path)]
    args = _checked(["--dataset", "synthetic", "--model", "vit_b4"] + plot)
    assert (args.optimizer, args.lr, args.lr_schedule, args.warmup_epochs) == ("adamw", 1.25e-4, "cosine", 5)
    assert args.recipe == {"name": "vit_adamw", "overrides": {}}
    args = _checked(["--dataset", "synthetic", "--model", "vit_b4", "--lr", "0.01", "--optimizer", "sgd",
                     "--epochs", "100"] + plot)
    assert (args.optimizer, args.lr, args.weight_decay, args.epochs) == ("sgd", 0.01, 0.05, 100)
    assert args.recipe["overrides"] == {"optimizer": "sgd", "lr": 0.01, "epochs": 100}
    cfg = mixup_run.train_config(args)
    assert cfg["recipe"]["name"] == "vit_adamw" and cfg["lr"] == 0.01 and cfg["lr_schedule"] == "cosine"
    # the step recipe's milestones are its fractions of the epochs trained, and a given value equal to the recipe's
    # is no override
    args = _checked(["--dataset", "synthetic", "--model", "wrn", "--epochs", "100", "--lr", "0.1"] + plot)
    assert args.lr_milestones == [30, 50, 90] and args.recipe["overrides"] == {"epochs": 100}
    args = _checked(["--quick"] + plot)   # the single run's --quick: the CPU recipe of its MLP
    assert (args.recipe["name"], args.lr, args.weight_decay, args.batch_size, args.epochs) == (
        "mlp_cpu", 0.05, 1e-2, 64, 200)


def test_a_run_trains_with_its_recipe_and_records_it(tmp_path):
    argv = ["--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "10", "--model", "vit",
            "--width", "16", "--depth", "1", "--epochs", "4", "--warmup_epochs", "2", "--batch_size", "15",
            "--snapshot_size", "6", "--snapshots", "4", "--device", "cpu", "--models_dir", str(tmp_path / "m"),
            "--plot_dir", str(tmp_path / "p"), "--data_dir", str(tmp_path / "d")]
    mixup_main.main(argv)
    run = os.path.join(tmp_path / "m", os.listdir(tmp_path / "m")[0])
    config = result_files.read_json(os.path.join(run, "config.json"))
    assert config["recipe"] == {"name": "vit_adamw", "overrides": {"batch_size": 15, "epochs": 4, "warmup_epochs": 2}}
    lrs = [r["lr"] for r in result_files.read_csv(os.path.join(run, "summary.csv"))]
    assert lrs == pytest.approx([1.25e-4 / 2, 1.25e-4, 1.25e-4, 1.25e-4 / 2])   # warm-up, then cosine


@pytest.mark.parametrize("argv, flag", [(["--recipe", "fast"], "--recipe"),
                                        (["--lr_schedule", "linear"], "--lr_schedule"),
                                        (["--warmup_epochs", "-1"], "--warmup_epochs")])
def test_bad_recipe_flags_fail_with_one_line(argv, flag, tmp_path):
    with pytest.raises(utils.UserError, match=flag):
        _checked(["--quick", "--plot_dir", str(tmp_path)] + argv)


def test_study_dry_run_lists_each_cells_recipe(tmp_path, capsys):
    """The paper grid on a machine without CIFAR-10: every cell listed with its recipe, no estimate."""
    mixup_main.main(["--study", "--models", "wrn", "vit_b4", "--datasets", "cifar10", "--dry_run", "--device", "cpu",
                     "--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"),
                     "--data_dir", str(tmp_path / "d")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cell ")]
    assert len(lines) == 3 * 2 * 2 * 2 + 2 * 3       # 3 seeds x 2 networks x 2 losses x mixup or not; 2 panel losses
    wrn, vit = [line for line in lines if "model=wrn" in line], [line for line in lines if "model=vit_b4" in line]
    assert wrn and all("recipe sgd_step: sgd lr 0.1 x0.1 after epochs 150,250,450" in line for line in wrn)
    vit_recipe = "recipe vit_adamw: adamw lr 0.000125 cosine, warm-up 5, weight decay 0.05"
    assert vit and all(vit_recipe in line for line in vit)
    assert all("no estimate" in line for line in lines)


def test_momentum_reaches_the_sgd_cells_only_and_says_so(tmp_path, capsys):
    """--momentum in a study of an SGD and an AdamW network: one note line, the WRN cells record the override,
    the ViT cells keep their recipe unchanged (and so their run keys)."""
    mixup_main.main(["--study", "--models", "wrn", "vit_b4", "--datasets", "cifar10", "--dry_run", "--device", "cpu",
                     "--momentum", "0.95", "--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"),
                     "--data_dir", str(tmp_path / "d")])
    out = capsys.readouterr()
    assert "note: --momentum applies to the sgd cells only, not to the recipe of vit_b4 (adamw)" in out.err
    lines = [line for line in out.out.splitlines() if line.startswith("cell ")]
    assert all("recipe sgd_step (momentum=0.95)" in line for line in lines if "model=wrn" in line)
    assert all("recipe vit_adamw: " in line for line in lines if "model=vit_b4" in line)


def _rows(losses, train_acc, test_acc, nc1):
    return [dict(epoch=e, loss=loss, train_acc=a, test_acc=t, nc1=n)
            for e, loss, a, t, n in zip((1, 10, 20, 30, 40), losses, train_acc, test_acc, nc1)]


def test_fit_checks_chance_stalled_and_terminal_phase():
    good = _rows([2.0, 1.0, 0.8, 0.7, 0.6], [0.5, 0.9, 1, 1, 1], [0.5, 0.9, 0.95, 0.96, 0.97], [1, 0.5, 0.2, 0.1, 0.05])
    assert fit_checks.failure(good, 10) is None and fit_checks.terminal_phase(good)
    # the CPU preview's small CNN with MSE at lr 0.05 before its recipe: loss 0.4014 -> 0.3999 over epochs 20-40
    stalled = _rows([158.9, 0.43, 0.4014, 0.3995, 0.3999], [0.1, 0.1, 0.33, 0.31, 0.31], [0.1] * 4 + [0.29],
                    [0.15, 1e9, 4e4, 5.1, 3.1])
    assert fit_checks.failure(stalled, 10).startswith("stalled") and not fit_checks.terminal_phase(stalled)
    chance = _rows([2.3] * 5, [0.1] * 5, [0.1] * 5, [1] * 5)
    assert fit_checks.failure(chance, 10).startswith("chance")
    assert fit_checks.failure(_rows([2.3] * 5, [0.1] * 5, [0.1] * 4 + [0.2], [1] * 5), 10).startswith("stalled")
    # a plateau once every training example is fitted is the terminal phase, not a stall; nc1 rising is not terminal
    flat_fit = _rows([2.0, 0.6, 0.6, 0.6, 0.6], [0.5, 1, 1, 1, 1], [0.9] * 5, [1, 0.3, 0.2, 0.25, 0.3])
    assert fit_checks.failure(flat_fit, 10) is None and not fit_checks.terminal_phase(flat_fit)
    assert fit_checks.failure([], 10) == "no rows"


def test_study_table_leaves_failed_and_diverged_cells_out_and_marks_them(tmp_path, monkeypatch):
    keys = dict(dataset="digits", model="cnn", loss="mse", mixup=True)
    metrics = {m: 0.0 for m in mixup_study.STUDY_METRICS}
    cells = [dict(keys, seed=0, recipe="cnn_cpu", failed=None, terminal=True, **dict(metrics, test_acc=0.9)),
             dict(keys, seed=1, recipe="cnn_cpu", failed=None, terminal=True, **dict(metrics, test_acc=0.8)),
             dict(keys, seed=2, recipe="cnn_cpu", failed="stalled (...)", terminal=False,
                  **dict(metrics, test_acc=0.3)),
             dict(keys, seed=3, recipe="cnn_cpu", diverged="training diverged", failed=None, terminal=False,
                  **{m: None for m in mixup_study.STUDY_METRICS}), None]
    (row,) = mixup_study.study_table(cells)
    assert row["test_acc_mean"] == pytest.approx(0.85) and row["n_seeds"] == 4 and row["recipe"] == "cnn_cpu"
    assert (row["n_failed"], row["n_diverged"], row["n_averaged"], row["n_terminal"]) == (1, 1, 2, 2)
    all_failed = mixup_study.study_table([dict(cells[2], seed=s) for s in (0, 1)])[0]
    assert all_failed["n_averaged"] == 0 and all_failed["test_acc_mean"] != all_failed["test_acc_mean"]   # NaN
    texts = []
    monkeypatch.setattr(mixup_plots, "save_figure", lambda fig, path: texts.extend(
        t.get_text() for ax in fig.axes for t in ax.texts))
    mixup_plots.save_study_calibration([row, dict(all_failed, mixup=False)], str(tmp_path / "c.png"))
    assert sorted(texts) == ["1 diverged\n1 failed", "2 failed"]
