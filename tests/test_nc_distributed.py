"""nc_stream under torch.distributed: two gloo processes on 127.0.0.1, each with its shard, return the
single-process metrics (the state is reduced by all_reduce)."""
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ana_utils
import nc_stream

REL = 1e-10   # the bound; measured relative differences are below 2e-15


def _data():
    rng = np.random.default_rng(21)
    sizes = [90, 40, 12, 1]                        # imbalanced, a class of one sample (on rank 1 only)
    y = np.repeat(np.arange(4), sizes)
    H = rng.normal(size=(4, 6))[y] * 2 + rng.normal(size=(len(y), 6)) + 3.0
    return H, y, rng.normal(size=(4, 6)), rng.normal(size=4)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        H, y, W, b = _data()
        order = np.random.default_rng(3).permutation(len(y))
        first = order[:60][y[order[:60]] != 3]            # unequal shards; the one-sample class on rank 1
        shard = first if rank == 0 else np.setdiff1d(order, first)
        got = nc_stream.nc_metrics_stream(nc_stream.array_batches(H[shard], y[shard], 7), W, b)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"n": len(shard), "metrics": got}, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_return_single_process_metrics(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    H, y, W, b = _data()
    want = ana_utils.nc_metrics(H, y, W, b)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sum(r["n"] for r in results) == len(y) and min(r["n"] for r in results) < len(y) // 2
    for r in results:
        got = r["metrics"]
        assert list(got) == list(want)
        for k, v in want.items():
            assert not math.isnan(v) and abs(got[k] - v) <= REL * abs(v), (k, got[k], v)


def _nccl_worker(rank, world, port, out_dir):
    """One NCCL rank per GPU: CUDA batches and W (state on the GPU), then numpy batches with a CPU W (the
    state moves to the GPU for the reduction and back)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    try:
        H, y, W, b = _data()
        shard = np.arange(len(y))[rank::world]
        dev = torch.device("cuda", rank)
        on_gpu = nc_stream.array_batches(torch.tensor(H[shard], device=dev), torch.tensor(y[shard], device=dev), 7)
        got = [nc_stream.nc_metrics_stream(on_gpu, torch.tensor(W, device=dev), torch.tensor(b, device=dev)),
               nc_stream.nc_metrics_stream(nc_stream.array_batches(H[shard], y[shard], 7), W, b)]
        with open(os.path.join(out_dir, f"nccl{rank}.json"), "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs CUDA and NCCL")
def test_nccl_ranks_return_single_process_metrics(tmp_path):
    world = min(2, torch.cuda.device_count())
    mp.spawn(_nccl_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    want = ana_utils.nc_metrics(*_data())
    for r in range(world):
        for got in json.loads((tmp_path / f"nccl{r}.json").read_text()):
            for k, v in want.items():
                assert abs(got[k] - v) <= REL * abs(v), (k, got[k], v)
