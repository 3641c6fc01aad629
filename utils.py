"""The bottom layer: errors, seeds, devices, validators and argument helpers, datasets and the
cached imbalanced subsets, and atomic result files. Imports no other project module and no
matplotlib. `python utils.py <command>` runs the commands of replot.py."""
import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

# torch is imported inside the functions that need it: opt_main.py and `python utils.py --help`
# never pay for it (about 1.3 s).
if TYPE_CHECKING:
    import torch

# ======================================================================================
# Errors, seeds, devices  (foundation)
# ======================================================================================

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def cli(main, argv=None):
    """Run main(argv): a UserError is `error: ...` on stderr and exit 2; Ctrl-C one line and exit 130."""
    try:
        return main(argv)
    except (UserError, MemoryError, RuntimeError) as e:  # RuntimeError: only torch's out of memory (CPU or CUDA)
        if isinstance(e, RuntimeError) and not ("can't allocate memory" in str(e) or "out of memory" in str(e)):
            raise
        print(f"error: {e if isinstance(e, UserError) else 'out of memory; lower the sizes or the width'}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the run resumes from its last checkpoint when the same command is run again",
              file=sys.stderr)
        sys.exit(130)


def set_seed(seed):
    """Seed python, numpy and torch (all devices)."""
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# set_threads: at least this many elements in a step's largest tensor per extra thread. Smaller
# work (the --quick MLPs, a UFM of a few thousand samples) runs fastest on one thread, and on a
# shared machine extra threads of small work only wait for each other (3.5-9x slower measured).
THREAD_WORK_PER_THREAD = 200_000
_USER_THREADS = os.environ.get("OMP_NUM_THREADS")  # read once: set_threads itself sets it below


def free_cores():
    """Cores this process may use (its CPU affinity) less those busy with other processes
    (the 1-minute load average, rounded), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(load + 0.5)))


def set_threads(work_size=0, threads=None):
    """Set torch's and the BLAS libraries' thread count for work whose largest tensor has
    `work_size` elements, and return it. `threads` (--threads) wins, then an OMP_NUM_THREADS set
    by the user; otherwise one thread per THREAD_WORK_PER_THREAD elements, capped by free_cores()."""
    if threads is not None:
        check_positive_ints("--threads", [threads])
        n = int(threads)
    elif _USER_THREADS and _USER_THREADS.isdigit() and int(_USER_THREADS) > 0:
        n = int(_USER_THREADS)
    else:
        n = max(1, min(free_cores(), int(work_size) // THREAD_WORK_PER_THREAD))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # libraries not loaded yet
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    from threadpoolctl import threadpool_limits  # BLAS already loaded (numpy's OpenBLAS)
    threadpool_limits(limits=n, user_api="blas")
    return n


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
    parser.add_argument("--quick", action="store_true", help="small CPU preview (minutes, no download)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and BLAS (default: chosen per point from its size and the free "
                             "cores; OMP_NUM_THREADS, when set, is used instead)")
    return parser



def parse_with_presets(parser, argv, quick):
    """Parse argv; with --quick, the preview's values `quick` replace the defaults (explicit
    arguments still win), as timm applies its config file through set_defaults."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


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


# ======================================================================================
# Data: datasets, imbalanced subsets, cache  (foundation)
# ======================================================================================

DATASETS = ("synthetic", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
# Per-channel normalisation constants (as in the original code / common practice).
_NORM = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# What each torchvision dataset expects on disk, for the offline message.
_ON_DISK = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion_mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
}
SYNTHETIC_DEFAULTS = {"image_size": 32, "channels": 3, "noise": 1.0, "test_per_class": 100}


@dataclass
class Data:
    """An imbalanced training subset and a balanced test split, normalised float32 NCHW tensors."""
    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    num_classes: int
    dataset: str
    sizes: list
    key: str  # identifies the subset (its cache name): part of every run's configuration
    info: dict = field(default_factory=dict)

    @property
    def in_channels(self):
        return self.x_train.shape[1]


