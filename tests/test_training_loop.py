"""The one training loop: the schedule, the data order, the history restore and the evaluated
epoch's CSV row and log line live once in train_utils and serve train_run and the batched runs."""
import re

import pytest
import torch

import batched_training
import datasets
import train_utils

CPU = torch.device("cpu")
CFG = dict(name="t", network="mlp", width=16, epochs=6, lr=0.05, batch_size=16, lam_h=1e-5, lam_w=5e-4,
           lam_b=1e-2, eval_epochs=[1, 3, 6], warm_epochs=2, warm_factor=0.1, lr_milestones=[4], lr_gamma=0.1)


def small_data():
    return datasets.get_data("synthetic", [17, 17, 7, 7], seed=0, synthetic={"image_size": 8, "noise": 3.0})


def test_schedule_and_warm_weight_per_epoch():
    cfg = {**train_utils.TRAIN_DEFAULTS, **CFG}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    got = [(train_utils.start_epoch(opt, cfg, e), opt.param_groups[0]["lr"]) for e in range(1, 7)]
    assert got == [(0.1, 0.05), (0.1, 0.05), (1.0, 0.05), (1.0, 0.05), (1.0, 0.05 * 0.1), (1.0, 0.05 * 0.1)]


@pytest.mark.parametrize("N,bs,n", [(48, 16, 48), (49, 16, 48), (1, 16, 1), (33, 32, 32), (16, 16, 16)])
def test_epoch_order_never_leaves_a_batch_of_one(N, bs, n):
    order = train_utils.epoch_order(N, bs, torch.Generator().manual_seed(0))
    assert len(order) == n and len(set(order.tolist())) == n
    assert N == 1 or len(order) % bs != 1
    assert torch.equal(order, torch.randperm(N, generator=torch.Generator().manual_seed(0))[:n])


def test_one_run_and_a_batch_use_the_same_schedule_and_log_one_line_per_evaluated_epoch(tmp_path, monkeypatch,
                                                                                           capsys):
    """With stderr not a terminal (a cluster job's log), a batched run logs one line per evaluated
    epoch as a run trained alone does, with the same fields; both loops ask start_epoch for every
    epoch's learning rate and warm weight."""
    data = small_data()  # N = 48: no batch of one; batch 16
    calls = []
    real = train_utils.start_epoch
    monkeypatch.setattr(train_utils, "start_epoch",
                        lambda opt, cfg, epoch: calls.append(epoch) or real(opt, cfg, epoch))
    cfgs = [dict(CFG, name=f"r{i}", lam_h=1e-5 * (1 + i), seed=i) for i in range(2)]
    capsys.readouterr()
    train_utils.train_run(cfgs[0], data, CPU, str(tmp_path / "alone"))
    alone = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    assert calls == list(range(1, 7))
    calls.clear()
    batched_training.train_batched(cfgs, data, CPU, str(tmp_path / "batch"))
    batch = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    assert calls == list(range(1, 7))  # one batched loop over the two runs
    assert [line.split(":")[0] for line in alone] == ["r0 epoch 1/6", "r0 epoch 3/6", "r0 epoch 6/6"]
    assert sorted(line.split(":")[0] for line in batch) == sorted(f"r{i} epoch {e}/6" for i in (0, 1)
                                                                  for e in (1, 3, 6))

    def fields(line):
        return re.findall(r" (\w+)=", line)
    assert {tuple(fields(line)) for line in batch} == {tuple(fields(alone[0]))}
    assert {"loss", "ce", "reg_h", "train_acc", "test_acc", "nc1"} <= set(fields(alone[0]))
