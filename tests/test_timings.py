"""The one source of stated times: docs/measure_times.py writes docs/timings.json, the scripts' --help
reads it through utils.measured_time, and no docstring or help states a time of its own."""
import glob
import importlib.util
import json
import os
import re

import pytest

import result_files
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_times():
    spec = importlib.util.spec_from_file_location("measure_times", os.path.join(ROOT, "docs", "measure_times.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measured_time_reads_the_json_and_says_when_there_is_none(tmp_path):
    path = tmp_path / "timings.json"
    assert "not measured yet" in utils.measured_time("minority_l --quick", str(path))
    path.write_text("{broken")
    assert "not measured yet" in utils.measured_time("minority_l --quick", str(path))
    path.write_text(json.dumps({"machine": {"summary": "2 CPU cores (x)"}, "commands": {
        "minority_l --quick": {"wall_s": 12.4, "load_before": 0.2, "measured": "2026-12-07"},
        "study --quick": {"wall_s": 161.0, "cpu_s": 40.2, "load_before": 7.5, "measured": "2026-12-07"}}}))
    assert utils.measured_time("minority_l --quick", str(path)) == \
        "took 12 s on 2 CPU cores (x) (2026-12-07, docs/timings.json)"
    assert utils.measured_time("study --quick", str(path)).startswith(
        "took 2.7 min (40 s CPU) on 2 CPU cores (x), busy: load")


def test_every_time_the_help_reads_is_one_the_script_measures():
    keys = set()
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        with open(path) as f:
            keys |= set(re.findall(r'measured_time\("([^"]+)"\)', f.read()))
    assert {"minority_l --quick", "block --quick", "study --quick"} <= keys
    assert keys <= set(measure_times().COMMANDS)


def test_the_readme_states_the_times_of_docs_timings_json():
    mt = measure_times()
    timings = result_files.read_json(os.path.join(ROOT, "docs", "timings.json"))
    spans = mt.README_TIME.findall(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    assert spans and all(text == mt.short_time(timings["commands"][name]) for name, text in spans), spans


def test_no_docstring_or_help_states_a_time_of_its_own():
    for path in glob.glob(os.path.join(ROOT, "*_main.py")):
        with open(path) as f:
            text = f.read()
        assert not re.search(r"about (a|two|\d+ s)\b.*(minute|s on|CPU)|under a minute|\d+ s on \d CPU", text), path


def test_measure_times_runs_a_command_and_keeps_the_others(tmp_path, capsys):
    out = tmp_path / "timings.json"
    mt = measure_times()
    here = mt.machine()
    out.write_text(json.dumps({"machine": here, "commands": {"block --quick": {"wall_s": 9.0, "measured": "x"}}}))
    readme = tmp_path / "README.md"        # never the repository's: its spans come from docs/timings.json
    readme.write_text("a <!--t:opt_main-->old<!--/t--> and <!--t:limit --quick-->old<!--/t-->\n")
    assert mt.main(["--only", "opt_main", "--out", str(out), "--readme", str(readme)]) == 0
    data = result_files.read_json(out)
    entry = data["commands"]["opt_main"]
    assert entry["exit_status"] == 0 and 0 < entry["cpu_s"] and 0 < entry["wall_s"] < 120
    assert data["commands"]["block --quick"]["wall_s"] == 9.0        # kept: same machine
    assert utils.measured_time("opt_main", str(out)).startswith("took ")
    text = readme.read_text()
    assert text.startswith("a <!--t:opt_main-->≈ ") and "limit --quick-->not measured<" in text
    with pytest.raises(utils.UserError, match="--only: unknown command"):
        mt.main(["--only", "nonsense", "--out", str(out), "--readme", str(readme)])


def test_the_documented_command_starts_from_any_folder(tmp_path):
    """`python docs/measure_times.py` runs as a script (its folder first on sys.path, not the repository's)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "measure_times.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--readme" in out.stdout, out.stderr
