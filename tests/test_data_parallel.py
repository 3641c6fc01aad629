"""Data-parallel training (data_parallel.py through train_utils.train_run): two gloo ranks on 127.0.0.1 train a small
MLP without BatchNorm as the single process does (final weights and the CSV's NC metrics), rank 0 alone writing
each file; a killed run resumes, a finished one is reused, on every rank; what cannot be data-parallel is
refused in one line.

The ranks meet through a file store and pass a barrier before destroy_process_group (torch 2.4.1's gloo can hang
in destroy without it: tests/test_nc_distributed.py); a watchdog kills them and fails the test instead of hanging."""
import datetime
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import data_parallel
import result_files
import train_utils
from conftest import ROOT, TINY_CFG, dirs, kill_at, spawn_ranks, tiny_data

WATCHDOG_S = 300   # the two ranks' runs take about 10 s here; with both cores busy under a minute
# Measured: the 2-rank run (one thread per rank) against the single process (1 and 2 threads), largest
# differences: weights 1.2e-7 relative to the largest weight, CSV metrics 8.3e-7 relative (test_uniformity_riesz_var;
# the parts' losses and gradients are summed in another order, in float32). The bounds allow 12x that and more; a
# wrong step (each rank's loss not scaled by its part's share) moved the weights by 0.4 relative.
W_REL, CSV_REL = 1e-5, 1e-5
# the two runs: the regularised objective (theory.md section 2) with unequal parts (batches of 7: parts of 3
# and 4, the last batch of 2: parts of 1), and mixup with one coefficient per sample (the mixup objective's path)
CFGS = [dict(TINY_CFG, name="ddp", batch_size=7, epochs=4, eval_epochs=[2, 4]),
        dict(TINY_CFG, name="ddp_mix", batch_size=16, mixup=True, alpha=1.0, lam_per="sample", lam_h=0.0, lam_w=0.0,
             lam_b=0.0)]


def _no_batchnorm(build):
    """build_model with every BatchNorm replaced by the identity (the MLPs of networks.py all have BatchNorm)."""
    def build_without(*args, **kwargs):
        model = build(*args, **kwargs)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, torch.nn.Identity())
        return model
    return build_without


def _objective(cfg):
    return train_utils.make_mixup_objective(torch.nn.CrossEntropyLoss(reduction="none"), cfg["alpha"],
                                            mix_per=cfg["lam_per"]) if cfg.get("mixup") else None


def _train_both(models_dir):
    """Train CFGS in models_dir, then train them again (reused); returns (results, reused flags)."""
    data = tiny_data()
    results = [train_utils.train_run(c, data, torch.device("cpu"), models_dir, objective=_objective(c)) for c in CFGS]
    again = [train_utils.train_run(c, data, torch.device("cpu"), models_dir, objective=_objective(c))["reused"]
             for c in CFGS]
    return results, again


def _killed_and_resumed(models_dir):
    """CFGS[0] killed (Ctrl-C on every rank) at its epoch-4 evaluation, after the epoch-2 checkpoint, then run again:
    returns the resumed run's folder."""
    data = tiny_data()
    with pytest.raises(KeyboardInterrupt):
        train_utils.train_run(CFGS[0], data, torch.device("cpu"), models_dir, on_eval=kill_at(4))
    return train_utils.train_run(CFGS[0], data, torch.device("cpu"), models_dir)["run_dir"]


