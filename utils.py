"""Shared plumbing: errors, seeds, devices, datasets and cached subsets, result files,
plotting helpers, and the `python utils.py <command>` CLI."""
import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

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


def get_device(spec="auto"):
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    spec = str(spec).lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: MPS is not available on this machine; use auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine; use auto or cpu")
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


def _torchvision_split(name, train, data_dir):
    """(uint8 images N x C x H x W, int64 labels) of a torchvision dataset, downloading if possible."""
    import torchvision.datasets as tvd
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
# Plotting helpers: Z heat-maps and figure grids  (imbalanced-NC figures)
# ======================================================================================


# ======================================================================================
# Plotting helpers: mixup projections and curves  (mixup)
# ======================================================================================
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

# colour ramps from black (lam = 1/2) to full colour (lam = 0 or 1)
_SAME_CMAP = LinearSegmentedColormap.from_list("same", ["black", "tab:blue"])
_DIFF_CMAP = LinearSegmentedColormap.from_list("diff", ["black", "tab:orange"])


def load_snapshot(path):
    """A mixup snapshot .npz as a dict of arrays (no pickle)."""
    if not os.path.isfile(path):
        raise UserError(f"snapshot: no such file {path}")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _save_fig(fig, path):
    """Atomic PNG write."""
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)
    return path


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
    return _save_fig(fig, path)


def save_mixup_grid(snaps, titles, path, theory=None):
    """Projections of several snapshots (e.g. over epochs) side by side, at most 4 per row."""
    ncol = min(4, len(snaps))
    nrow = -(-len(snaps) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, snap, t in zip(axes.flat, snaps, titles):
        plot_mixup_projection(ax, snap, t, theory)
    for ax in axes.flat[len(snaps):]:
        ax.axis("off")
    return _save_fig(fig, path)


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
    return _save_fig(fig, path)


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
    import ana_utils      # imported here: ana_utils imports utils
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python utils.py", description="Data preparation and replotting from saved results.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    p = sub.add_parser("prepare", help="build and cache an imbalanced training subset (run where there is internet)")
    p.add_argument("--dataset", required=True, help=" | ".join(DATASETS))
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="training images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="data")
    p.add_argument("--allow_test_fill", action="store_true", help="top up short classes from the test split")
    p.set_defaults(func=cmd_prepare)
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
