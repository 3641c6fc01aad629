"""Benchmarks: each prints a ratio against a baseline measured in the same run.

    python benchmark.py            # everything (a few minutes on 2 cores)
    python benchmark.py --only subset nc_metrics
    python benchmark.py --device cuda --json gpu.json   # the GPU path: ResNet18, WRN-40-10, ViT, batched sweeps
    python benchmark.py --device cpu --tiny             # the same code at toy sizes (a test runs it)
    # the figure scripts against an older checkout, with two busy processes on the cores:
    git clone -q . /tmp/before && git -C /tmp/before checkout -q 76c9284
    python benchmark.py --only scripts batched --before /tmp/before --busy 2
"""
import argparse
import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import threadpoolctl
import torch

import ana_utils
import datasets
import gpu_benchmark
import nc_stream
import networks
import rebalance_benchmark
import train_utils
import ufm_program
import utils


def write_random_fashion_mnist(root, train_per_class, test_per_class):
    """Random 28x28 images in Fashion-MNIST's idx files (root/FashionMNIST/raw): the timing needs
    the real on-disk format and size, not the real pictures."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        y = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        for kind, header, body in (("images-idx3", struct.pack(">IIII", 0x803, len(y), 28, 28), images),
                                   ("labels-idx1", struct.pack(">II", 0x801, len(y)), y)):
            with open(os.path.join(raw, f"{split}-{kind}-ubyte"), "wb") as f:
                f.write(header + body.tobytes())


def bench_subset():
    """Build and cache an imbalanced Fashion-MNIST subset from a 60,000-image dataset, against the
    original approach: iterate the torchvision dataset one image at a time through a DataLoader."""
    import torchvision
    import torchvision.transforms as T
    root = tempfile.mkdtemp()
    write_random_fashion_mnist(root, 6000, 1000)
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
        return datasets.get_data("fashion_mnist", sizes, seed=0, data_dir=root)

    t_orig, _ = utils.timed(original)
    t_ours, data = utils.timed(ours)
    t_cached, _ = utils.timed(ours)
    print(f"subset build+cache (60k images -> {sum(sizes)}): {t_ours:.2f} s vs one-image DataLoader {t_orig:.2f} s "
          f"-> {t_orig / t_ours:.1f}x faster (reload from cache {t_cached:.2f} s)")
    return {"subset_s": t_ours, "dataloader_s": t_orig, "speedup": t_orig / t_ours}


def bench_training_loop():
    """train_run (MLP, CPU, one thread) against bare forward+backward+step on the same batches and
    objective. Both are warmed up, then timed alternately five times; the medians are compared, so
    load from other processes hits both sides alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = datasets.get_data("synthetic", [512] * 8, seed=0, synthetic={"image_size": 16, "noise": 1.0})
    cfg = dict(name="bench", network="mlp", width=256, epochs=20, lr=0.01, batch_size=128, lam_h=1e-5, lam_w=1e-3,
               lam_b=1e-2, eval_epochs=[20])
    full = {**train_utils.TRAIN_DEFAULTS, **cfg}
    N = len(data.y_train)

    def bare():
        utils.set_seed(0)
        model = networks.build_model("mlp", 8, 3, width=256, image_size=16)
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

    bare(), loop()
    times = {"bare": [], "loop": []}
    for _ in range(5):
        times["bare"].append(utils.timed(bare)[0])
        times["loop"].append(utils.timed(loop)[0])
    torch.set_num_threads(threads)
    t_bare, t_loop = float(np.median(times["bare"])), float(np.median(times["loop"]))
    print(f"training loop (MLP, {N} samples, {cfg['epochs']} epochs, CPU, 1 thread, median of 5): {t_loop:.2f} s "
          f"vs bare "
          f"forward+backward+step {t_bare:.2f} s -> overhead {100 * (t_loop / t_bare - 1):+.1f}% "
          f"(includes one NC evaluation, the CSV row and the checkpoint)")
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
        return np.trace(Sw @ np.linalg.pinv(C.T @ C / K, rcond=1e-6)) / K

    t_plain, ref = utils.timed(plain)
    t_ours, m = utils.timed(lambda: ana_utils.nc_metrics(H, y, W, np.zeros(K)), repeat=3)
    print(f"nc_metrics (N=41000, d=512, K=10, all metrics): {t_ours:.2f} s vs plain nc1 alone {t_plain:.2f} s "
          f"-> {t_plain / t_ours:.1f}x (nc1 {m['nc1']:.5f} vs {ref:.5f})")
    return {"nc_metrics_s": t_ours, "plain_s": t_plain}