def _worker(rank, world, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "store"), rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        written, atomic_write = [], result_files.atomic_write
        result_files.atomic_write = lambda path, write: (written.append(path), atomic_write(path, write))[1]
        train_utils.build_model = _no_batchnorm(train_utils.build_model)
        results, again = _train_both(os.path.join(out_dir, "models"))
        resumed = _killed_and_resumed(os.path.join(out_dir, "resumed"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"run_dirs": [r["run_dir"] for r in results], "reused": [r["reused"] for r in results],
                       "again": again, "written": written, "final": [r["final"] for r in results],
                       "resumed": resumed}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _close(got, want, rel):
    return abs(got - want) <= rel * max(abs(want), 1e-3)


@pytest.mark.slow
def test_two_gloo_ranks_train_as_one_process_and_write_once(tmp_path, monkeypatch):
    spawn_ranks(_worker, 2, str(tmp_path), WATCHDOG_S)
    monkeypatch.setattr(train_utils, "build_model", _no_batchnorm(train_utils.build_model))
    want, again = _train_both(str(tmp_path / "single"))
    assert again == [True, True]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1]["written"] == [], "rank 1 wrote files"
    for r in ranks:
        assert r["reused"] == [False, False] and r["again"] == [True, True] and r["run_dirs"] == ranks[0]["run_dirs"]
    for run_dir, w, cfg in zip(ranks[0]["run_dirs"], want, CFGS):
        names = [os.path.basename(p) for p in ranks[0]["written"]
                 if os.path.dirname(p) == run_dir and not os.path.basename(p).startswith("lock.")]   # the lock's own
        evaluated = len(cfg["eval_epochs"])
        assert sorted(names) == sorted(["config.json"] + ["summary.csv", "checkpoint.pt"] * evaluated
                                       + ["model.pt", "final.json"]), names
        got_w = torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)
        want_w = torch.load(os.path.join(w["run_dir"], "model.pt"), weights_only=True)
        assert list(got_w) == list(want_w)
        scale = max(float(v.abs().max()) for v in want_w.values())
        worst = max(float((got_w[k] - want_w[k]).abs().max()) for k in want_w)
        assert worst <= W_REL * scale, (worst, scale)
        rows, want_rows = result_files.read_csv(os.path.join(run_dir, "summary.csv")), \
            result_files.read_csv(os.path.join(w["run_dir"], "summary.csv"))
        assert [r["epoch"] for r in rows] == [r["epoch"] for r in want_rows] == cfg["eval_epochs"]
        for got, exp in zip(rows, want_rows):
            assert list(got) == list(exp)
            for k, v in exp.items():
                if k == "seconds_per_epoch" or not isinstance(v, float) or math.isnan(v):
                    continue
                assert _close(got[k], v, CSV_REL), (k, got[k], v)
    assert json.dumps(ranks[1]["final"]) == json.dumps(ranks[0]["final"])   # every rank got rank 0's final rows
    resumed = torch.load(os.path.join(ranks[0]["resumed"], "model.pt"), weights_only=True)
    whole = torch.load(os.path.join(ranks[0]["run_dirs"][0], "model.pt"), weights_only=True)
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)   # resumed on 2 ranks = uninterrupted on 2 ranks


def test_one_process_is_the_identity():
    assert not data_parallel.active() and data_parallel.world() == 1 and data_parallel.is_rank0()
    assert data_parallel.batch_part(7) == (slice(0, 7), 1.0)
    t = torch.arange(5)
    assert data_parallel.shard(t) is t and data_parallel.all_sum(t) is t
    assert data_parallel.from_rank0(lambda: 3) == 3 and data_parallel.rank0_only(lambda x: x + 1, 1) == 2


def test_the_ranks_parts_cover_a_batch_once_and_their_shares_sum_to_one(monkeypatch):
    for w in (2, 3, 4):
        monkeypatch.setattr(data_parallel, "world", lambda w=w: w)
        for n in range(1, 10):
            parts = []
            for r in range(w):
                monkeypatch.setattr(data_parallel, "rank", lambda r=r: r)
                parts.append(data_parallel.batch_part(n))
            covered = [i for part, share in parts if share > 0 for i in range(n)[part]]
            assert covered == list(range(n)) and math.isclose(sum(share for _, share in parts), 1.0)
            assert all(share == len(range(n)[part]) / n or (share == 0 and part == slice(0, n))
                       for part, share in parts)
            assert max(len(range(n)[p]) for p, s in parts if s) - min(len(range(n)[p]) for p, s in parts if s) <= 1


