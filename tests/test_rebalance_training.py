"""The re-balanced training losses (theory.md section 9) against the program's objective written out, the
oversampling weights against replicated data, and rebalance_main --quick against the program's thresholds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special
import torch

import rebalance_losses
import rebalance_program as rp
import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", rp.LOSS_NAMES)
def test_training_loss_is_the_programs_per_sample_loss(name):
    n = [40, 40, 12, 12, 5]
    loss = rp.loss_vectors(name, n, cb_beta=0.9, ldam_c=1.5, vs_gamma=0.5)
    spec = rp.training_loss(loss, n)
    rng = np.random.default_rng(0)
    logits, b, y = rng.standard_normal((30, 5)), rng.standard_normal(5), rng.integers(0, 5, 30)
    w, s, o, mu = (np.asarray(loss[k]) for k in ("weight", "scale", "offset", "margin"))
    V = s * (logits - b) + b + o - mu[y][:, None] * np.eye(5)[y]
    want = np.mean(w[y] * (scipy.special.logsumexp(V, axis=1) - V[np.arange(30), y]))
    got = rebalance_losses.rebalanced_cross_entropy(torch.tensor(logits), torch.tensor(y), spec, torch.tensor(b))
    assert float(got) == pytest.approx(want, rel=1e-13)


def test_oversampling_weights_give_the_replicated_objective():
    n, f = [6, 6, 3], [1, 1, 3]
    loss = rp.loss_vectors("ldam", n, oversample=f)
    cfg = dict(lam_h=0.01, lam_w=0.2, lam_b=0.05, loss=rp.training_loss(loss, n))
    torch.manual_seed(0)
    y = torch.tensor([0] * 6 + [1] * 6 + [2] * 3)
    h, W, b = (torch.randn(*shape, dtype=torch.float64) for shape in ((15, 4), (3, 4), (3,)))
    weighted = train_utils.regularized_terms(h @ W.T + b, h, W, b, y, cfg, 15, 1.0)[0]
    rep = torch.cat([torch.arange(12)] + [torch.arange(12, 15)] * 3)     # the minority's samples three times
    plain = dict(cfg, loss=dict(cfg["loss"], weight=loss["weight"], feature_weight=[1.0] * 3))
    replicated = train_utils.regularized_terms(h[rep] @ W.T + b, h[rep], W, b, y[rep], plain, 21, 1.0)[0]
    # regularized_terms computes in float32 (logits.float()): measured 5.5e-8 apart
    assert float(weighted) == pytest.approx(float(replicated), rel=1e-6)


def test_rebalance_main_quick_collapses_on_the_programs_side(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "rebalance_main.py"), "--quick", "--losses",
                        "class_balanced", "vector_scaling", "--oversample", "1", "3", "--factors", "0.5", "2",
                        "--batched"],
                       cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "plots" / "rebalance_synthetic_mlp_linear_os1-3_ka5_quick.json").read_text())
    assert [e["name"] for e in out["losses"]] == ["class_balanced", "vector_scaling", "oversample 1-3"]
    for e in out["losses"]:
        assert set(e["agree"]) == {"mlp_linear", "ufm"}
        assert all(all(a) for a in e["agree"].values()), e
    assert out["losses"][2]["threshold"] == pytest.approx(np.sqrt(60) / (500 + 300), rel=1e-12)
    assert all(p["distances"]["seli"]["Z"] >= 0 for p in out["points"])


@pytest.mark.parametrize("args,match", [(["--losses", "focal"], "--losses"), (["--loss", "ldam"], "--losses"),
                                        (["--factors", "0"], "--factors"), (["--oversample", "1"], "--oversample"),
                                        (["--cb_beta", "1.5"], "--cb_beta"), (["--ka", "9"], "--ka")])
def test_rebalance_main_bad_input(tmp_path, args, match):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "rebalance_main.py"), "--quick", *args], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, r.stderr


def test_rebalance_main_help():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "rebalance_main.py"), "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "--losses" in r.stdout and "--ldam_c" in r.stdout
