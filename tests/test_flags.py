"""One vocabulary of flags: each concept the scripts share has the same canonical flag in all of
them, the original names stay aliases with their original meaning, and every command of the
original README still parses and lists its points."""
import json

import pytest

import block_main
import limit_main
import minority_l_main
import minority_n_main
import mixup_main
import mixup_run
import opt_main
import rebalance_main
import utils

FIGURES = (block_main, minority_l_main, minority_n_main, limit_main, rebalance_main)
TRAINING = FIGURES + (mixup_main,)
SWEEPS = (minority_l_main, minority_n_main, limit_main)
BASE = {opt_main: ["--cluster_s", "3", "3", "--sample_s", "50", "40", "--lam", "0.01"]}

# concept: (canonical flag, its values on the command line, the parsed value, the scripts that have the concept)
CONCEPTS = {
    "dataset": ("--dataset", ["digits"], "digits", TRAINING),
    "network": ("--network", ["mlp"], "mlp", TRAINING),
    "epochs": ("--epochs", ["7"], 7, TRAINING),
    "lambda": ("--lam", ["0.004"], 0.004, (block_main, minority_l_main, minority_n_main, opt_main)),
    "lambda times N": ("--lam_n", ["0.3"], 0.3, (limit_main,)),
    "bias penalty": ("--reg_b", ["0.02"], 0.02, FIGURES + (opt_main,)),
    "warm fraction": ("--warm_frac", ["0.25"], 0.25, (minority_l_main, minority_n_main)),
    "seed": ("--seed", ["3"], 3, TRAINING),
    "seeds": ("--seeds", ["3", "4"], [3, 4], TRAINING),
    "device": ("--device", ["cpu"], "cpu", TRAINING),
    "threads": ("--threads", ["2"], 2, TRAINING),
    "width": ("--width", ["9"], 9, TRAINING),
    "learning rate": ("--lr", ["0.3"], 0.3, TRAINING),
    "weight decay": ("--weight_decay", ["0.2"], 0.2, TRAINING),
    "run index": ("--point", ["2"], 2, TRAINING),
    "assemble": ("--assemble", [], True, TRAINING),
    "launch": ("--launch", ["local"], "local", TRAINING),
    "preview": ("--quick", [], True, TRAINING),
    "bf16": ("--amp", [], True, TRAINING),
    "data folder": ("--data_dir", ["d1"], "d1", TRAINING),
    "run folders": ("--models_dir", ["m1"], "m1", TRAINING),
    "figure folder": ("--plot_dir", ["p1"], "p1", TRAINING + (opt_main,)),
    "plan only": ("--dry_run", [], True, TRAINING + (opt_main,)),
    "batched": ("--batched", [], True, FIGURES),
    "not batched": ("--no_batched", [], False, FIGURES),
}
# the original names (Hong & Ling's scripts, the mixup code's main.py) and older spellings of this code
ALIASES = [
    (FIGURES, "--dataset_t", "--dataset", ["digits"]),
    (TRAINING, "--model", "--network", ["mlp"]),
    (TRAINING, "--epoch", "--epochs", ["7"]),
    ((minority_l_main,), "--reg_z_l", "--lam", ["0.004", "0.005"]),
    ((minority_n_main,), "--reg_l", "--lam", ["0.004"]),
    ((opt_main,), "--reg_z", "--lam", ["0.004"]),
    ((limit_main,), "--ln_pro", "--lam_n", ["0.3"]),
    (FIGURES, "--no-batched", "--no_batched", []),
    ((mixup_main,), "--lam_per", "--mix_per", ["sample"]),
    ((mixup_main,), "--models", "--networks", ["mlp", "cnn"]),
]


def parsed(script, argv):
    return vars(script.parse_args(BASE.get(script, []) + argv))


def changed(script, argv):
    """The parsed values `argv` changes, against the script's defaults (`given`, the set of typed
    options, left out)."""
    before, after = parsed(script, []), parsed(script, argv)
    return {k: v for k, v in after.items() if before.get(k) != v and k != "given"}


@pytest.mark.parametrize("concept", sorted(CONCEPTS))
def test_each_shared_concept_has_the_same_flag_in_every_script(concept):
    flag, values, expected, scripts = CONCEPTS[concept]
    for script in scripts:
        diff = changed(script, [flag] + values)
        if flag == "--quick":  # the preview also sets its presets
            diff = {"quick": diff.get("quick")}
        assert list(diff.values()) in ([expected], [[expected]]), (script.__name__, flag, diff)


@pytest.mark.parametrize("scripts,alias,canonical,values", ALIASES, ids=[a[1] for a in ALIASES])
def test_original_names_are_aliases_with_the_same_meaning(scripts, alias, canonical, values):
    for script in scripts:
        assert parsed(script, [alias] + values) == parsed(script, [canonical] + values), script.__name__


def test_run_index_is_named_a_run_index_in_help(capsys):
    for script in TRAINING:
        with pytest.raises(SystemExit):
            script.parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "run index" in text, script.__name__


def list_points(script, argv, tmp_path, capsys):
    dirs = ["--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p"), "--data_dir", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as done:
        script.main(argv + ["--list_points"] + dirs)
    assert done.value.code in (None, 0)
    return json.loads(capsys.readouterr().out)