def nc_stream_child(N, d, K, batch):
    """In a fresh process: nc_metrics_stream over N generated features against the float64 Gram X^T X
    accumulated over the same batches (the floor for Sigma_W); prints times and this process's peak RSS."""
    import resource

    torch.set_num_threads(1)
    centres = torch.randn(K, d, generator=torch.Generator().manual_seed(0)) * 2

    def batches():
        for i in range(0, N, batch):
            gen = torch.Generator().manual_seed(i)
            y = torch.randint(K, (min(batch, N - i),), generator=gen)
            yield centres[y] + torch.randn(len(y), d, generator=gen), y
    W = torch.randn(K, d, generator=torch.Generator().manual_seed(1))
    cpu = time.process_time()   # CPU time too: the wall clock of a shared machine swings by 2x between runs
    t_stream, m = utils.timed(lambda: nc_stream.nc_metrics_stream(batches, W, torch.zeros(K)))
    cpu_stream = time.process_time() - cpu
    peak_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def gram():
        G = torch.zeros(d, d, dtype=torch.float64)
        for H, _ in batches():
            H = H.double()
            G.addmm_(H.T, H)
        return G
    cpu = time.process_time()
    t_gram, _ = utils.timed(gram)
    cpu_gram = time.process_time() - cpu
    print(json.dumps({"stream_s": t_stream, "gram_s": t_gram, "stream_cpu_s": cpu_stream, "gram_cpu_s": cpu_gram,
                      "peak_bytes": peak_stream, "nc1": m["nc1"]}))


def bench_nc_stream(N=1_000_000, d=512, K=100, batch=4096):
    """nc_metrics_stream over N = 1e6 features of d = 512 generated batch by batch (one thread, in a
    fresh process): peak memory, and time against the float64 Gram accumulation over the same batches."""
    code = f"import benchmark; benchmark.nc_stream_child({N}, {d}, {K}, {batch})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"nc_metrics_stream (N={N}, d={d}, K={K}, batch {batch}, 1 thread): {r['stream_s']:.1f} s "
          f"({r['stream_cpu_s']:.1f} s CPU), Gram X^T X alone {r['gram_s']:.1f} s ({r['gram_cpu_s']:.1f} s CPU) -> "
          f"{r['stream_s'] / r['gram_s']:.2f}x the floor ({r['stream_cpu_s'] / r['gram_cpu_s']:.2f}x in CPU time); "
          f"peak memory {r['peak_bytes'] / 2**30:.2f} GiB (nc1 {r['nc1']:.5f})")
    return r


FOUNDATION_BENCHMARKS = [bench_subset, bench_training_loop, bench_nc_metrics, bench_nc_stream]


def bench_solver_agreement():
    """Fast solver against cvxpy (Clarabel) at K = 10 on both sides of the minority threshold."""
    n = [500] * 5 + [100] * 5
    worst = 0.0
    for lam in (0.9 / 300, 1.1 / 300):
        ref = ufm_program.solve_ufm_cvxpy(n, lam, 0.01)
        fast = ufm_program.solve_ufm_fast(n, lam, 0.01)
        worst = max(worst, abs(fast["objective"] - ref["objective"]) / abs(ref["objective"]))
    print(f"fast vs cvxpy objective at K=10 (lambda = 0.9 and 1.1 lambda*): worst relative gap {worst:.1e}")
    return {"relative_gap": worst}


