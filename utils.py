"""The bottom layer: errors and the scripts' entry (cli), seeds, devices, the benchmarks' clock, validators and
argument helpers, run records, atomic result files. Imports no other project module
and no matplotlib (datasets.py, beside it, holds the data). `python utils.py <command>` runs the
commands of replot.py."""
import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

# torch is imported inside the functions that need it: opt_main.py and `python utils.py --help`
# never pay for it (about 1.3 s).


REPO_DIR = os.path.dirname(os.path.abspath(__file__))


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a scheduler or `kill` sends), raised where the process is, so that every cleanup that
    Ctrl-C runs (locks released, partial writes removed; the last checkpoint stays) runs for it too."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the cleanup short
    raise Terminated()


def cli(main, argv=None):
    """Run main(argv): a UserError is `error: ...` on stderr and exit 2; Ctrl-C one line and exit 130,
    SIGTERM the same line and exit 143 (128 + 15, as a shell reports it)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals are the main thread's
        previous = None
    try:
        return main(argv)
    except (UserError, MemoryError, RuntimeError) as e:  # RuntimeError: only torch's out of memory (CPU or CUDA)
        if isinstance(e, RuntimeError) and not ("can't allocate memory" in str(e) or "out of memory" in str(e)):
            raise
        message = e if isinstance(e, UserError) else "out of memory; lower the sizes or the width"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated)
        print(f"{'terminated (SIGTERM)' if term else 'interrupted'}; the run resumes from its last checkpoint when "
              "the same command is run again", file=sys.stderr)
        sys.exit(143 if term else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def set_seed(seed):
    """Seed python, numpy and torch (all devices)."""
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def timed(fn, repeat=1):
    """Best wall time of `repeat` calls of fn, and the last result (the benchmarks' clock)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _nvidia_gpu_present():
    """Whether this machine shows an NVIDIA GPU (a loaded driver, or nvidia-smi listing one), whatever torch says."""
    import shutil
    import subprocess
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"):
        return True
    if not shutil.which("nvidia-smi"):
        return False
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in r.stdout


def _cuda_status():
    """(usable, why_not): whether this torch can use CUDA, and, when a GPU is present but unusable,
    one line saying why and what to do (None when there is no GPU to miss)."""
    import warnings

    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable or not _nvidia_gpu_present():
        return usable, None
    if torch.version.cuda is None:
        return False, (f"an NVIDIA GPU is present but this torch {torch.__version__} is a CPU-only build; "
                       f"install a CUDA build of torch (README, Installing)")
    said = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), "")
    said = f" (torch says: {said[:200]})" if said else ""
    return False, (f"an NVIDIA GPU is present but this torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
                   f"cannot use it{said}; usually the NVIDIA driver is older than that CUDA build needs: install the "
                   f"torch built for the CUDA version nvidia-smi shows, or update the driver (README, Installing)")


