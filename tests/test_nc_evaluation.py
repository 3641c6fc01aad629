"""nc_stream's evaluation row (train_utils.evaluate): streamed from the model, equal to the in-memory metrics
of the extracted features; class-size groups; the feature cache between the two passes."""
import numpy as np
import pytest
import torch

import ana_utils
import figure_points
import figure_theory
import nc_stream
import result_files
import theory_formulas
import ufm_program


class Net(torch.nn.Module):
    def __init__(self, d_in=6, d=5, K=4):
        super().__init__()
        self.body, self.classifier = torch.nn.Linear(d_in, d), torch.nn.Linear(d, K)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.tanh(self.body(x))
        return self.classifier(h), h


def _setup(sizes=(40, 40, 12, 12), seed=0):
    torch.manual_seed(seed)
    net = Net(K=len(sizes))
    y = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(len(y), 6) + y[:, None].float()
    y_test = torch.arange(len(sizes)).repeat(15)
    x_test = torch.randn(len(y_test), 6) + y_test[:, None].float()
    return net, (x, y), (x_test, y_test)


def test_row_equals_in_memory_metrics():
    net, (x, y), (xt, yt) = _setup()
    W, b = net.classifier.weight.detach(), net.classifier.bias.detach()
    row, stats = nc_stream.evaluation_metrics(net, W, b, (x, y), (xt, yt), sizes=[40, 40, 12, 12], batch_size=7)
    H, logits = ana_utils.extract_features(net, x)
    Ht, logits_t = ana_utils.extract_features(net, xt)
    for prefix, feats, labels in (("", H, y), ("test_", Ht, yt)):
        for k, v in ana_utils.nc_metrics(feats, labels, W, b).items():
            if not (prefix and k == "nc2_equinorm_classifier"):
                assert row[prefix + k] == pytest.approx(v, rel=1e-10), prefix + k   # measured <= 1e-14
    assert row["train_acc"] == np.mean((logits.argmax(1) == y).numpy())
    assert row["test_acc"] == np.mean((logits_t.argmax(1) == yt).numpy())
    assert row["test_acc_c2"] == np.mean((logits_t.argmax(1) == yt)[yt == 2].numpy())
    means, _ = ana_utils.class_means(H, y, 4)
    ncc = np.argmin(((Ht.double().numpy()[:, None, :] - means[None]) ** 2).sum(2), axis=1)
    assert row["test_ncc_acc"] == pytest.approx(np.mean(ncc == yt.numpy()), abs=1e-15)
    assert row["test_clf_ncc_agreement"] == pytest.approx(np.mean(ncc == logits_t.argmax(1).numpy()), abs=1e-15)
    assert np.allclose(stats["means"], means, rtol=1e-12, atol=1e-14)
    assert "test_w_equinorm" not in row and "w_equinorm" in row
    # the groups: majority (classes 0, 1) and minority (2, 3), with brute-force accuracies
    correct = (logits.argmax(1) == y).numpy()
    assert row["acc_minority"] == pytest.approx(correct[y.numpy() >= 2].mean(), abs=1e-15)
    # the groups' trace ratios average (weighted by size) to nc1_trace_weighted
    n = np.array([80, 24])
    combined = (n[0] * row["nc1_trace_majority"] + n[1] * row["nc1_trace_minority"]) / n.sum()
    assert combined == pytest.approx(row["nc1_trace_weighted"], rel=1e-12)


@pytest.mark.parametrize("sizes,want", [
    ([5, 5, 5], {}),
    ([5, 5, 3, 3], {"majority": [0, 1], "minority": [2, 3]}),
    ([3, 5, 4, 5, 3], {"head": [1, 3], "medium": [2], "tail": [0, 4]}),
    (list(range(9, 0, -1)), {"head": [0, 1, 2], "medium": [3, 4, 5], "tail": [6, 7, 8]}),
    ([9, 9, 9, 9, 9, 9, 9, 3, 2, 1], {"head": list(range(7)), "tail": [7, 8, 9]}),   # medium empty: left out
])
def test_size_groups(sizes, want):
    assert nc_stream.size_groups(sizes) == want


def test_feature_cache_saves_the_second_forward_pass():
    net, (x, y), _ = _setup()
    W = net.classifier.weight.detach()
    for cache_bytes, passes in ((2**20, 1), (0, 2), (200, 2)):    # 200 bytes: too small, nothing kept
        net.calls = 0
        got = nc_stream.nc_metrics_stream(nc_stream.model_batches(net, x, y, 10, cache_bytes), W)
        assert net.calls == passes * 11, cache_bytes
        assert got["nc1"] == pytest.approx(ana_utils.nc_metrics(ana_utils.extract_features(net, x)[0], y, W)["nc1"],
                                           rel=1e-10)


def test_ufm_run_reaches_the_convex_programs_z(tmp_path):
    """A UFM trained to its optimum (L-BFGS) ends at the convex program's Z: z_theory_distance in every
    evaluated row, 1.1e-6 at the end (measured); the optimum above the minority's threshold (lambda 0.05 >
    sqrt(6)/72 = 0.034: collapsed minority) is far from the one below it."""
    import datasets
    import train_utils
    sizes = [30, 30, 6, 6]
    lam_h, lam_w = theory_formulas.split_lambda(0.01)
    cfg = figure_points.ufm_train_config(dict(name="u", lam_h=lam_h, lam_w=lam_w, lam_b=0.01, seed=0), 4, sum(sizes),
                                         40)
    data = datasets.get_data("synthetic", sizes, seed=0, data_dir=str(tmp_path / "d"),
                             synthetic={"image_size": 4, "channels": 1, "noise": 1.0})
    res = train_utils.train_run(cfg, data, torch.device("cpu"), str(tmp_path / "m"))
    rows = result_files.read_csv(f"{res['run_dir']}/summary.csv")
    assert all("z_theory_distance" in r for r in rows)
    assert rows[-1]["z_theory_distance"] < 1e-4
    collapsed = ufm_program.solve_ufm_fast(sizes, 0.05, 0.01)["Z"]
    assert figure_theory.z_theory_distance(collapsed, sizes, 0.01, 0.01) > 0.1
    assert rows[-1]["z_theory_distance"] == pytest.approx(figure_theory.z_theory_distance(
        np.array(res["Z"]), sizes, 0.01, 0.01), abs=1e-12)
    assert np.isnan(figure_theory.z_theory_distance(np.zeros((4, 4)), sizes, 0.01, 0.01))