def bench_solver_speed():
    """cvxpy (SCS to tight tolerance; Clarabel needs > 20 GB here) against the fast solver at K = 100,
    and the fast solver alone at K = 1000."""
    out = {}
    n = [500] * 50 + [100] * 50
    lam = 0.9 * 10 / sum(n)
    t_cvx, ref = utils.timed(lambda: ufm_program.solve_ufm_cvxpy(n, lam, 0.01, solver="SCS", eps_abs=1e-7, eps_rel=1e-7,
                                                                  max_iters=100000))
    t_fast, fast = utils.timed(lambda: ufm_program.solve_ufm_fast(n, lam, 0.01), repeat=3)
    gap = abs(fast["objective"] - ref["objective"]) / ref["objective"]
    print(f"UFM program at K=100: fast {t_fast:.2f} s vs cvxpy/SCS {t_cvx:.1f} s -> {t_cvx / t_fast:.0f}x faster "
          f"(objective gap {gap:.1e})")
    A = np.random.default_rng(0).normal(size=(1000, 1000))
    with threadpoolctl.threadpool_limits(1, "blas"):  # one thread, as the solver's BLAS
        t_eigh, _ = utils.timed(lambda: np.linalg.eigh(A.T @ A), repeat=3)
    # K = 1000 (no cvxpy; one certificate: an SVD, 2-3 eighs): 2 sizes; all distinct, uniform or ImageNet-LT-like
    for name, n in [("cluster", [500] * 500 + [100] * 500),
                    ("distinct", [int(x) for x in np.random.default_rng(0).integers(50, 1000, size=1000)]),
                    ("long_tailed", [round(1280 * (5 / 1280) ** (k / 999)) for k in range(1000)])]:
        t, r = utils.timed(lambda: ufm_program.solve_ufm_fast(n, 0.9 * 10 / sum(n), 0.01),
                           repeat=2 if name == "cluster" else 1)
        print(f"UFM program at K=1000, {name}, {len(set(n))} sizes: fast {t:.2f} s = {t / t_eigh:.1f} x one eigh "
              f"({t_eigh:.2f} s) ({r['status']}, accuracy {r['accuracy']:.0e}, {r['bm_iterations']} L-BFGS steps)")
        out.update({f"k1000_{name}_s": t, f"k1000_{name}_over_eigh": t / t_eigh})
    # small lambda sqrt(N) and large lambda_b (ISSUE_10): certified, and the time against K = 10 at 0.9 lambda*
    n = [1000] * 5 + [500] * 5
    t_k10, _ = utils.timed(lambda: ufm_program.solve_ufm_fast([500] * 5 + [100] * 5, 0.9 / 300, 0.01), repeat=5)
    for lam_sqrt_n, lam_b in [(1e-10, 0.01), (1e-6, 0.01), (1e-10, 10.0)]:
        t, r = utils.timed(lambda: ufm_program.solve_ufm_fast(n, lam_sqrt_n / np.sqrt(sum(n)), lam_b), repeat=3)
        print(f"UFM program, 5 x 1000 + 5 x 500, lambda sqrt(N) = {lam_sqrt_n:g}, lambda_b = {lam_b:g}: {r['status']}, "
              f"accuracy {r['accuracy']:.0e}, {t:.3f} s = {t / t_k10:.1f} x the K = 10 solve at 0.9 lambda*")
    return dict(out, k100_fast_s=t_fast, k100_cvxpy_s=t_cvx, k1000_eigh_s=t_eigh)


def bench_ufm_training_vs_theory():
    """The UFM network trained at the paper's minority-collapse scale (k_A = 5 classes of 500, 5 of
    100, N = 3000) at 0.9 and 1.1 lambda*, against the convex program."""
    sizes = [500] * 5 + [100] * 5
    data = datasets.get_data("synthetic", sizes, seed=0,
                             synthetic={"image_size": 2, "channels": 1, "test_per_class": 1})
    out = {}
    for factor in (0.9, 1.1):
        lam = factor / 300
        cfg = dict(name="ufm_bench", network="ufm", optimizer="lbfgs", lr=1.0, batch_size=3000, epochs=100,
                   eval_epochs=[100], lam_h=lam / 20, lam_w=5 * lam, lam_b=0.01, feat_dim=16)
        t, run = utils.timed(lambda: train_utils.train_run(cfg, data, torch.device("cpu"),
                                                           models_dir=tempfile.mkdtemp()))
        ref = ufm_program.solve_ufm_cvxpy(sizes, lam, 0.01)
        Z = np.array(run["Z"])
        rel = np.linalg.norm(Z - ref["Z"]) / np.linalg.norm(ref["Z"])
        spread_t = ana_utils.minority_spread(Z, range(5, 10))
        spread_c = ana_utils.minority_spread(ref["Z"], range(5, 10))
        print(f"trained UFM at {factor} lambda* ({t:.0f} s): |Z - Z*|/|Z*| = {rel:.1e}, objective "
              f"{run['final']['loss']:.7f} vs {ref['objective']:.7f}, nc1 {run['final']['nc1']:.1e}, "
              f"minority spread {spread_t:.2e} (theory {spread_c:.2e})")
        out[factor] = {"rel_Z": rel, "spread": spread_t, "spread_theory": spread_c}
    return out


THEORY_BENCHMARKS = [bench_solver_agreement, bench_solver_speed, bench_ufm_training_vs_theory,
                     rebalance_benchmark.bench_rebalance]


