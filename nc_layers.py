"""Per-layer NC: the trace-ratio NC1 and the nearest-class-centre accuracy of intermediate features, streamed.

Forward hooks capture the named modules' outputs batch by batch (conv maps averaged over space, token
sequences reduced to their class token, as the ViTs' heads read them) into per-layer class statistics of
O(K d_l) memory: two passes over the training inputs (class sums, then within-class sums of squares and
the NCC rule), one over the test inputs (the NCC rule with the training means). The pseudo-layer
`features` is the classifier's input. Sums are all-reduced under torch.distributed (nc_stream)."""
import torch
import torch.nn as nn

import nc_stream
from utils import UserError

FEATURES = "features"


def natural_stages(model):
    """The network's natural stages, input to output: residual blocks (ResNet, WRN), pooling stages (VGG,
    CNN), encoder blocks (ViTs), hidden activations (MLPs), then `features`."""
    stage_types = ("BasicBlock", "_WideBlock", "MaxPool2d", "TransformerEncoderLayer", "EncoderBlock")
    names = [n for n, m in model.named_modules() if type(m).__name__ in stage_types]
    if not names:   # MLPs: the hidden layers after their activation
        names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and not n.startswith("classifier")]
    return names + [FEATURES]


def resolve_layers(model, spec, flag="--nc_layers"):
    """Module names (or `all`: natural_stages) checked against the model; a UserError names what is allowed."""
    if spec == ["all"] or spec == "all":
        return natural_stages(model)
    known = dict(model.named_modules())
    bad = [n for n in spec if n != FEATURES and (n not in known or n == "")]
    if bad or "all" in spec:
        raise UserError(f"{flag} {' '.join(bad or spec)}: give `all` alone or module names of the network, "
                        f"e.g. {', '.join(natural_stages(model)[:8])}")
    return list(dict.fromkeys(spec))


def _pooled(out):
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out[:, 0]
    return out.reshape(len(out), -1)


def _layer_batches(model, layers, x, batch_size):
    """Yield, per batch of x, a dict layer -> pooled float64 features (eval mode, no gradients)."""
    captured, handles = {}, []
    modules = dict(model.named_modules())
    for name in layers:
        if name != FEATURES:
            handles.append(modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, _pooled(out))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                captured[FEATURES] = model(x[i:i + batch_size])[1]
                yield {n: captured[n].to(torch.float64) for n in layers}
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _ncc_correct(H, y, means):
    """Samples whose nearest class mean is their label (distances from centred features)."""
    mu = means.mean(0)
    Hc, M = H - mu, means - mu
    sq = (Hc * Hc).sum(1)[:, None] - 2 * Hc @ M.T + (M * M).sum(1)[None, :]
    return float((torch.argmin(sq, dim=1) == y).sum())


def layer_nc(model, layers, train, test=None, K=None, batch_size=1024):
    """Per layer L: `nc1_trace@L`, `nc1_trace_weighted@L` (theory.md section 3's trace ratios),
    `ncc_acc@L` on the training inputs and, with test, `test_ncc_acc@L` (training means). train, test:
    (x, y) on the model's device; K defaults to the classifier's rows."""
    K = K or model.classifier.out_features
    x, y = train
    y = y.to(x.device) if isinstance(x, torch.Tensor) else y
    counts = torch.bincount(y, minlength=K).to(torch.float64)
    sums = {}
    for i, feats in enumerate(_layer_batches(model, layers, x, batch_size)):
        yb = y[i * batch_size:(i + 1) * batch_size]
        for n, H in feats.items():
            sums.setdefault(n, torch.zeros(K, H.shape[1], dtype=torch.float64, device=H.device)).index_add_(0, yb, H)
    nc_stream.all_reduce_sum(counts, *sums.values())
    means = {n: s / torch.clamp(counts, min=1)[:, None] for n, s in sums.items()}
    tally = torch.zeros(len(layers), 3, dtype=torch.float64, device=counts.device)   # within, NCC train, NCC test
    for i, feats in enumerate(_layer_batches(model, layers, x, batch_size)):
        yb = y[i * batch_size:(i + 1) * batch_size]
        for j, n in enumerate(layers):
            tally[j, 0] += float(((feats[n] - means[n][yb]) ** 2).sum())
            tally[j, 1] += _ncc_correct(feats[n], yb, means[n])
    if test is not None:
        xt, yt = test
        for i, feats in enumerate(_layer_batches(model, layers, xt, batch_size)):
            yb = yt[i * batch_size:(i + 1) * batch_size].to(counts.device)
            for j, n in enumerate(layers):
                tally[j, 2] += _ncc_correct(feats[n], yb, means[n])
    n_test = torch.tensor([float(len(test[1])) if test is not None else 0.0], dtype=torch.float64)
    nc_stream.all_reduce_sum(tally, n_test)
    return _layer_row(layers, counts, means, tally, float(n_test))


def _layer_row(layers, counts, means, tally, n_test):
    """The per-layer columns from the summed statistics; NaN throughout when a class has no sample."""
    N, w = float(counts.sum()), counts / counts.sum()
    row = {}
    if bool(torch.any(counts == 0)):
        nan = float("nan")
        keys = ("nc1_trace", "nc1_trace_weighted", "ncc_acc") + (("test_ncc_acc",) if n_test else ())
        return {f"{k}@{n}": nan for n in layers for k in keys}
    for j, n in enumerate(layers):
        m = means[n]
        tr_w = float(tally[j, 0]) / N
        tr_b = float(((m - m.mean(0)) ** 2).sum()) / len(m)
        tr_bw = float(w @ ((m - w @ m) ** 2).sum(1))
        row[f"nc1_trace@{n}"] = nc_stream.trace_ratio(tr_w, tr_b)
        row[f"nc1_trace_weighted@{n}"] = nc_stream.trace_ratio(tr_w, tr_bw)
        row[f"ncc_acc@{n}"] = float(tally[j, 1]) / N
        if n_test:
            row[f"test_ncc_acc@{n}"] = float(tally[j, 2]) / n_test
    return row