def get_device(spec="auto"):
    """'auto' (CUDA when this torch can use it, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.

    'auto' warns on stderr (one line) when a GPU is present that this torch cannot use (a CPU-only
    build, or a CUDA build newer than the driver); the scripts' device line says what was picked."""
    import torch
    spec = str(spec).lower()
    if spec == "auto":
        usable, why_not = _cuda_status()
        if why_not:
            print(f"warning: --device auto: {why_not}; running on the CPU", file=sys.stderr)
        return torch.device("cuda" if usable else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: MPS is not available on this machine; use auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        usable, why_not = _cuda_status()
        if not usable:
            raise UserError(f"--device {spec}: {why_not or 'CUDA is not available on this machine'}; use auto or cpu")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device(spec)
    raise UserError(f"--device {spec}: allowed are auto, cpu, cuda, cuda:N, mps")


def describe_device(device, amp=False):
    """One line naming the device a script trains on, e.g. `device: cpu (2 threads)` or
    `device: cuda:0 (NVIDIA H100, bf16 autocast)`; printed once at start so a job's log says where it ran."""
    import torch
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        detail = torch.cuda.get_device_name(index) + (", bf16 autocast" if amp else "")
        return f"device: cuda:{index} ({detail})"
    n = torch.get_num_threads()
    detail = f"{n} thread{'s' if n != 1 else ''}" if device.type == "cpu" else "Apple GPU"
    return f"device: {device.type} ({detail}{'; --amp ignored: bf16 autocast is CUDA only' if amp else ''})"


def git_state(repo_dir=REPO_DIR):
    """(commit, dirty) of the code's git checkout: dirty when tracked files differ from the commit;
    (None, None) outside a git checkout or without git."""
    def git(*cmd):
        return subprocess.run(["git", "-C", repo_dir, *cmd], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_record(device):
    """How a run was made, for its config.json (never part of the configuration that keys it): the
    code's git commit and whether the tree was dirty, the versions, the device and thread count,
    the host and the start time (UTC, ISO 8601)."""
    import torch
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "device": str(device),
            "threads": torch.get_num_threads(), "host": socket.gethostname(),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


TIMINGS_PATH = os.path.join(REPO_DIR, "docs", "timings.json")  # written by docs/measure_times.py


def measured_time(command, path=TIMINGS_PATH):
    """How long `command` (a key of docs/timings.json, e.g. "minority_l --quick") took where it was
    last measured, as help text: the one source of every time the help states (docs/measure_times.py
    measures and writes it). Says so where it was not measured, or the file is missing or broken."""
    try:
        with open(path) as f:
            timings = json.load(f)
        entry = timings["commands"][command]
        wall, machine = float(entry["wall_s"]), timings["machine"]["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"time not measured yet (python docs/measure_times.py --only '{command}')"
    took = f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.1f} min"
    load = entry.get("load_before") or 0
    busy = f", busy: load average {load:.1f}" if load >= 1 else ""   # then the CPU time says more than the wall time
    took += f" ({entry['cpu_s']:.0f} s CPU)" if busy and entry.get("cpu_s") is not None else ""
    return f"took {took} on {machine}{busy} ({entry.get('measured', 'date unknown')}, docs/timings.json)"


def check_positive_ints(name, values):
    """Every value must be an integer > 0."""
    for v in values:
        if int(v) != v or v <= 0:
            raise UserError(f"{name}: {v} is not allowed; class sizes and counts must be positive integers")


def check_nonneg(name, values):
    """Every value must be a finite number >= 0."""
    for v in np.atleast_1d(values):
        if not np.isfinite(v) or v < 0:
            raise UserError(f"{name}: {v} is not allowed; it must be a finite number >= 0")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors: one line `error: ...`, exit status 2, no usage dump.
    Negative numbers in any float notation (-1e-6, -inf) are values, not options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)

    def error(self, message):
        raise UserError(message)


def seed_type(text):
    """argparse type of --seed: an integer >= 0 (numpy's rule), refused with one line otherwise."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text} is not allowed; a seed is an integer >= 0")
    return int(text)


def add_common_args(parser):
    """--device, --seed, --data_dir, --quick, --amp: shared by every experiment script."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed for data subsets, init and batches (>= 0)")
    parser.add_argument("--data_dir", default="data", help="datasets and cached subsets")
    parser.add_argument("--models_dir", default="models", help="run folders (weights, CSV, results)")
    parser.add_argument("--plot_dir", default="plots", help="figures and their JSON")
    parser.add_argument("--quick", action="store_true", help="small CPU preview, no download (its time: below)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and BLAS (default: chosen per point from its size and the free "
                             "cores; OMP_NUM_THREADS, when set, is used instead)")
    return parser