HERE = os.path.dirname(os.path.abspath(__file__))
OPT_ARGS = ["--cluster_s", "5", "5", "--sample_s", "500", "100", "--reg_z", "0.003"]  # K = 10
# (name, script and arguments); each gets fresh --models_dir/--plot_dir (opt_main: --out_dir/--plot_dir)
SCRIPT_COMMANDS = [
    ("utils --help", ["utils.py", "--help"]),
    ("opt_main K=10", ["opt_main.py"] + OPT_ARGS),
    ("opt_main K=10 --solver fast", ["opt_main.py"] + OPT_ARGS + ["--solver", "fast"]),  # no cvxpy import
    ("minority_n --ka 3 UFM", ["minority_n_main.py", "--ka", "3", "--network", "UFM"]),
    ("minority_l --ka 5 --quick", ["minority_l_main.py", "--ka", "5", "--quick"])]
COLLAPSED_REL = 0.05  # a trained point counts as collapsed below this relative minority spread


def run_script(checkout, argv, extra=()):
    """Run one script of `checkout` in fresh output folders; returns (wall s, peak RSS MB, figure
    JSON or None, CPU s). The child's own peak RSS and CPU time (user + system, which other
    processes' load changes far less than wall time) come from os.wait4."""
    out = tempfile.mkdtemp(prefix="bench_")
    dirs = (["--out_dir", out, "--plot_dir", out] if argv[0] == "opt_main.py" else
            [] if "--help" in argv else ["--models_dir", out, "--plot_dir", out])
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv, *extra, *dirs], cwd=checkout, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{argv} in {checkout} failed:\n{text[-2000:]}")
    figures = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".json") and f.startswith(argv[0][:-8])]
    figure = json.load(open(figures[0])) if figures else None
    return wall, usage.ru_maxrss / 1024, figure, usage.ru_utime + usage.ru_stime


def collapsed(figure, side=None):
    """Per point, whether the minority collapsed in the trained Z (or the convex program's: side
    "theory"): spread < COLLAPSED_REL ||Z||, ||Z|| floored at 5 % of the figure's largest."""
    zs = [p[side] if side else p for p in figure["points"]]
    scale = max(z["z_norm"] for z in zs)
    return [z["minority_spread"] < COLLAPSED_REL * max(z["z_norm"], 0.05 * scale, 1e-12) for z in zs]


