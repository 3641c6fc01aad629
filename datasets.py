"""Datasets: the six datasets by name, imbalanced training subsets drawn per class and cached as
uint8 (data/subsets/), the balanced test split, and the class-size checks a script makes before
training."""
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import result_files
import utils
from utils import UserError

if TYPE_CHECKING:
    import torch


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
        torchvision_missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torchvision"
        state = ("is not installed" if torchvision_missing
                 else f"does not import with torch {torch.__version__} ({type(e).__name__}: {said})")
        raise UserError(f"dataset {name} needs torchvision, which {state}; install the torchvision matching "
                        f"torch {torch.__version__} ({pair}), or use --dataset synthetic or digits") from None


def _torchvision_split(name, train, data_dir):
    """(uint8 images N x C x H x W, int64 labels) of a torchvision dataset, downloading if possible."""
    import torch
    tvd = _torchvision_datasets(name)
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
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
    name = f"{dataset}_train_seed{seed}_n{short}{'_testfill' if allow_test_fill else ''}_{utils.config_key(desc)}.npz"
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
    utils.check_positive_ints("class sizes", sizes)
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
        result_files.ensure_writable_dir(os.path.dirname(path), "--data_dir")
        x, y, xt, yt, borrowed = build_subset(dataset, sizes, seed, data_dir, allow_test_fill)
        info = dict(desc, borrowed_from_test={str(k): v for k, v in borrowed.items()})
        result_files.atomic_savez(path, x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy(),
                     info=np.array(json.dumps(info)))
        arrays = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}
    if info.get("borrowed_from_test"):
        print(f"note: topped up from the test split: {info['borrowed_from_test']} (class: images)", file=sys.stderr)
    return Data(_normalise(arrays["x_train"], dataset), arrays["y_train"].long(),
                _normalise(arrays["x_test"], dataset), arrays["y_test"].long(),
                num_classes=K, dataset=dataset, sizes=sizes, key=os.path.basename(path)[:-4], info=info)


# Training images per class in the train / test split of each real dataset (mnist: the smallest class).
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500, "fashion_mnist": 6000, "mnist": 5421, "digits": 116}
TEST_PER_CLASS = {"cifar10": 1000, "cifar100": 100, "fashion_mnist": 1000, "mnist": 892}


def check_class_sizes(dataset, sizes, allow_test_fill, arg_name, network=None, fill_hint=True):
    """Fail before any training when a class asks for more images than the dataset holds
    (the UFM uses no images, so any size goes); fill_hint: name --allow_test_fill where it helps."""
    utils.check_positive_ints(arg_name, sizes)
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
