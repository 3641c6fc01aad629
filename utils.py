"""The bottom layer's small shared helpers: errors and the scripts' entry (cli, Ctrl-C and SIGTERM), seeds,
the benchmarks' clock, validators and argument helpers, run records, measured times. Imports no other project
module and no matplotlib. `python utils.py <command>` runs the commands of replot.py."""
import argparse
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


def check_distinct(name, values):
    """A swept list names every value once: a repeated one would be the same point twice."""
    seen = set()
    for v in values:
        if v in seen:
            raise UserError(f"{name} {' '.join(f'{x:g}' for x in values)}: {v:g} is given twice (the same point "
                            "twice); give each value once")
        seen.add(v)


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


if __name__ == "__main__":  # the commands live in replot.py; runpy adds no import edge
    import runpy
    runpy.run_module("replot", run_name="__main__", alter_sys=True)
