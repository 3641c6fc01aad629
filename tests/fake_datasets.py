"""Tiny datasets written in the exact on-disk formats torchvision reads (no download)."""
import os
import pickle
import struct

import numpy as np


def write_idx_dataset(root, folder, n_train_per_class, n_test_per_class, seed=0, K=10):
    """MNIST-style idx files in root/<folder>/raw (folder: MNIST or FashionMNIST).

    Pixel (0, 0) of every image holds its label * 20, so tests can check that labels and images
    stay paired."""
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, per_class in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        y = rng.permutation(np.repeat(np.arange(K), per_class)).astype(np.uint8)
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        x[:, 0, 0] = y * 20
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, len(y), 28, 28) + x.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, len(y)) + y.tobytes())
    return raw


def write_cifar10(root, n_train_per_class, n_test_per_class, seed=0):
    """CIFAR-10 python batches in root/cifar-10-batches-py (the md5 check must be bypassed).

    Red channel pixel (0, 0) holds label * 20."""
    base = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(base, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(labels):
        x = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        x[:, 0] = np.asarray(labels) * 20
        return {"data": x, "labels": list(map(int, labels)), "batch_label": "fake"}

    y = rng.permutation(np.repeat(np.arange(10), n_train_per_class))
    for i, part in enumerate(np.array_split(y, 5)):
        with open(os.path.join(base, f"data_batch_{i + 1}"), "wb") as f:
            pickle.dump(batch(part), f)
    with open(os.path.join(base, "test_batch"), "wb") as f:
        pickle.dump(batch(rng.permutation(np.repeat(np.arange(10), n_test_per_class))), f)
    with open(os.path.join(base, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
    return base
