"""nc_stream: the streamed NC metrics equal ana_utils.nc_metrics on the same data, whatever the batch size."""
import math

import numpy as np
import pytest
import torch

import ana_utils
import nc_stream
from utils import UserError

REL = 1e-10   # the bound; the largest measured relative difference is 1.5e-15 (1 and 2 threads)


def _data(sizes, d, seed, bias=True, spread=3.0):
    rng = np.random.default_rng(seed)
    K = len(sizes)
    y = rng.permutation(np.repeat(np.arange(K), sizes))
    H = rng.normal(size=(K, d))[y] * spread + rng.normal(size=(len(y), d)) + 5.0   # off-centre: tests centring
    W = rng.normal(size=(K, d))
    b = rng.normal(size=K) if bias else None
    return H, y, W, b


def _assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        if math.isnan(want[k]) or math.isinf(want[k]):
            assert got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])), k
        else:
            assert abs(got[k] - want[k]) <= REL * max(abs(want[k]), 1e-300), (k, got[k], want[k])


@pytest.mark.parametrize("sizes,d,bias", [
    ([50, 50, 50, 50], 8, True),                # balanced, d > K
    ([200, 80, 10, 10, 3], 16, False),          # imbalanced, no bias
    ([40, 1, 25], 5, True),                     # a class of one sample
    ([30, 20, 10, 5, 5, 5, 2], 3, True),        # d < K - 1: Sigma_B rank-deficient
])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_stream_equals_nc_metrics(sizes, d, bias, batch_size):
    H, y, W, b = _data(sizes, d, seed=len(sizes) * 100 + d)
    want = ana_utils.nc_metrics(H, y, W, b)
    _assert_same(nc_stream.nc_metrics_stream(nc_stream.array_batches(H, y, batch_size), W, b), want)


def test_torch_float32_batches_and_weights():
    """Torch inputs (float32 features, int labels, torch W and b) give nc_metrics of the same tensors."""
    H, y, W, b = _data([60, 30, 9], 6, seed=5)
    Ht, yt = torch.tensor(H, dtype=torch.float32), torch.tensor(y)
    Wt, bt = torch.tensor(W, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    want = ana_utils.nc_metrics(Ht, yt, Wt, bt)
    _assert_same(nc_stream.nc_metrics_stream(nc_stream.array_batches(Ht, yt, 16), Wt, bt), want)


def test_empty_class_and_collapse_match():
    """A class without samples: NaN like nc_metrics; collapsed features (zero within-class) match too."""
    H, y, W, b = _data([20, 20, 20], 4, seed=7)
    keep = y != 1
    _assert_same(nc_stream.nc_metrics_stream(nc_stream.array_batches(H[keep], y[keep], 8), W, b),
                 ana_utils.nc_metrics(H[keep], y[keep], W, b))
    means, _ = ana_utils.class_means(H, y, 3)
    Hc = means[y]
    got = nc_stream.nc_metrics_stream(nc_stream.array_batches(Hc, y, 8), W, b)
    want = ana_utils.nc_metrics(Hc, y, W, b)
    for k in ("nc1", "nc1_weighted", "nc1_trace", "nc1_trace_weighted"):   # both rounding noise, measured < 1e-31
        assert abs(got[k]) < 1e-28 and abs(want[k]) < 1e-28, k
        got[k] = want[k]
    _assert_same(got, want)


def test_sums_add_across_shards():
    """The pass-1 state of the whole equals the sum of the halves' states (what all_reduce relies on)."""
    H, y, W, _ = _data([30, 12, 5], 4, seed=9)
    whole = nc_stream.class_sums(nc_stream.array_batches(H, y, 5), 3, 4, torch.device("cpu"))
    halves = [nc_stream.class_sums(nc_stream.array_batches(H[s], y[s], 5), 3, 4, torch.device("cpu"))
              for s in (slice(0, 20), slice(20, None))]
    for i in range(2):
        assert torch.allclose(whole[i], halves[0][i] + halves[1][i], rtol=1e-14, atol=0)


def test_batches_called_twice_and_streamed():
    """batches() is called once per pass, and no pass keeps the batches (a generator would be used up)."""
    H, y, W, b = _data([10, 10], 3, seed=11)
    calls = []

    def batches():
        calls.append(1)
        return ((H[i:i + 4], y[i:i + 4]) for i in range(0, 20, 4))
    nc_stream.nc_metrics_stream(batches, W, b)
    assert len(calls) == 2


def test_tie_constant_matches_ana_utils():
    assert nc_stream.NC4_TIE_RTOL == ana_utils.NC4_TIE_RTOL


@pytest.mark.parametrize("labels,msg", [([0, 3], "labels: [3] outside 0..2"), ([0.5, 1], "labels: must be integers"),
                                        ([-1, 0], "labels: [-1] outside")])
def test_bad_labels(labels, msg):
    H = np.zeros((2, 4))
    with pytest.raises(UserError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        nc_stream.nc_metrics_stream(lambda: iter([(H, np.array(labels))]), np.ones((3, 4)))


def test_bad_shapes():
    with pytest.raises(UserError, match="H of n x 4"):
        nc_stream.nc_metrics_stream(lambda: iter([(np.zeros((2, 5)), np.array([0, 1]))]), np.ones((3, 4)))
    with pytest.raises(UserError, match="K: 5 differs"):
        nc_stream.nc_metrics_stream(lambda: iter([]), np.ones((3, 4)), K=5)
    with pytest.raises(UserError, match="b: must hold K = 3"):
        nc_stream.nc_metrics_stream(lambda: iter([]), np.ones((3, 4)), b=np.ones(2))


def test_model_batches_match_extract_features():
    """Features streamed from a model give the metrics of ana_utils.extract_features's matrix."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.classifier = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.classifier(h), h
    net = Net().double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.arange(50) % 3
    H, _ = ana_utils.extract_features(net, x)
    W, b = net.classifier.weight.detach(), net.classifier.bias.detach()
    got = nc_stream.nc_metrics_stream(nc_stream.model_batches(net, x, y, batch_size=16), W, b)
    # extract_features returns float32 features: compare at float32 rounding
    want = ana_utils.nc_metrics(H, y, W, b)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