def test_limit_ln_pro_is_lambda_times_n_as_in_the_original(tmp_path, capsys):
    """`limit_main.py --quick --ln_pro 0.1` trains every point at lambda = 0.1 / N (the original's
    meaning), with lam_H = lambda/20 and lam_W = 5 lambda."""
    runs = list_points(limit_main, ["--quick", "--ln_pro", "0.1"], tmp_path, capsys)
    assert len(runs) == 11
    for run in runs:
        p = run["params"]
        assert p["lam"] == pytest.approx(0.1 / p["N"], rel=1e-12)
        assert p["N"] == 5 * p["n_A"] + 5 * p["n_B"]
    assert [r["params"]["lam"] for r in list_points(limit_main, ["--quick", "--lam_n", "0.2"], tmp_path, capsys)] \
        == pytest.approx([2 * r["params"]["lam"] for r in runs], rel=1e-12)


@pytest.mark.parametrize("script,argv,names", [
    (minority_l_main, ["--ln_pro", "0.2"], ["--ln_pro", "--warm_frac"]),
    (minority_n_main, ["--ln_pro", "0.2"], ["--ln_pro", "--warm_frac"]),
    (limit_main, ["--reg_l", "0.1"], ["--reg_l", "--lam_n"]),
    (limit_main, ["--lam", "0.1"], ["--lam", "--lam_n"]),  # not taken as an abbreviation of --lam_n
    (mixup_main, ["--lam", "0.1"], ["--lam", "--alpha"]),  # nor of --lam_per
])
def test_a_name_that_means_something_else_elsewhere_is_refused_with_what_to_give(script, argv, names):
    with pytest.raises(utils.UserError) as e:
        script.parse_args(argv)
    assert all(n in str(e.value) for n in names)


ORIGINAL_LAMS = {5: [0.0027, 0.0030, 0.0033, 0.0039, 0.0045, 0.0051, 0.0057, 0.0063, 0.0069, 0.0075],
                 3: [0.0037, 0.0041, 0.0045, 0.0053, 0.0062, 0.0070, 0.0078, 0.0086, 0.0094, 0.0102]}
ORIGINAL_NAS = {5: [100, 200, 300, 400, 600, 800, 1000, 1100, 1200, 1400],
                3: [100, 400, 450, 500, 700, 1000, 1600, 2200, 2500, 2800]}
LIMIT_NAS = [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500]


@pytest.mark.parametrize("ka", [5, 3])
def test_original_minority_commands_list_their_points(ka, tmp_path, capsys):
    """The seed README's commands for Figures 5-8, verbatim."""
    lams = ORIGINAL_LAMS[ka]
    runs = list_points(minority_l_main, ["--ka", str(ka), "--reg_z_l"] + [str(v) for v in lams], tmp_path, capsys)
    assert [r["params"]["lam"] for r in runs] == lams
    assert all(r["params"]["n_A"] == 500 and r["params"]["n_B"] == 100 for r in runs)
    runs = list_points(minority_n_main, ["--ka", str(ka), "--nalist"] + [str(n) for n in ORIGINAL_NAS[ka]],
                       tmp_path, capsys)
    assert [r["params"]["n_A"] for r in runs] == ORIGINAL_NAS[ka]
    assert all(r["params"]["lam"] == 0.005 and r["params"]["k_A"] == ka for r in runs)


def test_original_block_and_limit_commands_list_their_points(tmp_path, capsys):
    """Figures 1-2 verbatim; Figure 9 as the seed README gives it (`limit_main.py --nalist 500 ... 5500`,
    its `python` missing), which asks CIFAR-10 for 5500 images per class: the original topped them up
    from the test split silently, here that takes --allow_test_fill and is otherwise one error line."""
    runs = list_points(block_main, ["--dataset_t", "cifar10", "--structure", "1", "--network", "ResNet18"],
                       tmp_path, capsys)
    assert len(runs) == 1 and runs[0]["params"]["lam"] == pytest.approx(2 * (1e-6 * 1e-3) ** 0.5)
    argv = ["--nalist"] + [str(n) for n in LIMIT_NAS]
    with pytest.raises(utils.UserError, match="--allow_test_fill"):
        list_points(limit_main, argv, tmp_path, capsys)
    runs = list_points(limit_main, argv + ["--allow_test_fill"], tmp_path, capsys)
    assert [r["params"]["n_A"] for r in runs] == LIMIT_NAS
    assert all(r["params"]["lam"] == pytest.approx(0.1 / r["params"]["N"]) for r in runs)


def test_original_opt_and_mixup_commands_parse(tmp_path, capsys):
    """The seed README's opt example (written there as `limit_main.py --cluster_s 3 3 4 --5000 4000 3000
    ...`, a typo for opt_main.py with --sample_s) and the mixup code's `main.py --dataset cifar10 --model
    resnet18 --loss cross_entropy --epochs 500`, here mixup_main.py."""
    argv = ["--cluster_s", "3", "3", "4", "--sample_s", "5000", "4000", "3000", "--reg_z", "0.005", "--reg_b", "0.01"]
    assert not opt_main.main(argv + ["--dry_run", "--out_dir", str(tmp_path / "o"), "--plot_dir", str(tmp_path)])
    assert "lambda = 0.005" in capsys.readouterr().out
    args = mixup_main.parse_args(["--dataset", "cifar10", "--model", "resnet18", "--loss", "cross_entropy",
                                  "--epochs", "500"])
    mixup_run.check_args(args)
    assert (args.dataset, args.model, args.loss, args.epochs, args.mix_per) == ("cifar10", "resnet18",
                                                                               "cross_entropy", 500, "batch")