def check_dataset(name, arg="--dataset"):
    """Normalise a dataset name, or fail naming `arg` and the allowed ones."""
    key = str(name).lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist"}.get(key, key)
    if key not in DATASETS:
        raise UserError(f"{arg} {name}: unknown dataset; allowed are {', '.join(DATASETS)}")
    return key


def num_classes_of(dataset, sizes=None):
    """Class count of a dataset (synthetic: as many classes as sizes given)."""
    dataset = check_dataset(dataset)
    if dataset == "synthetic":
        return len(sizes) if sizes is not None else 10
    return _NUM_CLASSES[dataset]


def _torchvision_datasets(name):
    """torchvision.datasets, imported only here (torchvision is optional: only the four torchvision
    datasets need it); missing or broken, one line saying so and how to fix it."""
    import torch
    try:
        import torchvision.datasets as tvd
        return tvd
    except Exception as e:  # not installed (ImportError), or built for another torch (RuntimeError, OSError)
        major, minor = (torch.__version__.split("+")[0].split(".") + ["0"])[:2]
        pair = (f"pip install 'torchvision==0.{int(minor) + 15}.*'" if major == "2" and minor.isdigit()
                else "pip install torchvision (the release made for this torch)")
        if "+cpu" in torch.__version__:  # PyPI's torchvision is built for PyPI's CUDA torch
            pair += " from the index this CPU build of torch came from"
        said = (str(e).strip().splitlines() or [""])[0][:160]
        state = ("is not installed" if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torchvision"
                 else f"does not import with torch {torch.__version__} ({type(e).__name__}: {said})")
        raise UserError(f"dataset {name} needs torchvision, which {state}; install the torchvision matching "
                        f"torch {torch.__version__} ({pair}), or use --dataset synthetic or digits") from None