@contextlib.contextmanager
def busy_processes(n):
    """n busy-looping processes (a shared node's other jobs) while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def compare_scripts(before, commands, extra=()):
    """Each command with the older checkout `before`, then with this one, back to back."""
    out = {}
    for name, argv in commands:
        t_old, rss_old, fig_old, cpu_old = run_script(before, argv)
        t_new, rss_new, fig_new, cpu_new = run_script(HERE, argv, extra)
        line = (f"{name}: {t_new:.1f} s ({cpu_new:.1f} s CPU, {rss_new:.0f} MB) vs before {t_old:.1f} s "
                f"({cpu_old:.1f} s "
                f"CPU, {rss_old:.0f} MB) -> {t_old / t_new:.1f}x faster ({cpu_old / cpu_new:.1f}x less CPU)")
        if fig_old is not None:
            v_old, v_new, theory = collapsed(fig_old), collapsed(fig_new), collapsed(fig_new, "theory")
            agree = [sum(a == t for a, t in zip(v, theory)) for v in (v_new, v_old)]
            dz = max(np.abs(np.array(a["Z"]) - np.array(b["Z"])).max() / max(np.abs(np.array(a["Z"])).max(), 1e-12)
                     for a, b in zip(fig_old["points"], fig_new["points"]))
            line += (f"; minority collapsed (spread < {COLLAPSED_REL} ||Z||) in the trained Z as in the program's at "
                     f"{agree[0]}/{len(theory)} points (before {agree[1]}/{len(theory)}), largest "
                     f"|Z - Z_before| / max|Z_before| {dz:.1e}")
        print(line, flush=True)
        out[name] = dict(s=t_new, before_s=t_old, cpu_s=cpu_new, before_cpu_s=cpu_old, rss_mb=rss_new,
                         before_rss_mb=rss_old)
    return out


def bench_scripts(before=None, busy=0):
    """Whole scripts, end to end, against an older checkout (--before) in the same run, optionally
    while `busy` other processes keep the cores busy."""
    if before is None:
        print("scripts: skipped (give --before DIR, a checkout of the older code)")
        return {}
    with busy_processes(busy):
        print(f"scripts against {before} with {busy} busy processes, load {os.getloadavg()[0]:.1f} at the start:")
        return compare_scripts(before, SCRIPT_COMMANDS)


def bench_batched(before=None, busy=0):
    """The quick 10-point minority_l sweep trained as one vmapped model (--batched, the --quick
    default) against the same sweep one point at a time (--no-batched), in this checkout."""
    with busy_processes(busy):
        argv = ["minority_l_main.py", "--ka", "5", "--quick"]
        t_one, _, fig_one, cpu_one = run_script(HERE, argv, ["--no-batched"])
        t_bat, _, fig_bat, cpu_bat = run_script(HERE, argv, ["--batched"])
        dz = max(np.abs(np.array(a["Z"]) - np.array(b["Z"])).max()
                 for a, b in zip(fig_one["points"], fig_bat["points"]))
        print(f"minority_l --ka 5 --quick --batched: {t_bat:.1f} s ({cpu_bat:.1f} s CPU) vs one by one {t_one:.1f} s "
              f"({cpu_one:.1f} s CPU) -> {t_one / t_bat:.1f}x faster, {cpu_one / cpu_bat:.1f}x less CPU (largest |Z "
              f"difference| {dz:.1e}, {busy} busy processes)", flush=True)
        return {"batched_s": t_bat, "one_by_one_s": t_one, "batched_cpu_s": cpu_bat, "one_by_one_cpu_s": cpu_one}


def bench_ufm_figures(before=None, busy=0):
    """Every UFM figure command of the README at the paper's scale, with its peak memory."""
    commands = [("block_main UFM", ["block_main.py", "--structure", "1", "--network", "UFM"]),
                ("minority_l UFM", ["minority_l_main.py", "--ka", "5", "--network", "UFM"]),
                ("minority_n UFM", ["minority_n_main.py", "--ka", "3", "--network", "UFM"]),
                ("limit_main UFM", ["limit_main.py", "--network", "UFM"])]
    with busy_processes(busy):
        if before is not None:
            return compare_scripts(before, commands)
        out = {}
        for name, argv in commands:
            t, rss, _, _ = run_script(HERE, argv)
            print(f"{name}: {t:.1f} s, peak RSS {rss:.0f} MB ({busy} busy processes)", flush=True)
            out[name] = {"s": t, "rss_mb": rss}
        return out


SPEED_BENCHMARKS = [bench_scripts, bench_batched, bench_ufm_figures]


def main(argv=None):
    benches = FOUNDATION_BENCHMARKS + THEORY_BENCHMARKS + SPEED_BENCHMARKS
    names = [b.__name__[len("bench_"):] for b in benches]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=names, help="run only these")
    parser.add_argument("--before", default=None,
                        help="a checkout of older code: `scripts` (and `ufm_figures`) run each command there too")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy-looping processes kept running during the speed benchmarks (default 0)")
    gpu = parser.add_argument_group("the GPU path (runs instead of the benchmarks above when --device is given)")
    gpu.add_argument("--device", default=None, help="cuda | cuda:N | cpu (cpu: only sensible with --tiny)")
    gpu.add_argument("--networks", nargs="*", choices=list(gpu_benchmark.GPU_NETWORKS),
                     default=list(gpu_benchmark.GPU_NETWORKS),
                     help="default: all; none given: none")
    gpu.add_argument("--batched_sweep", nargs="*", type=int, default=[4, 10], metavar="M",
                     help="ResNet18 sweeps of M points trained batched against one by one (default 4 10; none "
                          "given: none)")
    gpu.add_argument("--variants", nargs="+", choices=list(gpu_benchmark.GPU_VARIANTS), default=None,
                     help="default: all on CUDA; fp32 bf16_cl elsewhere (bf16 autocast is CUDA only)")
    gpu.add_argument("--epochs", type=int, default=None, help="timed epochs per measurement (5, sweeps 2; --tiny 1)")
    gpu.add_argument("--tiny", action="store_true", help="toy sizes: the same code in seconds")
    gpu.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.before is not None and not os.path.isfile(os.path.join(args.before, "opt_main.py")):
        sys.exit(f"error: --before {args.before}: no opt_main.py there; give a checkout of this repository")
    if args.device is not None:
        try:
            return gpu_benchmark.gpu_main(args)
        except utils.UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    for bench, name in zip(benches, names):
        if not args.only or name in args.only:
            bench(args.before, args.busy) if bench in SPEED_BENCHMARKS else bench()


if __name__ == "__main__":
    main()
