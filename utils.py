"""Shared plumbing: errors, seeds, devices, datasets and cached subsets, result files,
plotting helpers, and the `python utils.py <command>` CLI."""
import argparse
import functools
import hashlib
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap, Normalize, SymLogNorm

# ======================================================================================
# Errors, seeds, devices  (foundation)
# ======================================================================================


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def cli(main, argv=None):
    """Run main(argv); report a UserError as `error: ...` on stderr and exit 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def set_seed(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    """argparse whose errors are UserErrors: one line `error: ...`, exit status 2, no usage dump."""

    def error(self, message):
        raise UserError(message)


def add_common_args(parser):
    """--device, --seed, --data_dir, --quick, --amp: shared by every experiment script."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--seed", type=int, default=0, help="seed for data subsets, init and batches")
    parser.add_argument("--data_dir", default="data", help="datasets and cached subsets")
    parser.add_argument("--models_dir", default="models", help="run folders (weights, CSV, results)")
    parser.add_argument("--plot_dir", default="plots", help="figures and their JSON")
    parser.add_argument("--quick", action="store_true", help="small CPU preview (minutes, no download)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    return parser


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
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    dataset: str
    sizes: list
    key: str  # identifies the subset (its cache name): part of every run's configuration
    info: dict = field(default_factory=dict)

    @property
    def in_channels(self):
        return self.x_train.shape[1]


def check_dataset(name):
    """Normalise a dataset name, or fail naming the allowed ones."""
    key = str(name).lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist"}.get(key, key)
    if key not in DATASETS:
        raise UserError(f"--dataset {name}: unknown dataset; allowed are {', '.join(DATASETS)}")
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
    if dataset != "fashion_mnist" or x_uint8.shape[-1] == 32:
        return x_uint8
    # uint8 bilinear (torch >= 2.1); antialias changes nothing when upsampling but enables the uint8 kernel
    return torch.nn.functional.interpolate(x_uint8, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)


def _normalise(x_uint8, dataset):
    """uint8 -> per-channel standardised float32, (x / 255 - mean) / std, in place in one buffer."""
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
    x_tr, y_tr = load_split(dataset, True, data_dir)
    x_te, y_te = load_split(dataset, False, data_dir)
    counts = np.bincount(y_tr.numpy(), minlength=len(sizes))
    short = [k for k, n in enumerate(sizes) if n > counts[k]]
    if short and not allow_test_fill:
        k = short[0]
        raise UserError(f"--sizes: class {k} asks for {sizes[k]} images but the {dataset} train split has at most "
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
            raise UserError(f"--sizes: class {k} asks for {sizes[k]} images; train and test splits of {dataset} "
                            f"hold only {counts[k] + len(pool)}")
        take = np.sort(rng.choice(pool, size=extra, replace=False))
        test_keep[take] = False
        x, y = torch.cat([x, x_te[take]]), torch.cat([y, y_te[take]])
        borrowed[k] = int(extra)
    return _resize_for_paper(x, dataset), y, _resize_for_paper(x_te[test_keep], dataset), y_te[test_keep], borrowed


def get_data(dataset, sizes, seed=0, data_dir="data", allow_test_fill=False, synthetic=None):
    """The training subset with per-class `sizes` and a balanced test split, cached in data_dir/subsets."""
    dataset = check_dataset(dataset)
    sizes = [int(n) for n in sizes]
    check_positive_ints("--sizes", sizes)
    K = num_classes_of(dataset, sizes)
    if len(sizes) != K or K < 2:
        raise UserError(f"--sizes: {len(sizes)} sizes given; {dataset} has {K} classes, so give {K}"
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
        except Exception as e:
            raise UserError(f"cached subset {path} is unreadable ({type(e).__name__}); delete it to rebuild") from None
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


def _atomic(path, write):
    """Write through a temporary file in the same folder, then rename over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_jsonable(obj):
    """numpy/torch values -> plain python for json."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_json(path, obj):
    _atomic(path, lambda f: f.write(json.dumps(to_jsonable(obj), indent=1).encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def atomic_savez(path, **arrays):
    _atomic(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(obj, path):
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_csv(path, rows):
    """Rewrite a CSV (header = union of keys in first-seen order) from a list of dict rows."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]}" for c in cols) for r in rows]
    _atomic(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def read_csv(path):
    """Rows of a CSV written by atomic_write_csv, numbers parsed."""
    with open(path) as f:
        lines = f.read().splitlines()
    cols = lines[0].split(",")

    def parse(v):
        try:
            return float(v) if v != "" else None
        except ValueError:
            return v
    return [dict(zip(cols, map(parse, ln.split(",")))) for ln in lines[1:] if ln]


# ======================================================================================
# Figure sweeps: argument handling, points keyed by configuration, reuse, assembly
# (imbalanced-NC figures)
# ======================================================================================
# A figure is a list of points; each point is a JSON-able dict holding everything that changes
# its result (dataset, class sizes, clusters, seed, the train_run configuration, and `params`,
# the values the figure plots). A finished point is recorded in
# <models_dir>/points/<figure>_<config_key(point)>.json and reused; train_run reuses the
# trained network itself the same way.

# Training images per class in the train / test split of each real dataset (mnist: the smallest class).
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500, "fashion_mnist": 6000, "mnist": 5421, "digits": 116}
TEST_PER_CLASS = {"cifar10": 1000, "cifar100": 100, "fashion_mnist": 1000, "mnist": 892}
# --quick previews use small single-channel synthetic images (any class size, nothing to download).
QUICK_SYNTHETIC = {"image_size": 8, "channels": 1}
QUICK_MLP_WIDTH = 128


def add_sweep_args(parser, sweep=True):
    """--point I and --assemble (for sweeps run as job arrays), --allow_test_fill, --width."""
    parser.add_argument("--width", type=int, default=None, help="network width (default: the network's own; "
                        "--quick uses 128 for the MLP)")
    parser.add_argument("--allow_test_fill", action="store_true",
                        help="top up classes larger than the train split from the test split (the original did "
                             "this silently); otherwise such sizes are an error")
    if not sweep:
        return parser
    parser.add_argument("--point", type=int, default=None,
                        help="train only point I (0-based, in the order the values are listed), then plot "
                             "whatever points are finished, naming the missing ones (for cluster job arrays)")
    parser.add_argument("--assemble", action="store_true",
                        help="train nothing: plot the finished points and name the missing ones")
    return parser


def add_figure_args(parser, epochs_help, ka=True):
    """The arguments every imbalanced-NC figure shares, under the original code's names (with aliases)."""
    parser.add_argument("--dataset_t", "--dataset", dest="dataset_t", default=None,
                        help="cifar10 (default), fashion_mnist, mnist, digits, synthetic")
    parser.add_argument("--network", "--model", dest="network", default=None,
                        help="ResNet18 (default), VGG11, VGG13, MLP, CNN, UFM")
    if ka:
        parser.add_argument("--ka", type=int, default=5, help="number of majority classes k_A (default 5)")
    parser.add_argument("--reg_b", type=float, default=0.01, help="lam_b, bias regularisation (default 0.01)")
    parser.add_argument("--epoch", "--epochs", dest="epoch", type=int, default=None, help=epochs_help)
    return parser


def check_figure_args(args, full, quick):
    """Fill the paper's (or, with --quick, the preview's) defaults and check the shared figure
    arguments; returns the number of classes of the dataset."""
    fill_defaults(args, full, quick)
    args.dataset_t = check_dataset(args.dataset_t)
    args.network = check_network_name(args.network)
    check_nonneg("--reg_b", args.reg_b)
    K = num_classes_of(args.dataset_t)
    if getattr(args, "ka", None) is not None and not 1 <= args.ka < K:
        raise UserError(f"--ka {args.ka}: must lie in 1..{K - 1} (both clusters non-empty)")
    return K


def fill_defaults(args, full, quick):
    """Set every argument still None to its paper value (`full`) or, with --quick, its preview value."""
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def check_choice(name, value, allowed):
    if value not in allowed:
        raise UserError(f"{name} {value}: allowed are {', '.join(map(str, allowed))}")
    return value


def check_positive(name, values):
    """Every value must be a finite number > 0."""
    for v in np.atleast_1d(values):
        if not np.isfinite(v) or v <= 0:
            raise UserError(f"{name}: {v} is not allowed; it must be a number > 0")


def check_network_name(name):
    """The network name as train_utils spells it, or a UserError naming the allowed ones."""
    import train_utils
    if str(name).lower() not in train_utils.NETWORKS:
        raise UserError(f"--network {name}: unknown network; allowed are {', '.join(train_utils.NETWORKS)} (any case)")
    return str(name).lower()


def check_class_sizes(dataset, sizes, allow_test_fill, arg_name, network=None):
    """Fail before any training when a class asks for more images than the dataset holds
    (the UFM uses no images, so any size goes)."""
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
                if not allow_test_fill and n <= have + extra else "")
        raise UserError(f"{arg_name}: {n} images per class asked, but the {dataset} train split has {have} per class"
                        f"{' (plus ' + str(extra) + ' in the test split)' if allow_test_fill else ''}{hint}")


def figure_tag(args):
    """The dataset-and-network part of a figure's file stem ('ufm' for the UFM, which uses no images)."""
    network = check_network_name(args.network)
    return "ufm" if network == "ufm" else f"{args.dataset_t}_{network}"


def figure_device(args):
    """The torch device of a figure script; --quick on CPU uses one thread (small models, shared cores)."""
    device = get_device(args.device)
    if args.quick and device.type == "cpu":
        torch.set_num_threads(1)
    ensure_writable_dir(args.plot_dir, "--plot_dir")
    return device


def ufm_train_config(cfg, num_classes, num_samples, epochs=None):
    """The UFM version of a figure's training configuration: full-batch L-BFGS (lr 1) to the optimum.

    The UFM minimises exactly the regularised loss of theory.md section 2, so lam_h, lam_w, lam_b keep
    their meaning (lambda = 2 sqrt(lam_h lam_w)); SGD schedules, the warm phase and weight decay (which
    L-BFGS does not apply) are dropped. 40 epochs of up to 50 L-BFGS steps each unless `epochs` is given
    (the loss settles within about 5; near a collapse threshold the last digits take longer), evaluated
    (and checkpointed: the L-BFGS history makes checkpoints large) at epochs 1, 2, 3, 5, 10, 20, 40, ..."""
    epochs = int(epochs or 40)
    evals = [e for e in (1, 2, 3, 5, 10, 20, 40, 80, 160, 320, 640) if e <= epochs] + [epochs]
    return dict(cfg, network="ufm", optimizer="lbfgs", lr=1.0, momentum=0.0, batch_size=int(num_samples),
                lr_milestones=[], weight_decay=0.0, warm_epochs=0, warm_factor=1.0,
                epochs=epochs, eval_epochs=sorted(set(evals)), feat_dim=max(num_classes, 16), width=None)


def figure_point(figure, args, sizes, clusters, params, lam_h, lam_w, epochs, milestone_frac, weight_decay,
                 warm_frac=0.0, history=False, ufm_epochs=40):
    """One point of a figure: data, clusters, the plotted `params` and the train_run configuration.

    Networks: SGD (momentum 0.9, batch 128), lr 0.01 -> 0.001 at milestone_frac of `epochs`
    (--epoch overrides), regularisation at 1/10 for the first warm_frac of training (theory.md
    section 4). --network UFM: ufm_train_config (full-batch L-BFGS to the optimum, ufm_epochs epochs
    unless --epoch is given)."""
    network = check_network_name(args.network)
    sizes = [int(n) for n in sizes]
    base = dict(lam_h=float(lam_h), lam_w=float(lam_w), lam_b=float(args.reg_b), seed=int(args.seed))
    if network == "ufm":
        train = ufm_train_config(dict(base, name=f"{figure}_ufm"), len(sizes), sum(sizes), args.epoch or ufm_epochs)
    else:
        E = int(args.epoch or epochs)
        train = dict(base, name=f"{figure}_{network}", network=network, epochs=E, optimizer="sgd", lr=0.01,
                     momentum=0.9, batch_size=128, lr_milestones=[max(1, int(round(E * milestone_frac)))],
                     lr_gamma=0.1, weight_decay=float(weight_decay), warm_epochs=int(round(E * warm_frac)),
                     warm_factor=0.1, amp=bool(args.amp),
                     width=args.width if args.width is not None else (QUICK_MLP_WIDTH if args.quick and network == "mlp" else None))
    # The UFM's features are free parameters: only the labels are used, so no images are loaded.
    dataset = "synthetic" if network == "ufm" else args.dataset_t
    synthetic = QUICK_SYNTHETIC if (network == "ufm" or (args.quick and dataset == "synthetic")) else None
    return dict(figure=figure, dataset=dataset, sizes=sizes, clusters=[list(c) for c in clusters],
                seed=int(args.seed), allow_test_fill=bool(args.allow_test_fill), synthetic=synthetic,
                params=params, train=train, history=bool(history))


def theory_curve(xs, make):
    """The convex program along a curve: make(x) -> (sizes, clusters, lam, lam_b); returns
    {'x': xs, 'minority_spread', 'minority_spread_rel', 'within_A', 'within_B', 'across', 'status'}
    (cosines of columns of Z, clusters ordered A, B)."""
    out = {"x": [], "minority_spread": [], "minority_spread_rel": [], "within_A": [], "within_B": [], "across": [],
           "status": []}
    for x in xs:
        sizes, clusters, lam, lam_b = make(x)
        th = ufm_theory(sizes, clusters, lam, lam_b)
        out["x"].append(x)
        for k in ("minority_spread", "minority_spread_rel", "status"):
            out[k].append(th[k])
        within = th["cosines"]["within"] + [None, None]
        out["within_A"].append(within[0])
        out["within_B"].append(within[1])
        out["across"].append(th["cosines"]["across"])
    return out


def point_record_path(models_dir, point):
    return os.path.join(models_dir, "points", f"{point['figure']}_{config_key(point)}.json")


def describe_params(params):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_sweep(points, run_point, models_dir, only=None, assemble_only=False):
    """Run (or reuse) every point, or only point `only`; return (records, missing indices).

    points: JSON-able dicts with keys 'figure' and 'params' (see the banner). run_point(point) -> a
    JSON-able record, stored in point_record_path and reused by later calls. With assemble_only
    nothing is trained. Missing points are named on stderr. records[i] is None where missing."""
    if only is not None and not 0 <= only < len(points):
        raise UserError(f"--point {only}: allowed are 0..{len(points) - 1} ({len(points)} points)")
    if only is not None and assemble_only:
        raise UserError("--point with --assemble: --assemble trains nothing; give one of them")
    records, missing = [], []
    for i, point in enumerate(points):
        path = point_record_path(models_dir, point)
        record = None
        if os.path.exists(path):
            record = read_json(path)
        elif not assemble_only and only in (None, i):
            print(f"[point {i}/{len(points) - 1}] {describe_params(point['params'])}", file=sys.stderr)
            record = run_point(point)
            atomic_write_json(path, record)
        if record is None:
            missing.append(i)
        records.append(record)
    if missing:
        print(f"missing points ({len(missing)} of {len(points)}, not trained yet; run each with --point I): "
              + "; ".join(f"{i} ({describe_params(points[i]['params'])})" for i in missing), file=sys.stderr)
    return records, missing


def z_summary(Z, clusters, minority):
    """minority_spread (absolute and relative to ||Z||_F) and the mean column cosines of Z."""
    import ana_utils
    Z = np.asarray(Z, dtype=np.float64)
    spread = ana_utils.minority_spread(Z, minority) if len(minority) > 1 else 0.0
    norm = float(np.linalg.norm(Z))
    cos = ana_utils.cluster_cosines(Z, clusters) if norm > 1e-12 else {"within": [None] * len(clusters), "across": None}
    return {"minority_spread": spread, "minority_spread_rel": spread / norm if norm > 1e-12 else None,
            "z_norm": norm, "cosines": cos}


@functools.lru_cache(maxsize=512)
@functools.lru_cache(maxsize=256)
def _solve_ufm_cached(sizes, lam, lam_b):
    """The fast solver (exact zeros at collapse, robust near thresholds), remembered within one process."""
    import ana_utils
    return ana_utils.solve_ufm_fast(list(sizes), lam, lam_b)


def ufm_theory(sizes, clusters, lam, lam_b):
    """The convex program's answer for these class sizes and lambda (theory.md section 2)."""
    import ana_utils
    N = int(sum(sizes))
    minority = min(clusters, key=lambda c: sizes[c[0]])
    thresholds = [ana_utils.collapse_threshold(int(sizes[c[0]]), N) if len(c) > 1 else None for c in clusters]
    collapse = [bool(lam >= t) if t is not None else None for t in thresholds]
    try:
        sol = _solve_ufm_cached(tuple(int(n) for n in sizes), float(lam), float(lam_b))
        summary = z_summary(sol["Z"], clusters, minority)
    except UserError:
        raise
    except Exception as e:  # a solver failure must not lose the trained points: record it, plot without it
        sol = {"Z": None, "b": None, "status": f"solver failed: {type(e).__name__}: {e}"[:300]}
        summary = {"minority_spread": None, "minority_spread_rel": None, "z_norm": None,
                   "cosines": {"within": [None] * len(clusters), "across": None}}
        print(f"warning: convex program failed for sizes {sizes}, lambda {lam:.4g}: {sol['status']}", file=sys.stderr)
    return dict(summary, Z=sol["Z"], b=sol["b"], objective=sol.get("objective"),
                status=sol.get("status"), cluster_thresholds=thresholds, cluster_collapse=collapse,
                minority_threshold=thresholds[clusters.index(minority)],
                verdict="collapse" if collapse[clusters.index(minority)] else "no collapse")


def train_point(point, device, models_dir, data_dir):
    """Train (or reuse) one point with train_utils.train_run and summarise its Z: the sweep's run_point."""
    import train_utils
    data = get_data(point["dataset"], point["sizes"], point["seed"], data_dir, point["allow_test_fill"],
                    point.get("synthetic"))
    res = train_utils.train_run(point["train"], data, device, models_dir)
    minority = min(point["clusters"], key=lambda c: point["sizes"][c[0]])
    record = dict(params=point["params"], sizes=point["sizes"], clusters=point["clusters"], Z=res["Z"], b=res["b"],
                  nc=res["final"], **z_summary(res["Z"], point["clusters"], minority), run_dir=res["run_dir"],
                  train=point["train"])
    if point.get("history"):
        record["history"] = read_csv(os.path.join(res["run_dir"], "summary.csv"))
    return record


def assemble_figure(figure, settings, points, records, missing, lam_b):
    """The figure's JSON: settings, each finished point with its theory prediction, the missing ones."""
    out = []
    for i, rec in enumerate(records):
        if rec is not None:
            out.append(dict(rec, index=i,
                            theory=ufm_theory(rec["sizes"], rec["clusters"], rec["params"]["lam"], lam_b)))
    return {"figure": figure, "argv": sys.argv[1:], "settings": settings, "points": out,
            "missing": [dict(index=i, params=points[i]["params"]) for i in missing]}


def figure_paths(plot_dir, stem):
    """(png, json) paths of a figure: the JSON sits beside the PNG with the same stem."""
    return os.path.join(plot_dir, stem + ".png"), os.path.join(plot_dir, stem + ".json")


# ======================================================================================
# Plotting helpers: Z heat-maps and figure grids  (imbalanced-NC figures)
# ======================================================================================


def symlog_norm(Zs, linthresh=None):
    """One symmetric-log colour scale for a list of Z matrices: +-max|Z|, linear within linthresh."""
    vmax = max([float(np.max(np.abs(np.asarray(Z, dtype=float)))) for Z in Zs] + [1e-8])
    return SymLogNorm(linthresh=linthresh or max(vmax * 1e-2, 1e-8), vmin=-vmax, vmax=vmax, base=10)


def plot_z_heatmap(ax, Z, cluster_sizes, norm=None, title=None):
    """Heat-map of Z (classes as columns) with lines at the cluster boundaries; returns the image."""
    Z = np.asarray(Z, dtype=float)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")  # NaN entries (masked) in grey
    im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap, norm=norm if norm is not None else symlog_norm([np.nan_to_num(Z)]),
                   interpolation="nearest")
    for edge in np.cumsum(cluster_sizes)[:-1]:
        ax.axhline(edge - 0.5, color="k", lw=0.8)
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return im


def save_figure(fig, path, dpi=110):
    """Write a matplotlib figure as PNG atomically and close it."""
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def _cluster_sizes(point):
    return [len(c) for c in point["clusters"]]


def plot_minority_figure(result, path):
    """Figs 5-8: grid of Z heat-maps sorted by the swept value (shared symlog scale, cluster lines,
    theory verdict per panel) above minority_spread against the swept value, with the convex
    program's curve and the collapse threshold."""
    x_key, x_label = result["settings"]["x_key"], result["settings"]["x_label"]
    pts = sorted(result["points"], key=lambda p: p["params"][x_key])
    n = max(len(pts), 1)
    ncol = min(n, 5)
    nrow = -(-n // ncol)
    fig = plt.figure(figsize=(max(2.1 * ncol + 0.8, 7.0), 2.3 * nrow + 3.2))
    gs = fig.add_gridspec(nrow + 1, ncol + 1, height_ratios=[1] * nrow + [1.5], width_ratios=[1] * ncol + [0.08],
                          hspace=0.45, wspace=0.15)
    norm = symlog_norm([p["Z"] for p in pts]) if pts else None
    im = None
    for i, p in enumerate(pts):
        ax = fig.add_subplot(gs[i // ncol, i % ncol])
        v = p["params"][x_key]
        mark = "collapse" if p["theory"]["verdict"] == "collapse" else "no collapse"
        im = plot_z_heatmap(ax, p["Z"], _cluster_sizes(p), norm,
                            f"{x_label} = {v:.4g}\ntheory: {mark}\nspread {p['minority_spread']:.3g}")
        for s in ax.spines.values():
            s.set_edgecolor("tab:red" if mark == "collapse" else "tab:blue")
            s.set_linewidth(2)
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(gs[:nrow, ncol]), label="Z (symlog)")
    ax = fig.add_subplot(gs[nrow, :ncol])
    curve = result.get("theory_curve") or {}
    if curve.get("x"):
        ax.plot(curve["x"], np.array(curve["minority_spread"], dtype=float), "-", color="0.5",
                label="convex program (UFM)")
    ax.plot([p["params"][x_key] for p in pts], [p["minority_spread"] for p in pts], "o", color="tab:red",
            label=f"trained ({result['settings'].get('network', '')})")
    thr = result.get("threshold")
    if thr is not None:
        ax.axvline(thr, ls="--", color="k", label=f"threshold {x_label}* = {thr:.4g}")
    ax.set_xlabel(x_label)
    ax.set_ylabel("minority spread  max ||z_j - z_k||")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10, y=1.0)
    return save_figure(fig, path)


def plot_block_figure(result, path):
    """Figs 1-2: NC metrics against epoch (log axes); trained Z beside the convex program's Z."""
    p = result["points"][0]
    hist = result["history"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ep = [r["epoch"] for r in hist]
    for key in ("nc1", "nc1_weighted", "nc2_equinorm_means", "nc2_equiangle", "nc3"):
        ys = [r.get(key) for r in hist]
        if any(y is not None and y > 0 for y in ys):
            axes[0].plot(ep, [y if y is not None and y > 0 else np.nan for y in ys], "-o", ms=2, label=key)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_title("NC metrics", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    # The diagonal dominates Z; the blocks live in the off-diagonal entries: show those on a linear scale.
    K = len(p["Z"])
    theory_Z = p["theory"]["Z"] if p["theory"]["Z"] is not None else np.full((K, K), np.nan)  # solver failed
    Zs = [np.array(p["Z"], dtype=float), np.array(theory_Z, dtype=float)]
    off = ~np.eye(len(Zs[0]), dtype=bool)
    for Z in Zs:
        Z[~off] = np.nan
    vals = np.concatenate([Z[off] for Z in Zs])
    norm = Normalize(np.nanmin(vals), np.nanmax(vals))
    sizes = _cluster_sizes(p)
    diag = [np.diag(np.array(p["Z"], dtype=float)), np.diag(np.array(theory_Z, dtype=float))]
    plot_z_heatmap(axes[1], Zs[0], sizes, norm, f"trained Z ({result['settings'].get('network', '')}), off-diagonal\n"
                   f"(diagonal {diag[0].min():.3g} .. {diag[0].max():.3g})")
    im = plot_z_heatmap(axes[2], Zs[1], sizes, norm, f"convex program Z (lambda = {p['params']['lam']:.3g}), off-diagonal\n"
                        f"(diagonal {diag[1].min():.3g} .. {diag[1].max():.3g})")
    fig.colorbar(im, ax=axes[1:], fraction=0.03, label="Z off-diagonal (linear)")
    fig.suptitle(result["settings"].get("title", result["figure"]), fontsize=10)
    return save_figure(fig, path)


def plot_limit_figure(result, path):
    """Fig 9: mean cosines between columns of Z within A, within B and across, against n_A,
    with the simplex-ETF value -1/(K-1) and the convex program's prediction."""
    pts = sorted(result["points"], key=lambda p: p["params"]["n_A"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = result.get("theory_curve") or {}
    styles = (("within_A", "tab:red", "within A"), ("within_B", "tab:blue", "within B"), ("across", "tab:green", "across A-B"))
    for key, color, label in styles:
        if curve.get("x"):
            ax.plot(curve["x"], np.array(curve[key], dtype=float), "--", color=color, alpha=0.7, label=f"{label} (convex program)")
        vals = [(p["params"]["n_A"], _cos_of(p["cosines"], key)) for p in pts]
        ax.plot([v[0] for v in vals], [np.nan if v[1] is None else v[1] for v in vals], "o-", color=color, label=f"{label} (trained)")
    K = len(pts[0]["sizes"]) if pts else result["settings"].get("num_classes", 10)
    ax.axhline(-1 / (K - 1), color="k", lw=1, label=f"ETF -1/(K-1) = {-1 / (K - 1):.3f}")
    ax.set_xlabel("n_A (samples per majority class)")
    ax.set_ylabel("mean cosine between columns of Z")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(alpha=0.3)
    ax.set_title(result["settings"].get("title", result["figure"]), fontsize=9)
    return save_figure(fig, path)


def _cos_of(cosines, key):
    """'within_A' / 'within_B' / 'across' from a cluster_cosines dict (clusters ordered A, B)."""
    if key == "across":
        return cosines["across"]
    return cosines["within"][0 if key == "within_A" else 1]


FIGURE_PLOTTERS = {"block": plot_block_figure, "minority_l": plot_minority_figure,
                   "minority_n": plot_minority_figure, "limit": plot_limit_figure}


def plot_figure_json(json_path, png_path=None):
    """Redraw a figure from its saved JSON (beside it, same stem, unless png_path is given)."""
    result = read_json(json_path)
    plotter = FIGURE_PLOTTERS.get(result.get("figure"))
    if plotter is None:
        raise UserError(f"{json_path}: not a figure result (its 'figure' is {result.get('figure')!r})")
    return plotter(result, png_path or os.path.splitext(json_path)[0] + ".png")


def write_figure(result, plot_dir, stem):
    """Save the figure's JSON, then its PNG from that JSON (so the plot is always reproducible from it)."""
    png, js = figure_paths(plot_dir, stem)
    atomic_write_json(js, result)
    plot_figure_json(js, png)
    return png, js


# ======================================================================================
# Plotting helpers: mixup projections and curves  (mixup)
# ======================================================================================
# colour ramps from black (lam = 1/2) to full colour (lam = 0 or 1)
_SAME_CMAP = LinearSegmentedColormap.from_list("same", ["black", "tab:blue"])
_DIFF_CMAP = LinearSegmentedColormap.from_list("diff", ["black", "tab:orange"])


def load_snapshot(path):
    """A mixup snapshot .npz as a dict of arrays (no pickle)."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot: no such file {path}")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _theory_points(theory, scale):
    """Projected UFM optimum: same-class vertices and one lam-ordered curve per class pair."""
    import ana_utils
    classes = [int(c) for c in theory["classes"]]
    P, centre = ana_utils.mixup_projection(theory["W"], classes)
    pts = ana_utils.project(theory["features"], P, centre)
    same = theory["y_a"] == theory["y_b"]
    radius = np.median(np.linalg.norm(pts[same], axis=1))
    pts = pts * scale / radius
    verts = [pts[same & (theory["y_a"] == c)].mean(0) for c in classes]
    curves = []
    for i, c in enumerate(classes):
        for c2 in classes[i + 1:]:
            m = (theory["y_a"] == c) & (theory["y_b"] == c2)
            order = np.argsort(theory["lam"][m])
            curves.append(pts[m][order])
    return verts, curves


def plot_mixup_projection(ax, snap, title=None, theory=None):
    """Scatter the 2-D projection (theory.md section 5) of a snapshot's mixed features on ax:
    same-class pairs blue, different-class orange, darker as lam -> 1/2 (black at 1/2); classifier
    rows as labelled lines. `theory`, a UFM snapshot, is overlaid as grey curves scaled so its
    same-class vertices sit at the median radius of the same-class features."""
    import ana_utils
    classes = [int(c) for c in snap["classes"]]
    P, centre = ana_utils.mixup_projection(snap["W"], classes)
    pts = ana_utils.project(snap["features"], P, centre)
    same = snap["y_a"] == snap["y_b"]
    shade = 2 * np.abs(snap["lam"] - 0.5)
    ax.scatter(*pts[~same].T, c=shade[~same], cmap=_DIFF_CMAP, vmin=0, vmax=1, s=6, lw=0,
               label="different class")
    ax.scatter(*pts[same].T, c=shade[same], cmap=_SAME_CMAP, vmin=0, vmax=1, s=6, lw=0, label="same class")
    reach = 1.15 * np.max(np.linalg.norm(pts, axis=1)) if len(pts) else 1.0
    wp = ana_utils.project(np.asarray(snap["W"])[classes], P, centre)
    for c, w in zip(classes, wp):
        tip = w / (np.linalg.norm(w) + 1e-30) * reach
        ax.plot([0, tip[0]], [0, tip[1]], color="tab:green", lw=1)
        ax.annotate(f"w{c}", tip, color="tab:green", fontsize=8, ha="center", va="center")
    if theory is not None and same.any():
        verts, curves = _theory_points(theory, np.median(np.linalg.norm(pts[same], axis=1)))
        for curve in curves:
            ax.plot(*curve.T, color="0.45", ls="--", lw=1.2)
        ax.scatter(*np.array(verts).T, marker="x", color="0.3", s=40, zorder=3, label="UFM optimum")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_mixup_projection(snap, path, title=None, theory=None):
    """One projection figure (with legend) written to path."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    plot_mixup_projection(ax, snap, title, theory)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2, frameon=False)
    return save_figure(fig, path)


def save_mixup_grid(snaps, titles, path, theory=None):
    """Projections of several snapshots (e.g. over epochs) side by side, at most 4 per row."""
    ncol = min(4, len(snaps))
    nrow = -(-len(snaps) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, snap, t in zip(axes.flat, snaps, titles):
        plot_mixup_projection(ax, snap, t, theory)
    for ax in axes.flat[len(snaps):]:
        ax.axis("off")
    return save_figure(fig, path)


def save_mixup_curves(runs, path, kind):
    """Curves from each run's summary.csv (runs: {label: csv path}); kind 'loss' (the mixed
    training loss and the plain test loss) or 'accuracy' (clean train and test accuracy, test ECE)."""
    cols = {"loss": [("loss", "-", "train (mixed)"), ("test_loss", "--", "test")],
            "accuracy": [("train_acc", "-", "train"), ("test_acc", "--", "test"), ("test_ece", ":", "test ECE")]}[kind]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, csv_path) in enumerate(runs.items()):
        if not os.path.isfile(csv_path):
            raise UserError(f"run_dirs: no summary.csv at {csv_path}")
        rows = read_csv(csv_path)
        for col, ls, what in cols:
            if rows and col in rows[0]:
                ax.plot([r["epoch"] for r in rows], [r[col] for r in rows], ls=ls, color=f"C{i}",
                        label=f"{label}: {what}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(kind)
    if kind == "loss":
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


MIXUP_CLOSED_FORM_LOSSES = ("cross_entropy", "mse")


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


def ufm_overlay(cfg, K, classes, beta=0.01):
    """The free-feature optimum for a run's loss (cfg keys loss, mse_scale, smoothing,
    focal_gamma) with a fixed ETF: closed form for CE/MSE, direct optimisation otherwise."""
    import ana_utils
    import train_utils
    loss = cfg.get("loss", "cross_entropy")
    loss_fn = None if loss in MIXUP_CLOSED_FORM_LOSSES else train_utils.get_loss(
        loss, cfg.get("mse_scale", 1.0), cfg.get("smoothing", 0.1), cfg.get("focal_gamma", 2.0))
    return ana_utils.ufm_mixup_snapshot(loss, K, beta, classes, loss_fn=loss_fn,
                                        mse_scale=cfg.get("mse_scale", 1.0))


def _run_config(run_dir):
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"run_dir: {run_dir} has no config.json")
    return read_json(path)


def _run_label(cfg, key):
    return f"{cfg.get(key, '?')} s{cfg.get('seed', '?')}"


def cmd_mixup_projection(args):
    """Redraw the projection of one snapshot .npz."""
    snap = load_snapshot(args.snapshot)
    run_dir = os.path.dirname(os.path.abspath(args.snapshot))
    theory = None
    if not args.no_theory:
        cfg = read_json(os.path.join(run_dir, "config.json")) if os.path.isfile(
            os.path.join(run_dir, "config.json")) else {}
        theory = ufm_overlay(cfg, len(snap["b"]), snap["classes"], args.beta)
    out = args.out or os.path.splitext(args.snapshot)[0] + ".png"
    print(save_mixup_projection(snap, out, os.path.basename(args.snapshot), theory))


def cmd_mixup_grid(args):
    """Redraw the grid of a run's snapshots over epochs."""
    snaps = mixup_snapshots(args.run_dir)
    loaded = [load_snapshot(p) for _, p in snaps]
    theory = None if args.no_theory else ufm_overlay(
        _run_config(args.run_dir), len(loaded[0]["b"]), loaded[0]["classes"], args.beta)
    out = args.out or os.path.join(args.run_dir, "mixup_grid.png")
    print(save_mixup_grid(loaded, [f"epoch {e}" for e, _ in snaps], out, theory))


def _cmd_curves(args, kind):
    runs = {_run_label(_run_config(d), args.label): os.path.join(d, "summary.csv") for d in args.run_dirs}
    out = args.out or os.path.join(args.run_dirs[0], f"mixup_{kind}.png")
    print(save_mixup_curves(runs, out, kind))


def cmd_mixup_loss(args):
    """Loss curves (train and test) of one or more runs."""
    _cmd_curves(args, "loss")


def cmd_mixup_accuracy(args):
    """Accuracy (and ECE) curves of one or more runs."""
    _cmd_curves(args, "accuracy")


def cmd_mixup_compare(args):
    """Last-snapshot projections of several runs side by side, and their geometry summaries
    averaged over seeds (runs grouped by the config value `--label`). Summary numbers are
    averaged, never features of different networks."""
    snaps, titles, groups = [], [], {}
    for d in args.run_dirs:
        cfg = _run_config(d)
        epoch, path = mixup_snapshots(d)[-1]
        summary = read_json(mixup_snapshot_path(d, epoch, "json"))
        snaps.append(load_snapshot(path))
        titles.append(f"{_run_label(cfg, args.label)} e{epoch}")
        groups.setdefault(str(cfg.get(args.label)), []).append(summary)
    averaged = {}
    for label, summaries in groups.items():
        averaged[label] = {"n_runs": len(summaries)}
        for key in summaries[0]:
            vals = [s[key] for s in summaries if s.get(key) is not None]
            averaged[label][key] = float(np.mean(vals)) if vals else None
    out = args.out or "plots/mixup_compare.png"
    print(save_mixup_grid(snaps, titles, out))
    json_out = os.path.splitext(out)[0] + ".json"
    atomic_write_json(json_out, averaged)
    print(json_out)
    for label, s in averaged.items():
        print(f"{args.label}={label}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


def cmd_mixup_ufm(args):
    """Plot the free-feature (UFM) mixup optimum of a loss in the projection (no training)."""
    import ana_utils
    import train_utils
    if args.num_classes < 3:
        raise UserError(f"--num_classes: needs >= 3, got {args.num_classes}")
    if not args.beta > 0:
        raise UserError(f"--beta: must be > 0, got {args.beta}")
    classes = [0, 1, 2]
    if args.learned or args.loss not in MIXUP_CLOSED_FORM_LOSSES:
        snap = ana_utils.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes,
                                            loss_fn=train_utils.get_loss(args.loss), learned=args.learned,
                                            n_lam=11 if args.learned else 41)
    else:
        snap = ana_utils.ufm_mixup_snapshot(args.loss, args.num_classes, args.beta, classes)
    out = args.out or f"plots/mixup_ufm_{args.loss}{'_learned' if args.learned else ''}.png"
    title = f"UFM optimum, {args.loss}, K={args.num_classes}, beta={args.beta}"
    print(save_mixup_projection(snap, out, title))
    print(json.dumps(ana_utils.mixup_geometry_summary(snap)))


def add_mixup_commands(subparsers):
    """Register the mixup replot commands on the CLI's subparsers."""
    def add(name, fn, help_text):
        p = subparsers.add_parser(name, help=help_text, description=fn.__doc__)
        p.set_defaults(func=fn)
        p.add_argument("--out", default=None, help="output PNG (default: next to the input)")
        return p

    p = add("mixup-projection", cmd_mixup_projection, "projection of one snapshot .npz")
    p.add_argument("snapshot")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    p = add("mixup-grid", cmd_mixup_grid, "grid of a run's snapshots over epochs")
    p.add_argument("run_dir")
    p.add_argument("--no_theory", action="store_true", help="omit the UFM overlay")
    p.add_argument("--beta", type=float, default=0.01, help="UFM beta of the overlay")
    for name, fn, what in [("mixup-loss", cmd_mixup_loss, "loss curves"),
                           ("mixup-accuracy", cmd_mixup_accuracy, "accuracy and ECE curves"),
                           ("mixup-compare", cmd_mixup_compare, "runs side by side, summaries averaged over seeds")]:
        p = add(name, fn, what)
        p.add_argument("run_dirs", nargs="+")
        p.add_argument("--label", default="loss", help="config key that names (and groups) the runs")
    p = add("mixup-ufm", cmd_mixup_ufm, "free-feature mixup optimum of a loss")
    p.add_argument("--loss", default="cross_entropy")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--learned", action="store_true", help="learn the classifier instead of a fixed ETF")


# ======================================================================================
# CLI: python utils.py <command>
# ======================================================================================


def cmd_prepare(args):
    """Build (downloading if needed) and cache a training subset; print its path and per-class counts."""
    dataset = check_dataset(args.dataset)
    data = get_data(dataset, args.sizes, args.seed, args.data_dir, args.allow_test_fill)
    path, _ = subset_cache_path(dataset, data.sizes, args.seed, args.data_dir, args.allow_test_fill)
    counts = np.bincount(data.y_train.numpy(), minlength=data.num_classes).tolist()
    test_counts = np.bincount(data.y_test.numpy(), minlength=data.num_classes).tolist()
    print(path if dataset != "synthetic" else "(synthetic data is generated on the fly, not cached)")
    print(f"train per class: {counts}")
    print(f"test per class:  {test_counts}")


def cmd_replot_figure(args):
    """Redraw an imbalanced-NC figure (block, minority_l, minority_n, limit) from its JSON, without retraining."""
    if not os.path.isfile(args.json):
        raise UserError(f"replot-figure: no such file {args.json}")
    print(plot_figure_json(args.json, args.out))


def main(argv=None):
    parser = ArgumentParser(prog="python utils.py", description="Data preparation and replotting from saved results.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("prepare", help="build and cache an imbalanced training subset (run where there is internet)")
    p.add_argument("--dataset", required=True, help=" | ".join(DATASETS))
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="data")
    p.add_argument("--allow_test_fill", action="store_true", help="top up short classes from the test split")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("replot-figure", help="redraw a figure of block/minority_l/minority_n/limit_main from its JSON")
    p.add_argument("json", help="the JSON written beside the figure")
    p.add_argument("--out", default=None, help="output PNG (default: beside the JSON)")
    p.set_defaults(func=cmd_replot_figure)
    add_mixup_commands(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    # Run through the importable module: ana_utils and train_utils raise utils.UserError, which
    # is a different class from __main__.UserError.
    import utils
    sys.exit(utils.cli(utils.main) or 0)
