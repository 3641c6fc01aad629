"""No figure replaces a different one: the file stem depends on the runs a figure holds, a job of a sweep
(--point I) writes no figure, assembling fewer runs never replaces a fuller figure of the same runs, and
--assemble with runs missing fails naming them unless --partial. --quick scales only what it chose."""
import glob
import json
import os

import pytest

import minority_l_main
import result_files
import utils

QUICK = ["--quick", "--epoch", "2"]
THREE = ["--reg_z_l", "0.004", "0.007", "0.01"]


def dirs(tmp_path):
    return ["--models_dir", str(tmp_path / "models"), "--plot_dir", str(tmp_path / "plots"),
            "--data_dir", str(tmp_path / "data"), "--device", "cpu"]


def run(argv, capsys, code=0):
    """utils.cli(minority_l_main.main, argv): (exit code, printed JSON path or None, stderr)."""
    try:
        got = utils.cli(minority_l_main.main, argv) or 0
    except SystemExit as e:
        got = e.code
    out, err = capsys.readouterr()
    assert got == code, err
    return next((ln for ln in out.splitlines() if ln.endswith(".json")), None), err


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_figure_is_never_replaced_by_a_different_or_smaller_one(tmp_path, capsys):
    d = dirs(tmp_path)
    ten, _ = run(QUICK + d, capsys)
    first = read(ten)
    figure = json.loads(first)
    assert len(figure["points"]) == 10 and os.path.basename(ten) == "minority_l_synthetic_mlp_linear_ka5_quick.json"
    # what --quick scaled is named on the figure, in its settings and at every point
    assert figure["settings"]["scaled"] == "scaled by --quick: lam x 2.236"
    assert "lam x 2.236" in figure["settings"]["title"]
    assert all(p["scaled"]["lam"]["factor"] == pytest.approx(5 ** 0.5) for p in figure["points"])
    assert figure["runs"] == {"finished": 10, "total": 10}

    three, err = run(QUICK + THREE + d, capsys)  # other points: written beside it, the ten kept
    assert three != ten and read(ten) == first and "holds a different figure" in err
    assert [p["params"]["lam"] for p in json.loads(read(three))["points"]] == [0.004, 0.007, 0.01]
    same, _ = run(QUICK + ["--threads", "1", "--no-batched"] + d, capsys)  # reused with other options
    assert same == ten and read(ten) == first
    two, _ = run(QUICK + ["--seeds", "0", "1", "--reg_z_l", "0.004"] + d, capsys)  # other seeds
    assert two not in (ten, three) and read(ten) == first

    # Fewer finished runs of the same figure never replace it: drop a point's record, assemble partially.
    held = read(three)
    record = json.loads(held)["points"][0]
    os.remove(next(p for p in glob.glob(str(tmp_path / "models" / "points" / "*.json"))
                   if result_files.read_json(p)["run_dir"] == record["run_dir"]))
    run(QUICK + THREE + ["--assemble"] + d, capsys, code=2)
    again, err = run(QUICK + THREE + ["--assemble", "--partial"] + d, capsys)
    assert again == three and read(three) == held and "more runs finished (3 against 2 here)" in err
    assert read(ten) == first


def test_assemble_on_empty_models_folder_fails_naming_the_runs(tmp_path, capsys):
    _, err = run(QUICK + THREE + ["--assemble"] + dirs(tmp_path), capsys, code=2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --assemble: 3 of 3 runs are not finished: 0 (lam=0.004")
    assert not glob.glob(str(tmp_path / "plots" / "*.json"))


@pytest.mark.parametrize("argv, lam", [(["--na", "500", "--nb", "100", "--reg_z_l", "0.003"], 0.003),
                                       (["--reg_z_l", "0.003"], 0.003)])
def test_quick_trains_a_typed_lambda_as_given(argv, lam, capsys):
    with pytest.raises(SystemExit):
        minority_l_main.main(["--quick", "--list_points"] + argv)
    rows = json.loads(capsys.readouterr().out)
    assert [r["params"]["lam"] for r in rows] == [lam] and "scaled" not in rows[0]


def test_quick_names_what_it_scaled(tmp_path, capsys):
    with pytest.raises(SystemExit):
        minority_l_main.main(["--quick", "--list_points"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["scaled"]["lam"]["from"] == 0.0027
    assert rows[0]["params"]["lam"] == pytest.approx(0.0027 * 5 ** 0.5)
    # at the paper's sizes --quick leaves the paper's list as it is
    with pytest.raises(SystemExit):
        minority_l_main.main(["--quick", "--na", "500", "--nb", "100", "--list_points"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"]["lam"] == pytest.approx(0.0027) and "scaled" not in rows[0]


def test_partial_without_assemble_is_one_line(tmp_path, capsys):
    _, err = run(QUICK + ["--partial"] + dirs(tmp_path), capsys, code=2)
    assert err.strip() == ("error: --partial: writes a figure with runs missing; give it with --assemble or "
                           "--launch ... --wait")
