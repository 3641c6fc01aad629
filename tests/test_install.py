"""Installing: requirements ranges that keep a working torch, torchvision optional, device choice.

Runs in every environment .ci/run tests (the newest pair and the floor pair), so the checks of
the installed torch/torchvision hold for both."""
import ast
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import devices
import utils
from conftest import ROOT

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # packaging is not one of our requirements; pip always carries it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

FLOOR = {"torch": "2.4.1", "torchvision": "0.19.1"}  # the oldest pair .ci/run tests
BELOW = {"torch": "2.3.1", "torchvision": "0.18.1"}  # the pair before it: untested, so not admitted


def requirements():
    reqs = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                r = Requirement(line)
                reqs[r.name.lower()] = r
    return reqs


def base_version(v):
    return Version(v.split("+")[0])


def test_requirements_are_ranges_with_the_tested_floor():
    reqs = requirements()
    for name in ("torch", "torchvision"):
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned: {spec}"
        assert spec.contains(FLOOR[name]), f"{name} {spec} excludes the tested floor {FLOOR[name]}"
        assert not spec.contains(BELOW[name]), f"{name} {spec} admits {BELOW[name]}, below the tested floor"
    assert base_version(FLOOR["torch"]) >= Version("2.4")


def test_installed_pair_is_inside_the_ranges_and_matched():
    """The environment under test (newest or floor) holds a pair the requirements admit, and
    torchvision 0.(N+15) goes with torch 2.N."""
    reqs = requirements()
    assert reqs["torch"].specifier.contains(base_version(torch.__version__))
    tv = pytest.importorskip("torchvision")
    assert reqs["torchvision"].specifier.contains(base_version(tv.__version__))
    t, v = base_version(torch.__version__).release, base_version(tv.__version__).release
    assert t[0] == 2 and v[:2] == (0, t[1] + 15), (torch.__version__, tv.__version__)


@pytest.mark.slow
def test_pip_install_requirements_keeps_the_installed_torch():
    """`pip install -r requirements.txt` here would install no torch, torchvision or CUDA wheels: an
    installed pair in the allowed range is kept (in the floor environment: torch 2.4.1)."""
    report = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"nc_pip_report_{os.getpid()}.json")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report,
                        "-r", os.path.join(ROOT, "requirements.txt")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(report) as f:
        would = [(i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in json.load(f)["install"]]
    os.remove(report)
    replaced = [(n, v) for n, v in would if n in ("torch", "torchvision", "triton") or n.startswith("nvidia")]
    assert not replaced, f"pip would replace torch {torch.__version__}: {replaced}"


def test_no_module_imports_torchvision_at_top_level():
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        tree = ast.parse(open(path).read())
        for node in tree.body:  # module level only; imports inside functions are lazy
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torchvision" for n in names), f"{path}:{node.lineno}"


# Runs a script with torchvision blocked: "missing" (not installed) or "broken" (fails at import, as a
# CUDA torchvision beside a CPU torch does: "operator torchvision::nms does not exist").
BLOCKER = textwrap.dedent("""
    import os, runpy, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                if MODE == "missing":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                raise RuntimeError("operator torchvision::nms does not exist")

    MODE = sys.argv[1]
    sys.meta_path.insert(0, Blocker())
    sys.modules.pop("torchvision", None)
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[2])))
    code = 0
    for cmd in " ".join(sys.argv[2:]).split(" ; "):
        sys.argv = cmd.split()
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code or 0
        if code:
            break
    assert "torchvision" not in sys.modules
    sys.exit(code)
""")


def run_without_torchvision(tmp_path, mode, *commands):
    """Run the commands (script, args...) in one process with torchvision blocked; (returncode, stderr)."""
    blocker = tmp_path / "blocker.py"
    blocker.write_text(BLOCKER)
    argv = []
    for i, cmd in enumerate(commands):
        argv += ([";"] if i else []) + [os.path.join(ROOT, cmd[0]), *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(blocker), mode, *argv], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=600)
    return r.returncode, r.stderr


@pytest.mark.slow
def test_without_torchvision_everything_else_works(tmp_path):
    """synthetic, digits, the UFM, opt_main and mixup on digits need no torchvision."""
    rc, err = run_without_torchvision(
        tmp_path, "missing",
        ("minority_l_main.py", "--quick", "--epoch", "2"),
        ("block_main.py", "--quick", "--network", "UFM", "--epoch", "2"),
        ("mixup_main.py", "--dataset", "digits", "--train_per_class", "24", "--model", "cnn", "--width", "4",
         "--epochs", "2", "--snapshots", "1", "2", "--snapshot_size", "60", "--batch_size", "16", "--device", "cpu"),
        ("opt_main.py", "--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "0.0039", "--solver", "fast"))
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    for stem in ("minority_l_synthetic_mlp_linear_ka5_quick", "block_ufm_s1_quick"):
        assert (tmp_path / "plots" / f"{stem}.json").exists()


@pytest.mark.parametrize("mode,says", [("missing", "which is not installed"),
                                       ("broken", "which does not import with torch")])
@pytest.mark.slow
def test_without_torchvision_its_datasets_stop_with_one_line(tmp_path, mode, says):
    rc, err = run_without_torchvision(tmp_path, mode, ("minority_l_main.py", "--quick", "--dataset_t", "cifar10"))
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert errors == [err.strip().splitlines()[-1]], err  # one error line, the last one
    line = errors[0]
    assert line.startswith("error: dataset cifar10 needs torchvision, ") and says in line, line
    assert "pip install 'torchvision==0." in line and "--dataset synthetic or digits" in line, line


# Device: auto warns about a GPU this torch cannot use; cuda without CUDA is one line
# (which device was picked is the scripts' own device line)


def fake_cuda(monkeypatch, gpu_present, cuda_build):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_nvidia_gpu_present", lambda: gpu_present)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)


def test_auto_without_a_gpu_is_quiet(monkeypatch, capsys):
    fake_cuda(monkeypatch, False, "12.1")
    assert devices.get_device("auto").type == "cpu"
    assert capsys.readouterr().err == ""
    with pytest.raises(utils.UserError,
                       match=r"^--device cuda: CUDA is not available on this machine; use auto or cpu$"):
        devices.get_device("cuda")


@pytest.mark.parametrize("cuda_build,says", [("12.1", "built for CUDA 12.1) cannot use it"),
                                             (None, "is a CPU-only build")])
def test_auto_warns_about_a_gpu_this_torch_cannot_use(monkeypatch, capsys, cuda_build, says):
    fake_cuda(monkeypatch, True, cuda_build)
    assert devices.get_device("auto").type == "cpu"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: --device auto: an NVIDIA GPU is present but this torch")
    assert says in lines[0] and lines[0].endswith("; running on the CPU"), lines
    with pytest.raises(utils.UserError) as e:
        devices.get_device("cuda")
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_cuda_quietly(capsys):
    assert devices.get_device("auto").type == "cuda"
    assert capsys.readouterr().err == ""
