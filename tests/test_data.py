"""Datasets, imbalanced subsets, cache and data errors (fake datasets in the real on-disk formats)."""
import os

import numpy as np
import pytest
import torch
import torchvision

import datasets
import devices
from fake_datasets import write_cifar10, write_idx_dataset
from utils import UserError

SIZES = [6, 6, 5, 5, 4, 4, 3, 3, 2, 2]


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Fake CIFAR batches cannot match the real md5 sums; skip only that check."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


def labels_match_pixels(x_uint8_first_pixel, y):
    return np.array_equal(np.asarray(x_uint8_first_pixel), np.asarray(y) * 20)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_datasets_load_subset_and_cache(tmp_path, name, folder):
    write_idx_dataset(tmp_path, folder, n_train_per_class=8, n_test_per_class=3)
    data = datasets.get_data(name, SIZES, seed=1, data_dir=str(tmp_path))
    side = 32 if name == "fashion_mnist" else 28  # Fashion-MNIST is resized as in the paper
    assert data.x_train.shape == (sum(SIZES), 1, side, side) and data.x_train.dtype == torch.float32
    assert np.bincount(data.y_train.numpy(), minlength=10).tolist() == SIZES
    assert np.bincount(data.y_test.numpy()).tolist() == [3] * 10  # balanced test split
    path, _ = datasets.subset_cache_path(name, SIZES, 1, str(tmp_path))
    assert os.path.exists(path)
    with np.load(path) as f:  # cached as uint8; images stay paired with their labels
        assert labels_match_pixels(f["x_train"][:, 0, 0, 0], f["y_train"])
    # the cache is used: the raw files are no longer needed
    for fn in os.listdir(os.path.join(tmp_path, folder, "raw")):
        os.remove(os.path.join(tmp_path, folder, "raw", fn))
    again = datasets.get_data(name, SIZES, seed=1, data_dir=str(tmp_path))
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_train, data.y_train)


def test_cifar10_batches(tmp_path, no_cifar_md5):
    write_cifar10(tmp_path, n_train_per_class=10, n_test_per_class=4)
    data = datasets.get_data("cifar10", SIZES, seed=0, data_dir=str(tmp_path))
    assert data.x_train.shape == (sum(SIZES), 3, 32, 32) and data.in_channels == 3
    path, _ = datasets.subset_cache_path("cifar10", SIZES, 0, str(tmp_path))
    with np.load(path) as f:
        assert labels_match_pixels(f["x_train"][:, 0, 0, 0], f["y_train"])
        assert labels_match_pixels(f["x_test"][:, 0, 0, 0], f["y_test"])
    # per-channel normalisation with the CIFAR-10 constants
    mean0, std0 = 0.4914, 0.2023
    raw = torch.as_tensor(np.load(path)["x_train"]).float() / 255
    assert torch.allclose(data.x_train[:, 0], (raw[:, 0] - mean0) / std0, atol=1e-5)


def test_seeds_and_cache_names(tmp_path):
    write_idx_dataset(tmp_path, "MNIST", 8, 2)
    a = datasets.get_data("mnist", SIZES, seed=0, data_dir=str(tmp_path))
    b = datasets.get_data("mnist", SIZES, seed=0, data_dir=str(tmp_path))
    c = datasets.get_data("mnist", SIZES, seed=5, data_dir=str(tmp_path))
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    names = {datasets.subset_cache_path("mnist", s, seed, "d", fill)[0]
             for s in (SIZES, SIZES[::-1]) for seed in (0, 1) for fill in (False, True)}
    assert len(names) == 8  # sizes, seed and the test-fill flag all change the name
    assert "mnist_train_seed1" in datasets.subset_cache_path("mnist", SIZES, 1, "d")[0]
    assert a.key != c.key


def test_class_larger_than_split_is_an_error_unless_test_fill(tmp_path):
    write_idx_dataset(tmp_path, "MNIST", 5, 4)
    sizes = [5] * 9 + [7]
    with pytest.raises(UserError, match="class 9 asks for 7 .* at most 5"):
        datasets.get_data("mnist", sizes, data_dir=str(tmp_path))
    data = datasets.get_data("mnist", sizes, data_dir=str(tmp_path), allow_test_fill=True)
    assert np.bincount(data.y_train.numpy()).tolist() == sizes
    assert np.bincount(data.y_test.numpy()).tolist() == [4] * 9 + [2]  # borrowed images left the test split
    assert data.info["borrowed_from_test"] == {"9": 2}


def test_synthetic_and_digits_need_no_download(tmp_path):
    s = datasets.get_data("synthetic", [7, 3, 2], seed=0, synthetic={"image_size": 8, "channels": 1})
    assert s.x_train.shape == (12, 1, 8, 8) and s.num_classes == 3
    again = datasets.get_data("synthetic", [7, 3, 2], seed=0, synthetic={"image_size": 8, "channels": 1})
    assert torch.equal(s.x_train, again.x_train)
    d = datasets.get_data("digits", [100] + [20] * 9, seed=0, data_dir=str(tmp_path))
    assert d.x_train.shape == (280, 1, 8, 8) and abs(float(d.x_train.mean())) < 1.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset="imagenet", sizes=[1, 1]), "--dataset imagenet: unknown dataset"),
    (dict(dataset="digits", sizes=[5, 5]), "class sizes: 2 given; digits has 10"),
    (dict(dataset="digits", sizes=[5] * 9 + [0]), "class sizes: 0 is not allowed"),
    (dict(dataset="synthetic", sizes=[5]), "at least 2"),
])
def test_bad_data_arguments(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        datasets.get_data(data_dir=str(tmp_path), **kwargs)


def test_missing_dataset_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserError, match=r"MNIST/raw/.*utils.py prepare"):
        datasets.get_data("mnist", [1] * 10, data_dir=str(tmp_path))


def test_corrupt_cache_is_reported_and_kept(tmp_path):
    path, _ = datasets.subset_cache_path("digits", [10] * 10, 0, str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"not an npz")
    with pytest.raises(UserError, match="cached subset .* unreadable"):
        datasets.get_data("digits", [10] * 10, data_dir=str(tmp_path))
    assert open(path, "rb").read() == b"not an npz"


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="--data_dir"):
        datasets.get_data("digits", [10] * 10, data_dir=str(blocker / "sub"))


def test_devices():
    assert devices.get_device("cpu").type == "cpu"
    assert devices.get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device tpu"):
        devices.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            devices.get_device("cuda:0")