@pytest.mark.parametrize("argv,named", [
    (["mixup_main.py", "--study", "--quick"], "--study under torchrun"),
    (["mixup_main.py", "--quick", "--dry_run"], "--dry_run under torchrun"),
    (["minority_l_main.py", "--quick", "--network", "UFM"], "--network UFM under torchrun"),
    (["minority_l_main.py", "--quick"], "--batched (--quick's default) under torchrun"),
    (["block_main.py", "--quick", "--structure", "1", "--batched"], "--batched under torchrun"),
])
def test_what_cannot_be_data_parallel_is_refused_in_one_line(tmp_path, argv, named):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable] + argv + dirs(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: " + named), p.stderr
    assert not (tmp_path / "models").exists()


def _torchrun(script_argv, tmp_path):
    """`torchrun --standalone` (127.0.0.1, a free port) of a script on 2 gloo ranks, killed with its ranks after
    WATCHDOG_S; returns its stdout's lines naming files under tmp_path (asserting exit status 0 and that rank 0 alone
    said the device, recipe, point and reuse lines: each once)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + script_argv
    p = subprocess.Popen(argv + dirs(tmp_path), cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        pytest.fail(f"torchrun still running after {WATCHDOG_S} s: killed")
    assert p.returncode == 0, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith(("device:", "recipe ", "[point ", "reused "))]
    assert said and len(said) == len(set(said)), err[-3000:]
    return [line for line in out.splitlines() if line.startswith(str(tmp_path))]


@pytest.mark.slow
def test_torchrun_trains_mixup_main_with_per_layer_nc_and_writes_once(tmp_path):
    """mixup_main.py on 2 gloo ranks, a BatchNorm MLP (per-rank batch statistics) with --nc_layers all: rank 0
    alone prints and writes."""
    printed = _torchrun(["mixup_main.py", "--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "24",
                         "--model", "mlp", "--width", "8", "--epochs", "3", "--snapshots", "3", "--snapshot_size", "60",
                         "--batch_size", "16", "--lr", "0.05", "--nc_layers", "all"], tmp_path)
    assert len(printed) == len(set(printed)) and any(line.endswith("summary.csv") for line in printed), printed
    (run_dir,) = list((tmp_path / "models").iterdir())
    rows = result_files.read_csv(str(run_dir / "summary.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    layer_cols = [k for k in rows[-1] if k.startswith("nc1_trace@")]
    assert layer_cols and all(0 < rows[-1][k] < math.inf for k in layer_cols)
    assert 0 <= rows[-1]["test_ncc_acc"] <= 1 and (run_dir / "final.json").exists()
    assert sorted(f.name for f in run_dir.iterdir() if f.name.startswith("mixup_e")) == ["mixup_e0003.json",
                                                                                       "mixup_e0003.npz"]


@pytest.mark.slow
def test_torchrun_trains_a_figure_sweep_one_point_at_a_time(tmp_path):
    """block_main.py --no_batched on 2 ranks: the point trained data-parallel, its record and the figure written
    once by rank 0 (the other rank ends after training), a second command reuses the point."""
    argv = ["block_main.py", "--structure", "1", "--quick", "--no_batched", "--epochs", "3"]
    printed = _torchrun(argv, tmp_path)
    assert sorted(os.path.splitext(p)[1] for p in printed) == [".json", ".png"], printed
    figure = json.loads(open(next(p for p in printed if p.endswith(".json"))).read())
    assert figure and len(list((tmp_path / "models" / "points").glob("*.json"))) == 1
    (run_dir,) = [d for d in (tmp_path / "models").iterdir() if d.name != "points"]
    rows = result_files.read_csv(str(run_dir / "summary.csv"))
    assert rows[-1]["epoch"] == 3 and 0 <= rows[-1]["test_acc"] <= 1 and not list(run_dir.glob("lock*"))
    assert _torchrun(argv, tmp_path) == printed   # reused: the same figure, nothing trained


def test_world_size_without_torchrun_is_one_error_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    p = subprocess.run([sys.executable, "mixup_main.py", "--quick"] + dirs(tmp_path), cwd=ROOT,
                       env=dict(env, WORLD_SIZE="2", OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: WORLD_SIZE=2 without torchrun's environment") and "RANK" in p.stderr
