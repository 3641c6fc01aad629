"""nc_layers: per-layer trace-ratio NC1 and NCC accuracy, streamed through forward hooks, against the
in-memory computation on captured features; the natural stages of each network."""
import numpy as np
import pytest
import torch

import ana_utils
import nc_layers
import networks
import result_files
from utils import UserError


def _ncc_acc(H, y, means):
    d = ((H[:, None, :] - means[None]) ** 2).sum(2)
    return float(np.mean(np.argmin(d, axis=1) == y))


def test_layers_match_in_memory_metrics():
    torch.manual_seed(0)
    model = networks.build_model("mlp", 3, in_channels=1, image_size=8, width=16)
    y = torch.arange(3).repeat_interleave(torch.tensor([20, 12, 7]))
    x = torch.randn(len(y), 1, 8, 8) + y[:, None, None, None].float()
    yt = torch.arange(3).repeat(5)
    xt = torch.randn(len(yt), 1, 8, 8) + yt[:, None, None, None].float()
    layers = nc_layers.resolve_layers(model, ["all"])
    assert layers == ["body.3", "body.6", "body.9", "features"]
    row = nc_layers.layer_nc(model, layers, (x, y), (xt, yt), batch_size=8)
    model.eval()
    with torch.no_grad():
        hidden = {}
        hook = model.get_submodule("body.6").register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
        model(x)
        H6 = hidden["h"].double().numpy()
        model(xt)
        H6t = hidden["h"].double().numpy()
        hook.remove()
    for name, H, Ht in (("body.6", H6, H6t),
                        ("features", ana_utils.extract_features(model, x)[0].double().numpy(),
                         ana_utils.extract_features(model, xt)[0].double().numpy())):
        # the trace ratios of nc_metrics (W matters only for other keys: any K x d matrix)
        want = ana_utils.nc_metrics(H, y, np.ones((3, H.shape[1])))
        # float32 features of batches of 8 against one batch: measured <= 1e-14 relative at 1 thread, 1.5e-7
        # at 2 (other kernels' rounding); 1e-5 stays far below the gap between two layers' values (> 10%)
        assert row[f"nc1_trace@{name}"] == pytest.approx(want["nc1_trace"], rel=1e-5)
        assert row[f"nc1_trace_weighted@{name}"] == pytest.approx(want["nc1_trace_weighted"], rel=1e-5)
        means, _ = ana_utils.class_means(H, y, 3)
        assert row[f"ncc_acc@{name}"] == _ncc_acc(H, y.numpy(), means)
        assert row[f"test_ncc_acc@{name}"] == _ncc_acc(Ht, yt.numpy(), means)


@pytest.mark.parametrize("name,kw,first,count", [
    ("resnet18", {}, "body.3", 9),                 # 8 basic blocks + features
    ("vgg11", {}, "body.3", 6),                    # 5 pooling stages + features
    ("cnn", {}, "body.3", 4),
    ("vit", {"width": 16, "depth": 2}, "blocks.0", 3),
    ("wrn", {"width": 1, "depth": 10}, "body.1", 4),   # depth 10: one block per group
])
def test_natural_stages(name, kw, first, count):
    model = networks.build_model(name, 4, in_channels=3, image_size=16, **kw)
    stages = nc_layers.natural_stages(model)
    assert stages[0] == first and len(stages) == count and stages[-1] == "features"
    x, y = torch.randn(8, 3, 16, 16), torch.arange(4).repeat(2)
    row = nc_layers.layer_nc(model, stages, (x, y), batch_size=3)
    assert len(row) == 3 * count and all(0 <= row[f"ncc_acc@{s}"] <= 1 for s in stages)


def test_bad_layer_names():
    model = networks.build_model("mlp", 3, in_channels=1, image_size=8, width=16)
    with pytest.raises(UserError, match="--nc_layers body.99: give `all` alone or module names"):
        nc_layers.resolve_layers(model, ["body.3", "body.99"])
    with pytest.raises(UserError, match="--nc_layers"):
        nc_layers.resolve_layers(model, ["all", "body.3"])
    assert nc_layers.resolve_layers(model, ["features", "body.3", "features"]) == ["features", "body.3"]


TINY = ["--dataset", "synthetic", "--num_classes", "3", "--train_per_class", "24", "--model", "cnn",
        "--width", "4", "--epochs", "3", "--snapshots", "3", "--snapshot_size", "60",
        "--batch_size", "16", "--lr", "0.05", "--device", "cpu"]


def test_mixup_main_nc_layers_all(tmp_path):
    """--nc_layers all: per-layer columns at every evaluated epoch and the depth figure; a bad name is one
    line before training."""
    import mixup_main
    out = ["--models_dir", str(tmp_path / "m"), "--plot_dir", str(tmp_path / "p")]
    mixup_main.main(TINY + out + ["--nc_layers", "all"])
    (csv_path,) = list((tmp_path / "m").glob("*/summary.csv"))
    rows = result_files.read_csv(str(csv_path))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        for layer in ("body.3", "body.7", "body.11", "features"):
            assert 0 <= r[f"ncc_acc@{layer}"] <= 1 and r[f"nc1_trace@{layer}"] > 0 and f"test_ncc_acc@{layer}" in r
        assert "test_nc1" in r and "cdnv" in r
    assert list((tmp_path / "p").glob("*/nc_depth.png"))
    with pytest.raises(UserError, match="--nc_layers body.99"):
        mixup_main.main(TINY + out + ["--nc_layers", "body.99"])
    assert len(list((tmp_path / "m").glob("*/summary.csv"))) == 1
