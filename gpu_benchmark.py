"""The GPU path of benchmark.py (--device cuda, or --device cpu --tiny at toy sizes): train_run
against a bare loop in fp32, bf16, channels-last and torch.compile, the NC evaluation's share of a
run, and sweeps of ResNet18 points trained batched against one by one. Run it as
`python benchmark.py --device cuda`; it lives apart from the CPU benchmarks, one job per file."""
import contextlib
import dataclasses
import math
import tempfile

import numpy as np
import torch

import batched_training
import datasets
import devices
import losses
import networks
import result_files
import train_utils
import utils

# Each network trains on synthetic CIFAR-shaped data (the cost does not depend on the pixels) at
# its study's batch size (128), in variants: fp32, bf16 autocast (--amp), and bf16 with channels-last
# memory format or torch.compile. Every variant is timed as
#   bare:  forward + backward + optimizer step on the same device tensors, same objective, no
#          bookkeeping: the floor for train_run;
#   loop:  train_utils.train_run; its time per epoch is the difference of a (1 + k)-epoch and a
#          1-epoch run (both evaluated and checkpointed once), so set-up and compile cancel;
#   eval:  train_utils.evaluate (features of the train and test sets, every NC metric), whose
#          share of a run is given at the study's evaluation schedule.

GPU_NETWORKS = {
    # minority-collapse figures: ResNet18 (CIFAR form), 5 x 500 + 5 x 100 images, batch 128, 2000 epochs
    # evaluated at train_utils.default_eval_epochs(2000); the test split is CIFAR-10's 10 x 1000.
    "resnet18": dict(cfg=dict(network="resnet18", batch_size=128, lr=0.01, lam_h=1e-5, lam_w=5e-3, lam_b=1e-2,
                              weight_decay=5e-4),
                     sizes=[500] * 5 + [100] * 5, test_per_class=1000, mixup=False,
                     schedule=("figures: 2000 epochs, default_eval_epochs", 2000,
                               len(train_utils.default_eval_epochs(2000)))),
    # mixup study: WRN-40-10 and the ViT, batch 128, mixup (alpha 1), evaluated every epoch; CIFAR-10's
    # 5 : 1 train : test ratio at a tenth of its size.
    "wrn": dict(cfg=dict(network="wrn", batch_size=128, lr=0.1, weight_decay=1e-4),
                sizes=[500] * 10, test_per_class=100, mixup=True, schedule=("mixup study: every epoch", 1, 1)),
    "vit": dict(cfg=dict(network="vit", batch_size=128, lr=0.1, weight_decay=1e-4),
                sizes=[500] * 10, test_per_class=100, mixup=True, schedule=("mixup study: every epoch", 1, 1)),
}
# toy sizes (--tiny): the same code in seconds on a CPU
TINY_NETWORKS = {"resnet18": dict(width=4), "wrn": dict(width=1, depth=10), "vit": dict(width=16, depth=1)}
GPU_VARIANTS = {  # name: (bf16 autocast, channels-last, torch.compile)
    "fp32": (False, False, False), "bf16": (True, False, False),
    "bf16_cl": (True, True, False), "bf16_compile": (True, False, True),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare_model(model, channels_last, compile_model):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


@contextlib.contextmanager
def _train_run_builds(channels_last, compile_model):
    """train_run builds its network itself: give it the channels-last / compiled one for this variant."""
    original = train_utils.build_model
    train_utils.build_model = lambda *a, **kw: _prepare_model(original(*a, **kw), channels_last, compile_model)
    try:
        yield
    finally:
        train_utils.build_model = original


def _gpu_bench_setup(name, tiny):
    """The data and the training configuration of a network's GPU benchmark (toy sizes if tiny)."""
    spec = GPU_NETWORKS[name]
    sizes, image, test = ([6] * 4, 16, 2) if tiny else (spec["sizes"], 32, spec["test_per_class"])
    data = datasets.get_data("synthetic", sizes, seed=0,
                             synthetic={"image_size": image, "channels": 3, "test_per_class": test})
    return data, {**train_utils.TRAIN_DEFAULTS, "name": f"bench_{name}", **spec["cfg"],
                  **(dict(TINY_NETWORKS[name], batch_size=8) if tiny else {})}


def _epoch_seconds(train, k, reps=1):
    """Seconds per epoch of train(n_epochs), a fresh run evaluated once at its end: after a 1-epoch warm-up,
    the best (1 + k)-epoch time minus the best 1-epoch time of `reps` tries, over k, so set-up, compile and
    the evaluation cancel (NaN where the k epochs drown in their noise); and the last (1 + k)-epoch result."""
    train(1)
    (t_long, res), (t_short, _) = utils.timed(lambda: train(1 + k), reps), utils.timed(lambda: train(1), reps)
    return ((t_long - t_short) / k if t_long > t_short else float("nan")), res


def _bare_loop_and_evaluation(data, vdata, vcfg, device, channels_last, compile_model, objective, k):
    """(seconds per epoch of the bare loop, seconds of the NC evaluation): the bare loop has the same model,
    optimizer, objective and batches as train_run, one warm-up epoch, then k timed; the evaluation of the
    trained model is warmed up once (compile, cuDNN). The model is freed on return."""
    N, bs, amp = len(data.y_train), min(vcfg["batch_size"], len(data.y_train)), vcfg["amp"]
    utils.set_seed(0)
    model = _prepare_model(networks.build_model(vcfg["network"], data.num_classes, data.in_channels,
                                                width=vcfg["width"],
                                                image_size=data.x_train.shape[-1],
                                                depth=vcfg.get("depth")).to(device),
                           channels_last, compile_model)
    opt = train_utils.make_optimizer(model, vcfg)
    x, y = vdata.x_train.to(device), data.y_train.to(device)
    gen = torch.Generator().manual_seed(0)

    def epoch_bare():
        model.train()
        perm = torch.randperm(N, generator=gen).to(device)
        for i in range(0, N - (N % bs == 1), bs):
            idx = perm[i:i + bs]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                if objective is None:
                    loss, _ = train_utils.regularized_objective(model, x[idx], y[idx], vcfg, N, 1.0)
                else:
                    loss, _ = objective(model, x[idx], y[idx], 1, gen)
            loss.backward()
            opt.step()

    def k_epochs_bare():
        for _ in range(k):
            epoch_bare()
        _sync(device)

    def evaluation():
        train_utils.evaluate(model, data, x, vcfg, device)
        _sync(device)

    epoch_bare()
    bare = utils.timed(k_epochs_bare)[0] / k
    evaluation()
    t_eval, _ = utils.timed(evaluation, repeat=2)
    return bare, t_eval


def _train_run_epoch(label, vcfg, vdata, device, channels_last, compile_model, objective, k, tiny):
    """train_run's seconds per epoch: (1 + k) epochs minus 1 epoch (_epoch_seconds), the best of two runs
    (checkpoint writes and the like jitter); NaN, said on stdout, where the epochs drown in its set-up."""
    def run(n_epochs):
        with _train_run_builds(channels_last, compile_model):
            train_utils.train_run(dict(vcfg, epochs=n_epochs, eval_epochs=[n_epochs]), vdata, device,
                                  models_dir=tempfile.mkdtemp(), objective=objective)
        _sync(device)

    loop, _ = _epoch_seconds(run, k, reps=1 if tiny else 2)
    if math.isnan(loop):  # the k epochs drowned in the noise of the fixed costs
        print(f"{label}: train_run's epochs too short to time against its set-up; use more --epochs", flush=True)
    return loop


def _variant_figures(name, variant, spec, N, bs, bare, loop, t_eval):
    """The figures of one variant (images/s, train_run's overhead, the evaluation's cost against an epoch
    and its share of a run at the study's schedule), printed as one line."""
    label, E, n_evals = spec["schedule"]
    share = n_evals * t_eval / (E * loop + n_evals * t_eval)
    print(f"{name} {variant:13s} N={N} batch {bs}: bare {N / bare:8.0f} img/s, train_run {N / loop:8.0f} img/s "
          f"-> overhead {100 * (loop / bare - 1):+5.1f}%; evaluation {t_eval:.3f} s = {t_eval / loop:.2f} epochs, "
          f"{100 * share:.1f}% of a run ({label})", flush=True)
    return dict(bare_epoch_s=bare, loop_epoch_s=loop, eval_s=t_eval, images=N, batch_size=bs,
                bare_img_s=N / bare, loop_img_s=N / loop, overhead=loop / bare - 1,
                eval_per_epoch=t_eval / loop, eval_share=share, schedule=label)


def bench_gpu_network(name, device, variants, epochs=None, tiny=False):
    """One network: for each variant, images/s of the bare loop and of train_run, train_run's
    overhead, and the evaluation's cost against an epoch and its share of a run at the study's
    schedule. Returns {variant: figures}."""
    spec, k = GPU_NETWORKS[name], epochs or (1 if tiny else 5)
    data, cfg = _gpu_bench_setup(name, tiny)
    objective = train_utils.make_mixup_objective(losses.get_loss("cross_entropy"), 1.0) if spec["mixup"] else None
    N, bs = len(data.y_train), min(cfg["batch_size"], len(data.y_train))
    out = {}
    for variant in variants:
        amp, channels_last, compile_model = GPU_VARIANTS[variant]
        amp = amp and device.type == "cuda"  # as train_run: autocast on CUDA only
        vdata = (dataclasses.replace(data, x_train=data.x_train.contiguous(memory_format=torch.channels_last))
                 if channels_last else data)
        vcfg = dict(cfg, amp=amp)
        bare, t_eval = _bare_loop_and_evaluation(data, vdata, vcfg, device, channels_last, compile_model,
                                                 objective, k)
        loop = _train_run_epoch(f"{name} {variant}", vcfg, vdata, device, channels_last, compile_model,
                                objective, k, tiny)
        out[variant] = _variant_figures(name, variant, spec, N, bs, bare, loop, t_eval)
    base = out.get("fp32")
    if base:
        for variant, r in out.items():
            r["speedup_vs_fp32_bare"] = base["bare_epoch_s"] / r["bare_epoch_s"]
            r["speedup_vs_fp32_loop"] = base["loop_epoch_s"] / r["loop_epoch_s"]
        print(f"{name}: train_run speed against fp32 train_run: "
              + ", ".join(f"{v} {r['speedup_vs_fp32_loop']:.2f}x" for v, r in out.items()), flush=True)
    return out


def bench_gpu_batched_sweep(device, sweeps, epochs=None, tiny=False):
    """A sweep of M ResNet18 points (the minority figure's 5 x 500 + 5 x 100 images, batch 128, fp32,
    lambda varied) trained as one vmapped model (batched_training.train_batched) against one by one
    (train_run): the batch's time per epoch against M times one run's (_epoch_seconds, k = 2), and
    the largest |Z difference| of the sweep's first two points after the same 1 + k epochs."""
    k, (data, base) = epochs or (1 if tiny else 2), _gpu_bench_setup("resnet18", tiny)
    cfgs = [dict(base, name=f"sweep{i}", lam_h=base["lam_h"] * (1 + i / 2), lam_w=base["lam_w"] * (1 + i / 2),
                 epochs=1 + k, eval_epochs=[1 + k]) for i in range(max(sweeps))]

    def train(n, M=None):  # train_run of the first point (M None) or train_batched of the first M, n epochs
        group = [dict(c, epochs=n, eval_epochs=[n]) for c in cfgs[:M or 1]]
        return (batched_training.train_batched(group, data, device, tempfile.mkdtemp()) if M else
                [train_utils.train_run(group[0], data, device, tempfile.mkdtemp())])

    t_one, refs = _epoch_seconds(train, k)
    refs += [train_utils.train_run(c, data, device, tempfile.mkdtemp()) for c in cfgs[1:2]]
    z_max, out = max(np.abs(r["Z"]).max() for r in refs), {"one_epoch_s": t_one, "epochs": 1 + k}
    for M in sweeps:
        t_bat, res = _epoch_seconds(lambda n: train(n, M), k)
        dz = max(np.abs(np.subtract(a["Z"], b["Z"])).max() for a, b in zip(refs, res))
        out[f"M={M}"] = dict(batched_epoch_s=t_bat, speedup=M * t_one / t_bat, max_abs_dZ=dz, max_abs_Z=z_max)
        print(f"resnet18 sweep of {M} points, N={len(data.y_train)}, batch {base['batch_size']}, fp32: batched "
              f"{t_bat:.3f} s per epoch vs one by one {M} x {t_one:.3f} s -> {M * t_one / t_bat:.2f}x; largest |Z "
              f"difference| after {1 + k} epochs {dz:.1e} (max |Z| {z_max:.3g})", flush=True)
    return out


def gpu_main(args):
    """The GPU-path benchmarks on args.device; figures as JSON in args.json if given."""
    device = devices.get_device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda}")
    else:
        torch.set_num_threads(1)
        where = f"{device.type}, torch {torch.__version__}"
    print(f"GPU path on {where}{' (tiny sizes)' if args.tiny else ''}", flush=True)
    variants = args.variants or (list(GPU_VARIANTS) if device.type == "cuda" else ["fp32", "bf16_cl"])
    results = {"device": where, "tiny": args.tiny, "networks": {}}
    utils.check_positive_ints("--batched_sweep", args.batched_sweep)
    for name in args.networks:
        results["networks"][name] = bench_gpu_network(name, device, variants, epochs=args.epochs, tiny=args.tiny)
        if args.json:  # after each network, so a run cut short keeps what it measured
            result_files.atomic_write_json(args.json, results)
    if args.batched_sweep:  # the batched ResNet18 sweeps last
        results["batched_sweep"] = bench_gpu_batched_sweep(device, args.batched_sweep, epochs=args.epochs,
                                                           tiny=args.tiny)
        if args.json:
            result_files.atomic_write_json(args.json, results)
    return results