def parse_with_presets(parser, argv, quick):
    """Parse argv; with --quick, the preview's values `quick` replace the defaults (explicit
    arguments still win), as timm applies its config file through set_defaults. args.given: the
    dests typed (typed_dests)."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    args.given = typed_dests(parser, argv)
    return args


def typed_dests(parser, argv):
    """The dests of the options typed in argv (not left at a default or a preset), so that an option
    given where it does not apply can be refused."""
    unset, dests = object(), [a.dest for a in parser._actions if a.dest != argparse.SUPPRESS]
    namespace = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
    return frozenset(d for d in dests if getattr(namespace, d) is not unset)


def check_fraction(name, value):
    """A finite number in [0, 1]."""
    if not np.isfinite(value) or not 0 <= value <= 1:
        raise UserError(f"{name}: {value} is not allowed; it must be a fraction in [0, 1]")


def check_choice(name, value, allowed):
    if value not in allowed:
        raise UserError(f"{name} {value}: allowed are {', '.join(map(str, allowed))}")
    return value


def check_positive(name, values):
    """Every value must be a finite number > 0."""
    for v in np.atleast_1d(values):
        if not np.isfinite(v) or v <= 0:
            raise UserError(f"{name}: {v} is not allowed; it must be a number > 0")


def profile_sizes(profile, ratio, num_classes, n_max):
    """Long-tailed class sizes (Cao et al. 2019): 'exp': n_k = floor(n_max ratio^(-k/(K-1))), k = 0..K-1;
    'step': the first K // 2 classes n_max, the rest floor(n_max / ratio). CIFAR-10-LT: exp 100 10 5000;
    ImageNet-LT-like: exp 256 1000 1280 (sizes 1280 down to 5)."""
    check_choice("--profile", profile, ("exp", "step"))
    if not (np.isfinite(ratio) and ratio >= 1):
        raise UserError(f"--ratio: {ratio} is not allowed; the imbalance ratio n_max / n_min must be >= 1")
    if int(num_classes) != num_classes or num_classes < 2:
        raise UserError(f"--num_classes: {num_classes} is not allowed; at least 2 classes")
    if int(n_max) != n_max or n_max < 1 or n_max / ratio < 1:
        raise UserError(f"--n_max: {n_max} is not allowed; an integer with n_max / ratio >= 1")
    k = np.arange(num_classes)
    if profile == "exp":
        n = np.floor(n_max * ratio ** (-k / (num_classes - 1)) * (1 + 1e-12))
    else:
        n = np.where(k < num_classes // 2, n_max, np.floor(n_max / ratio * (1 + 1e-12)))
    return [int(v) for v in n]


def config_key(cfg):
    """Short stable hash of a JSON-able configuration."""
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def ensure_writable_dir(path, arg_name):
    """Create `path` if needed; fail with one line naming the argument if it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{arg_name} {path}: not a writable folder ({e.strerror})") from None
    return path


def atomic_write(path, write):
    """Write `.tmp_<name>.*` beside `path` (fsynced, mode as the umask gives), rename it over `path`, fsync
    the folder: a crash leaves the old or the new file, never an empty one. OSError is a UserError."""
    folder, tmp = os.path.dirname(os.path.abspath(path)), None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp_{os.path.basename(path)}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            mask = os.umask(0o22)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)
        os.replace(tmp, path)
        dfd = os.open(folder, os.O_RDONLY)
        with contextlib.suppress(OSError):  # a durable rename, where the file system can sync folders
            os.fsync(dfd)
        os.close(dfd)
    except BaseException as e:
        remove_leftovers(folder, None, [tmp] if tmp else [])
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}; free space there or choose another "
                            "folder") from None
        raise


def remove_leftovers(folder, name="", also=()):
    """Delete the temporary files `.tmp_<name>*` a killed write left in `folder` (name None: none;
    only while holding the lock of what they belong to) and the files `also`."""
    tmps = [] if name is None else [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(".tmp_" + name)]
    for p in tmps + list(also):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def to_jsonable(obj):
    """numpy/torch values -> plain python for json."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # no tensor can exist before torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(to_jsonable(obj), indent=1).encode()))


def read_json(path):
    """A JSON file, or one line naming it: unreadable, truncated or empty files are UserErrors."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or broken ({type(e).__name__}); move it away to recompute it") from None


def atomic_savez(path, **arrays):
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(obj, path):
    import torch
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_csv(path, rows):
    """Rewrite a CSV (header = union of keys in first-seen order) from a list of dict rows."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]}" for c in cols) for r in rows]
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def flatten(obj, prefix=""):
    """The scalar leaves of nested dicts and lists as {"a.b.0": value}: one name per number, for
    statistics over seeds and for one-row-per-run tables."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def read_csv(path):
    """Rows of a CSV written by atomic_write_csv, numbers parsed."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        cols = lines[0].split(",")
    except (OSError, IndexError, ValueError) as e:
        raise UserError(f"{path} is unreadable or empty ({type(e).__name__}); move its run folder away to "
                        "retrain") from None

    def parse(v):
        try:
            return float(v) if v != "" else None
        except ValueError:
            return v
    return [dict(zip(cols, map(parse, ln.split(",")))) for ln in lines[1:] if ln]


if __name__ == "__main__":  # the commands live in replot.py; runpy adds no import edge
    import runpy
    runpy.run_module("replot", run_name="__main__", alter_sys=True)