def _torchvision_split(name, train, data_dir):
    """(uint8 images N x C x H x W, int64 labels) of a torchvision dataset, downloading if possible."""
    import torch
    tvd = _torchvision_datasets(name)
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        ds = cls(data_dir, train=train, download=False)
    except RuntimeError:
        try:
            ds = cls(data_dir, train=train, download=True)
        except Exception as e:  # offline, partial files, ...
            raise UserError(
                f"dataset {name} is missing from {os.path.abspath(data_dir)} and could not be downloaded "
                f"({type(e).__name__}); expected {os.path.join(data_dir, _ON_DISK[name])}. Offline options: "
                f"run `python utils.py prepare --dataset {name} --sizes ...` where there is internet and copy "
                f"{data_dir}/ over, or use --dataset synthetic or digits") from None
    x = torch.as_tensor(np.asarray(ds.data))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _digits_split(train):
    """scikit-learn's bundled 8x8 digits (no download): a fixed, class-stratified 2/3 : 1/3 split."""
    import torch
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.as_tensor(np.round(d.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.as_tensor(d.target, dtype=torch.int64)
    in_test = torch.zeros(len(y), dtype=torch.bool)
    for k in range(10):
        idx = torch.nonzero(y == k).flatten()
        in_test[idx[::3]] = True
    keep = ~in_test if train else in_test
    return x[keep], y[keep]


def load_split(name, train, data_dir="data"):
    """Full train or test split of a real dataset as uint8 NCHW images and int64 labels."""
    name = check_dataset(name)
    if name == "digits":
        return _digits_split(train)
    return _torchvision_split(name, train, data_dir)


def _synthetic(sizes, seed, opts, n_test):
    """Class-structured images: a smooth random prototype per class plus pixel noise.

    Prototypes depend on the seed only, so train and test splits share them; the noise level sets
    the difficulty. Values are already roughly standardised (float32)."""
    import torch
    s, c, noise = opts["image_size"], opts["channels"], opts["noise"]
    K = len(sizes)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(K, c, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    protos = protos / protos.flatten(1).std(1).view(K, 1, 1, 1)

    def draw(counts, gen):
        y = torch.repeat_interleave(torch.arange(K), torch.as_tensor(counts))
        x = protos[y] + noise * torch.randn(len(y), c, s, s, generator=gen)
        return x / (1 + noise**2) ** 0.5, y

    x_train, y_train = draw(list(sizes), torch.Generator().manual_seed(seed + 1))
    x_test, y_test = draw([n_test] * K, torch.Generator().manual_seed(seed + 2))
    return x_train, y_train, x_test, y_test


def _pick_per_class(y, sizes, rng):
    """Indices of sizes[k] samples of each class k, drawn without replacement (vectorised per class)."""
    picked = []
    for k, n in enumerate(sizes):
        idx = np.flatnonzero(y == k)
        picked.append(np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False)))
    return picked


def _resize_for_paper(x_uint8, dataset):
    """Fashion-MNIST is resized to 32x32 (bilinear, kept as uint8 like the paper's PIL resize)."""
    import torch
    if dataset != "fashion_mnist" or x_uint8.shape[-1] == 32:
        return x_uint8
    # uint8 bilinear (torch >= 2.1); antialias changes nothing when upsampling but enables the uint8 kernel
    return torch.nn.functional.interpolate(x_uint8, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)


def _normalise(x_uint8, dataset):
    """uint8 -> per-channel standardised float32, (x / 255 - mean) / std, in place in one buffer."""
    import torch
    if dataset in _NORM:
        mean, std = (torch.tensor(v) for v in _NORM[dataset])
    else:  # digits: mean and std of the whole bundled set (scaled to [0, 1])
        mean, std = torch.tensor([0.3053]), torch.tensor([0.3759])
    x = x_uint8.to(torch.float32)
    shape = (1, -1, 1, 1)
    return x.mul_((1 / (255 * std)).view(shape)).sub_((mean / std).view(shape))


def subset_cache_path(dataset, sizes, seed, data_dir="data", allow_test_fill=False, synthetic=None):
    """Cache file name that encodes everything that changes the subset."""
    desc = {"dataset": dataset, "sizes": [int(n) for n in sizes], "seed": int(seed), "split": "train",
            "test_fill": bool(allow_test_fill)}
    if dataset == "synthetic":
        desc["synthetic"] = dict(SYNTHETIC_DEFAULTS, **(synthetic or {}))
    short = "-".join(map(str, sizes)) if len(sizes) <= 12 else f"K{len(sizes)}"
    name = f"{dataset}_train_seed{seed}_n{short}{'_testfill' if allow_test_fill else ''}_{config_key(desc)}.npz"
    return os.path.join(data_dir, "subsets", name), desc


def build_subset(dataset, sizes, seed, data_dir="data", allow_test_fill=False):
    """Draw the imbalanced train subset (uint8) and the balanced test split from a real dataset.

    A class asking for more images than the train split has is an error, unless allow_test_fill,
    which tops it up from the test split (as the original did silently) and removes those images
    from the test split, reporting how many were borrowed."""
    import torch
    x_tr, y_tr = load_split(dataset, True, data_dir)
    x_te, y_te = load_split(dataset, False, data_dir)
    counts = np.bincount(y_tr.numpy(), minlength=len(sizes))
    short = [k for k, n in enumerate(sizes) if n > counts[k]]
    if short and not allow_test_fill:
        k = short[0]
        raise UserError(f"class sizes: class {k} asks for {sizes[k]} images but the {dataset} train split has at most "
                        f"{counts[k]}; lower it, or pass --allow_test_fill to top up from the test split")
    rng = np.random.default_rng(seed)
    tr_idx = _pick_per_class(y_tr.numpy(), sizes, rng)
    x, y = x_tr[np.concatenate(tr_idx)], y_tr[np.concatenate(tr_idx)]
    borrowed = {}
    test_keep = np.ones(len(y_te), dtype=bool)
    for k in short:
        extra = sizes[k] - counts[k]
        pool = np.flatnonzero(y_te.numpy() == k)
        if extra > len(pool):
            raise UserError(f"class sizes: class {k} asks for {sizes[k]} images; train and test splits of {dataset} "
                            f"hold only {counts[k] + len(pool)}")
        take = np.sort(rng.choice(pool, size=extra, replace=False))
        test_keep[take] = False
        x, y = torch.cat([x, x_te[take]]), torch.cat([y, y_te[take]])
        borrowed[k] = int(extra)
    return _resize_for_paper(x, dataset), y, _resize_for_paper(x_te[test_keep], dataset), y_te[test_keep], borrowed


def get_data(dataset, sizes, seed=0, data_dir="data", allow_test_fill=False, synthetic=None):
    """The training subset with per-class `sizes` and a balanced test split, cached in data_dir/subsets."""
    import torch
    dataset = check_dataset(dataset)
    sizes = [int(n) for n in sizes]
    check_positive_ints("class sizes", sizes)
    K = num_classes_of(dataset, sizes)
    if len(sizes) != K or K < 2:
        raise UserError(f"class sizes: {len(sizes)} given; {dataset} has {K} classes, so give {K}"
                        + (" (at least 2)" if dataset == "synthetic" else ""))
    path, desc = subset_cache_path(dataset, sizes, seed, data_dir, allow_test_fill, synthetic)
    if dataset == "synthetic":  # cheap to regenerate: never cached
        opts = desc["synthetic"]
        xs = _synthetic(sizes, seed, opts, opts["test_per_class"])
        return Data(*xs, num_classes=K, dataset=dataset, sizes=sizes, key=os.path.basename(path)[:-4])
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                arrays = {k: torch.as_tensor(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
                info = json.loads(str(f["info"]))
            if not ({k: info.get(k) for k in desc} == desc and len(arrays["x_train"]) == sum(sizes)
                    and np.bincount(arrays["y_train"].numpy(), minlength=K).tolist() == sizes
                    and len(arrays["x_test"]) == len(arrays["y_test"]) and int(arrays["y_test"].max()) < K):
                raise ValueError("mismatch")
        except Exception as e:
            raise UserError(f"cached subset {path} is unreadable or does not match its name (key, class counts, "
                            f"shapes) ({type(e).__name__}); delete it to rebuild") from None
    else:
        ensure_writable_dir(os.path.dirname(path), "--data_dir")
        x, y, xt, yt, borrowed = build_subset(dataset, sizes, seed, data_dir, allow_test_fill)
        info = dict(desc, borrowed_from_test={str(k): v for k, v in borrowed.items()})
        atomic_savez(path, x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy(),
                     info=np.array(json.dumps(info)))
        arrays = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}
    if info.get("borrowed_from_test"):
        print(f"note: topped up from the test split: {info['borrowed_from_test']} (class: images)", file=sys.stderr)
    return Data(_normalise(arrays["x_train"], dataset), arrays["y_train"].long(),
                _normalise(arrays["x_test"], dataset), arrays["y_test"].long(),
                num_classes=K, dataset=dataset, sizes=sizes, key=os.path.basename(path)[:-4], info=info)


# ======================================================================================
# Result files: atomic writes, run folders, sweeps  (foundation)
# ======================================================================================


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


@contextlib.contextmanager
def run_lock(path, what, wait_s=None, poll_s=2.0):
    """Hold the lock file `path` for `what`: JSON with the owner's host and pid, made with os.link (atomic on NFS).
    A dead process's lock on this host is taken over; a live one's is waited for (saying once who holds it)."""
    mine, t0, told = f"{path}.{socket.gethostname()}.{os.getpid()}", time.time(), False
    atomic_write_json(mine, {"host": socket.gethostname(), "pid": os.getpid()})
    try:
        while True:
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                owner, gone = None, False
            try:  # owner None while unreadable; PermissionError: alive (another user's)
                raw = read_json(path)
                owner = {"host": str(raw["host"]), "pid": int(raw["pid"])}
                if owner["host"] == socket.gethostname():  # a pid can be checked on its own host only
                    os.kill(owner["pid"], 0)
            except ProcessLookupError:
                gone = True
            except (UserError, KeyError, TypeError, ValueError, PermissionError):
                pass
            if gone:
                print(f"note: taking over the stale lock {path} of pid {owner['pid']} (gone)", file=sys.stderr)
                remove_leftovers(None, None, [path])
                continue
            holder = f"pid {owner['pid']} on host {owner['host']}" if owner else "another process"
            if wait_s is not None and time.time() - t0 >= wait_s:
                raise UserError(f"{what} is held by {holder} (lock {path}); wait for it, or delete the lock if "
                                "that process is gone")
            if not told:
                print(f"waiting for {holder}, which holds {what} (delete {path} if it is gone)", file=sys.stderr)
            told = True
            time.sleep(poll_s)
    finally:
        os.remove(mine)
    try:
        yield
    finally:
        remove_leftovers(None, None, [path])


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
        raise UserError(f"{path} is unreadable or empty ({type(e).__name__}); move its run folder away to retrain") from None

    def parse(v):
        try:
            return float(v) if v != "" else None
        except ValueError:
            return v
    return [dict(zip(cols, map(parse, ln.split(",")))) for ln in lines[1:] if ln]



# Training images per class in the train / test split of each real dataset (mnist: the smallest class).
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500, "fashion_mnist": 6000, "mnist": 5421, "digits": 116}
TEST_PER_CLASS = {"cifar10": 1000, "cifar100": 100, "fashion_mnist": 1000, "mnist": 892}


def check_class_sizes(dataset, sizes, allow_test_fill, arg_name, network=None, fill_hint=True):
    """Fail before any training when a class asks for more images than the dataset holds
    (the UFM uses no images, so any size goes); fill_hint: name --allow_test_fill where it helps."""
    check_positive_ints(arg_name, sizes)
    if dataset == "synthetic" or str(network).lower() == "ufm":
        return
    if dataset == "digits":
        y_tr, y_te = _digits_split(True)[1].numpy(), _digits_split(False)[1].numpy()
        have, extra = int(np.bincount(y_tr).min()), int(np.bincount(y_te).min())
    else:
        have, extra = TRAIN_PER_CLASS[dataset], TEST_PER_CLASS[dataset]
    n = max(sizes)
    if n > have + (extra if allow_test_fill else 0):
        hint = (f"; pass --allow_test_fill to top up from the test split (up to {have + extra})"
                if fill_hint and not allow_test_fill and n <= have + extra else "")
        raise UserError(f"{arg_name}: {n} images per class asked, but the {dataset} train split has {have} per class"
                        f"{' (plus ' + str(extra) + ' in the test split)' if allow_test_fill else ''}{hint}")



# ======================================================================================
# Mixup snapshot files
# ======================================================================================


def load_snapshot(path):
    """A mixup snapshot .npz as a dict of arrays (no pickle)."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:
        raise UserError(f"snapshot {path} is unreadable ({type(e).__name__}); move it away (rerun to rewrite it)") from None



def mixup_snapshot_path(run_dir, epoch, ext="npz"):
    """Where a run keeps the snapshot of an epoch (ext 'npz') and its geometry summary ('json')."""
    return os.path.join(run_dir, f"mixup_e{epoch:04d}.{ext}")


def mixup_snapshots(run_dir):
    """Sorted [(epoch, npz path)] of a run's snapshots."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run_dir: no such folder {run_dir}")
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("mixup_e") and n.endswith(".npz"))
    if not names:
        raise UserError(f"run_dir: {run_dir} holds no mixup_e*.npz snapshots")
    return [(int(n[7:-4]), os.path.join(run_dir, n)) for n in names]


if __name__ == "__main__":  # the commands live in replot.py; runpy adds no import edge
    import runpy
    runpy.run_module("replot", run_name="__main__", alter_sys=True)
