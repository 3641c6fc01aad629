"""Benchmarks: each prints a ratio against a baseline measured in the same run.

    python benchmark.py            # everything (a few minutes on 2 cores)
    python benchmark.py --only subset nc_metrics
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

import ana_utils
import train_utils
import utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))


def timed(fn, repeat=1):
    """Best wall time of `repeat` calls, and the last result."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out

# ======================================================================================
# Foundation benchmarks
# ======================================================================================


def bench_subset():
    """Build and cache an imbalanced Fashion-MNIST subset from a 60,000-image dataset, against the
    original approach: iterate the torchvision dataset one image at a time through a DataLoader."""
    import torchvision
    import torchvision.transforms as T
    from fake_datasets import write_idx_dataset
    root = tempfile.mkdtemp()
    write_idx_dataset(root, "FashionMNIST", 6000, 1000)
    sizes = [5000] * 4 + [4000] * 3 + [3000] * 3

    def original():
        tf = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize((0.2860,), (0.3530,))])
        ds = torchvision.datasets.FashionMNIST(root, train=True, transform=tf)
        need, xs, ys = list(sizes), [], []
        for x, y in torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True):
            if need[y.item()] > 0:
                need[y.item()] -= 1
                xs.append(x)
                ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def ours():
        return utils.get_data("fashion_mnist", sizes, seed=0, data_dir=root)

    t_orig, _ = timed(original)
    t_ours, data = timed(ours)
    t_cached, _ = timed(ours)
    print(f"subset build+cache (60k images -> {sum(sizes)}): {t_ours:.2f} s vs one-image DataLoader {t_orig:.2f} s "
          f"-> {t_orig / t_ours:.1f}x faster (reload from cache {t_cached:.2f} s)")
    return {"subset_s": t_ours, "dataloader_s": t_orig, "speedup": t_orig / t_ours}


def bench_training_loop():
    """train_run (MLP, CPU) against bare forward+backward+step on the same batches and objective."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = utils.get_data("synthetic", [512] * 8, seed=0, synthetic={"image_size": 16, "noise": 1.0})
    cfg = dict(name="bench", network="mlp", width=256, epochs=10, lr=0.01, batch_size=128, lam_h=1e-5, lam_w=1e-3,
               lam_b=1e-2, eval_epochs=[10])
    full = {**train_utils.TRAIN_DEFAULTS, **cfg}
    N = len(data.y_train)

    def bare():
        utils.set_seed(0)
        model = train_utils.build_model("mlp", 8, 3, width=256, image_size=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = data.x_train, data.y_train
        gen = torch.Generator().manual_seed(0)
        for _ in range(cfg["epochs"]):
            perm = torch.randperm(N, generator=gen)
            for i in range(0, N, 128):
                idx = perm[i:i + 128]
                opt.zero_grad(set_to_none=True)
                loss, _ = train_utils.regularized_objective(model, x[idx], y[idx], full, N, 1.0)
                loss.backward()
                opt.step()

    def loop():
        train_utils.train_run(cfg, data, torch.device("cpu"), models_dir=tempfile.mkdtemp())

    t_bare, _ = timed(bare, repeat=2)
    t_loop, _ = timed(loop, repeat=2)
    print(f"training loop (MLP, {N} samples, 10 epochs, CPU): {t_loop:.2f} s vs bare forward+backward+step "
          f"{t_bare:.2f} s -> overhead {100 * (t_loop / t_bare - 1):+.1f}% (includes one NC evaluation and checkpoint)")
    return {"loop_s": t_loop, "bare_s": t_bare, "overhead": t_loop / t_bare - 1}


def bench_nc_metrics():
    """nc_metrics at N = 41,000, d = 512, K = 10 against the plain computation (explicit d x d
    covariances and pseudo-inverses)."""
    rng = np.random.default_rng(0)
    K, d = 10, 512
    y = np.repeat(np.arange(K), [5000] * 4 + [4000] * 3 + [3000] * 3)
    H = (rng.normal(size=(K, d))[y] + 0.5 * rng.normal(size=(len(y), d))).astype(np.float32)
    W = rng.normal(size=(K, d)).astype(np.float32)

    def plain():
        Hd = H.astype(np.float64)
        means = np.stack([Hd[y == k].mean(0) for k in range(K)])
        R = Hd - means[y]
        Sw = R.T @ R / len(y)
        C = means - means.mean(0)
        Sb = C.T @ C / K
        return np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-6)) / K

    t_plain, ref = timed(plain)
    t_ours, m = timed(lambda: ana_utils.nc_metrics(H, y, W, np.zeros(K)), repeat=3)
    print(f"nc_metrics (N=41000, d=512, K=10, all metrics): {t_ours:.2f} s vs plain nc1 alone {t_plain:.2f} s "
          f"-> {t_plain / t_ours:.1f}x (nc1 {m['nc1']:.5f} vs {ref:.5f})")
    return {"nc_metrics_s": t_ours, "plain_s": t_plain}


FOUNDATION_BENCHMARKS = [bench_subset, bench_training_loop, bench_nc_metrics]

# ======================================================================================
# Theory-engine benchmarks
# ======================================================================================


# ======================================================================================
# Entry point
# ======================================================================================


def main(argv=None):
    benches = FOUNDATION_BENCHMARKS
    names = [b.__name__[len("bench_"):] for b in benches]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=names, help="run only these")
    args = parser.parse_args(argv)
    for bench, name in zip(benches, names):
        if not args.only or name in args.only:
            bench()


if __name__ == "__main__":
    main()
