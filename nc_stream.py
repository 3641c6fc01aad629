"""Streaming NC metrics: class statistics summed over batches and over processes, in O(K d + d^2) memory.

`nc_metrics_stream` returns the dict of `ana_utils.nc_metrics` (theory.md section 3) without holding
the N x d feature matrix: pass 1 sums the class counts and feature sums, pass 2 sums the within-class
scatter R^T R, the per-class within-class traces and the NC4 agreement counts. Every state is a sum,
so processes reduce it by addition: when torch.distributed is initialised each rank passes its own
shard and every rank gets the metrics of all of them (gloo on CPU, NCCL on GPU)."""
import numpy as np
import torch
import torch.distributed as dist

import ana_utils
import nc_modern
from utils import UserError

NC4_TIE_RTOL = 1e-6   # tau of nc4_ties (theory.md section 3); equal to ana_utils.NC4_TIE_RTOL (tested)


def _device_of(W):
    return W.device if isinstance(W, torch.Tensor) else torch.device("cpu")


def _f64(a, device):
    a = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return a.detach().to(device=device, dtype=torch.float64)


def _batch(H, y, K, d, device):
    """One (H, y) batch as float64 features and int64 labels on `device`, checked like nc_metrics's."""
    H = _f64(H, device)
    y = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))).detach().to(device)
    if H.ndim != 2 or H.shape[1] != d or y.ndim != 1 or len(y) != len(H):
        raise UserError(f"batches: each must be (H, y) with H of n x {d} (W's columns) and y of n labels; "
                        f"got H {tuple(H.shape)}, y {tuple(y.shape)}")
    if y.dtype.is_floating_point and len(y) and not bool(torch.all(y == torch.round(y))):
        raise UserError(f"labels: must be integers 0..{K - 1}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= K):
        bad = sorted(set(y[(y < 0) | (y >= K)].tolist()))[:5]
        raise UserError(f"labels: {bad} outside 0..{K - 1} (the classifier has K = {K} rows)")
    return H, y


def all_reduce_sum(*tensors):
    """Sum the tensors over all ranks in place when torch.distributed is initialised (one call, one
    flat float64 buffer; moved to the current GPU for NCCL); a no-op in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if dist.get_backend() == "nccl" and flat.device.type != "cuda":
        flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat, start = flat.to(tensors[0].device), 0
    for t in tensors:
        t.copy_(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return tensors


def class_sums(batches, K, d, device):
    """Pass 1: per-class counts (K) and feature sums (K x d), summed over batches and ranks."""
    counts = torch.zeros(K, dtype=torch.float64, device=device)
    sums = torch.zeros(K, d, dtype=torch.float64, device=device)
    for H, y in batches():
        H, y = _batch(H, y, K, d, device)
        counts += torch.bincount(y, minlength=K).to(torch.float64)
        sums.index_add_(0, y, H)
    all_reduce_sum(counts, sums)
    return counts, sums


def _scratch():
    """A function (name, shape, device) -> a reusable float64 buffer: fresh buffers of a batch's size cost
    page faults that took as long as the product they fed (measured, one CPU thread)."""
    bufs = {}

    def get(name, shape, device):
        t = bufs.get(name)
        if t is None or t.shape != shape:
            t = bufs[name] = torch.empty(shape, dtype=torch.float64, device=device)
        return t
    return get


def _decisions(means, W=None, b=None):
    """A function of a batch H returning (squared distances to the class means (n x K), argmax(W h + b) or
    None): one product of the centred features with [W; centred means] (distances from centred features
    cancel less, as in ana_utils.nc_metrics)."""
    K = len(means)
    mu = means.mean(0)
    M = means - mu
    M_sq = (M * M).sum(1)
    A_t = (M if W is None else torch.cat([W, M])).T.contiguous()
    offset = None if W is None else W @ mu + b
    scratch = _scratch()

    def decide(H):
        Hc = torch.sub(H, mu, out=scratch("Hc", H.shape, H.device))
        P = torch.matmul(Hc, A_t, out=scratch("P", (len(H), A_t.shape[1]), H.device))
        sq_dist = (Hc * Hc).sum(1)[:, None] - 2 * P[:, -K:] + M_sq[None, :]
        return sq_dist, (None if W is None else torch.argmax(P[:, :K] + offset, dim=1))
    return decide


def scatter_and_agreement(batches, means, W, b, tie_slack):
    """Pass 2: within-class scatter R^T R (d x d), per-class traces of it (K), and per class (rows of a
    4 x K tally) the samples where argmax(W h + b) equals the nearest class mean (strictly, and up to
    `tie_slack`), where argmax(W h + b) is the label, and where the nearest class mean is the label."""
    K, d = means.shape
    device = means.device
    scatter = torch.zeros(d, d, dtype=torch.float64, device=device)
    within = torch.zeros(K, dtype=torch.float64, device=device)
    tally = torch.zeros(4, K, dtype=torch.float64, device=device)
    decide, scratch = _decisions(means, W, b), _scratch()
    for H, y in batches():
        H, y = _batch(H, y, K, d, device)
        if not len(y):
            continue
        R = torch.index_select(means, 0, y, out=scratch("R", H.shape, device)).neg_().add_(H)   # H - means[y]
        scatter.addmm_(R.T, R)
        within.index_add_(0, y, (R * R).sum(1))
        sq_dist, pred = decide(H)
        ncc = torch.argmin(sq_dist, dim=1)
        dist_ = torch.sqrt(torch.clamp(sq_dist, min=0.0))
        tie = dist_[torch.arange(len(y), device=device), pred] <= dist_.min(1).values + tie_slack
        tally.index_add_(1, y, torch.stack([pred == ncc, tie, pred == y, ncc == y]).to(torch.float64))
    all_reduce_sum(scatter, within, tally)
    return scatter, within, tally


TALLIES = ("agree", "agree_ties", "correct", "ncc_correct")   # the rows of scatter_and_agreement's tally


def class_statistics(batches, W, b=None, K=None, tie_rtol=NC4_TIE_RTOL):
    """The two passes over `batches` (a callable returning a fresh iterator of (H, y)), as float64 numpy:
    counts, means, scatter (R^T R), within (per-class sum of squared residuals), per-class tallies
    `<t>_per_class` for t in TALLIES, the totals agree and agree_ties, and N. A class without samples (over all
    ranks) has a NaN mean, and the tallies that need every mean (agree, agree_ties, ncc_correct) are NaN."""
    K = _check_K(W, K)
    device = _device_of(W)
    W_t = _f64(W, device)
    b_t = torch.zeros(K, dtype=torch.float64, device=device) if b is None else _f64(b, device).reshape(-1)
    if len(b_t) != K:
        raise UserError(f"b: must hold K = {K} entries (W's rows), got {len(b_t)}")
    counts, sums = class_sums(batches, K, W_t.shape[1], device)
    d, nan = W_t.shape[1], float("nan")
    out = {"counts": counts.cpu().numpy(), "N": float(counts.sum())}
    if out["N"] == 0:
        out.update(means=np.full((K, d), nan), scatter=np.full((d, d), nan), within=np.full(K, nan),
                   agree=nan, agree_ties=nan, **{f"{t}_per_class": np.full(K, nan) for t in TALLIES})
        return out
    empty = counts == 0
    means = sums / torch.clamp(counts, min=1)[:, None]
    means[empty] = means[~empty].mean(0)                   # a stand-in: its decisions are reported NaN
    slack = tie_rtol * float(torch.linalg.norm(means - means.mean(0), dim=1).max())
    scatter, within, tally = scatter_and_agreement(batches, means, W_t, b_t, slack)
    means[empty] = nan
    out.update(means=means.cpu().numpy(), scatter=scatter.cpu().numpy(), within=within.cpu().numpy())
    out.update({f"{t}_per_class": tally[i].cpu().numpy() for i, t in enumerate(TALLIES)})
    if bool(torch.any(empty)):
        for t in ("agree", "agree_ties", "ncc_correct"):
            out[f"{t}_per_class"] = np.full(K, nan)
    out["agree"], out["agree_ties"] = float(out["agree_per_class"].sum()), float(out["agree_ties_per_class"].sum())
    return out


def _check_K(W, K):
    if getattr(W, "ndim", 0) != 2:
        raise UserError("W: must be a K x d classifier matrix")
    if K is not None and int(K) != W.shape[0]:
        raise UserError(f"K: {K} differs from the classifier's {W.shape[0]} rows")
    return W.shape[0]


def _inverse_trace_ratio(scatter, N, centred, weights, K):
    """tr(Sigma_W Sigma_B^+) / K from the scatter R^T R, Sigma_B = sum_k w_k c_k c_k^T inverted on its
    K-1 leading directions only (the same rule as ana_utils.nc_metrics)."""
    A = np.sqrt(weights)[:, None] * centred
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    r = min(K - 1, int(np.sum(s > s[0] * 1e-10))) if s[0] > 0 else 0
    if r == 0:
        return float("inf")
    V = Vt[:r]
    return float(np.sum(np.einsum("ij,jk,ik->i", V, scatter, V) / s[:r] ** 2) / N / K)


def trace_ratio(tr_w, tr_b):
    """tr_w / tr_b, 0 for 0/0 (collapsed and no spread), inf for x/0, NaN when either is NaN."""
    if np.isnan(tr_w) or np.isnan(tr_b):
        return float("nan")
    if tr_b > 0:
        return float(tr_w / tr_b)
    return 0.0 if tr_w == 0 else float("inf")


def nc_from_statistics(stats, W):
    """The dict of ana_utils.nc_metrics (same keys, same definitions) from `class_statistics`'s output."""
    W = W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else np.asarray(W)
    W = W.astype(np.float64)
    K = W.shape[0]
    norms_w = np.linalg.norm(W, axis=1)
    counts, means, N = stats["counts"], stats["means"], stats["N"]
    if np.any(counts == 0):
        return ana_utils.metrics_without_a_class(norms_w)
    w_size = counts / N
    h_G = w_size @ means
    mu = means.mean(0)
    M = means - mu
    out = {"nc1_weighted": _inverse_trace_ratio(stats["scatter"], N, means - h_G, w_size, K),
           "nc1": _inverse_trace_ratio(stats["scatter"], N, M, np.full(K, 1.0 / K), K)}
    tr_w = float(np.trace(stats["scatter"])) / N
    out["nc1_trace"] = trace_ratio(tr_w, float(np.sum(M**2)) / K)
    out["nc1_trace_weighted"] = trace_ratio(tr_w, float(w_size @ np.sum((means - h_G) ** 2, axis=1)))
    out.update(ana_utils.sigma_b_rank_of(M))     # where Sigma_B lost rank nc1 is not to be read (theory.md section 7)
    norms_m = np.linalg.norm(M, axis=1)
    out["nc2_equinorm_means"] = float(norms_m.std() / norms_m.mean())
    out["nc2_equinorm_classifier"] = float(norms_w.std() / norms_w.mean())
    G = M @ M.T
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = G / np.outer(norms_m, norms_m)
    out["nc2_equiangle"] = float(np.abs(cos[~np.eye(K, dtype=bool)] + 1.0 / (K - 1)).mean())
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    out["nc2_etf_distance"] = float(np.linalg.norm(G / np.linalg.norm(G) - etf))
    out["nc3"] = float(np.linalg.norm(W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2)
    out["nc4"] = stats["agree"] / N
    out["nc4_ties"] = stats["agree_ties"] / N
    return out


def nc_metrics_stream(batches, W, b=None, K=None, tie_rtol=NC4_TIE_RTOL):
    """ana_utils.nc_metrics over a stream: `batches()` returns a fresh iterator of (H, y) batches (numpy
    or torch; called twice). Memory O(K d + d^2) whatever N; under torch.distributed every rank passes
    its shard and gets the metrics of the union. W: K x d classifier, b: K bias or None, K: optional check."""
    return nc_from_statistics(class_statistics(batches, W, b, K, tie_rtol), W)


def array_batches(H, y, batch_size):
    """A `batches` callable over in-memory arrays (tests, and features already extracted)."""
    if batch_size < 1:
        raise UserError(f"batch_size: must be >= 1, got {batch_size}")
    return lambda: ((H[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))


def nc_modern_stream(batches, W, b=None, K=None):
    """nc_modern.modern_metrics of the streamed class statistics, plus `clf_ncc_agreement` (nc4, bias
    included): the post-2022 metric set in the same two passes and memory as nc_metrics_stream."""
    stats = class_statistics(batches, W, b, K)
    out = _modern_from_statistics(stats, W)
    out["clf_ncc_agreement"] = stats["agree"] / stats["N"] if stats["N"] else float("nan")
    return out


def _modern_from_statistics(stats, W):
    """nc_modern.modern_metrics of class_statistics's output."""
    W = W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else np.asarray(W)
    with np.errstate(divide="ignore", invalid="ignore"):
        variances = stats["within"] / stats["counts"]
    return nc_modern.modern_metrics(W, stats["means"], stats["counts"], variances)


def ncc_stream(batches, means, W=None, b=None, weighted=True):
    """Nearest-class-centre rule with given (e.g. training) class means on any loader: `ncc_acc` (its
    accuracy) and, with W, `clf_ncc_agreement` (how often argmax(W h + b) picks the same class). weighted:
    over samples; else the mean of the per-class rates (classes with samples). NaN with no samples."""
    device = means.device if isinstance(means, torch.Tensor) else torch.device("cpu")
    means = _f64(means, device)
    K, d = means.shape
    if W is not None:
        W = _f64(W, device)
        b = torch.zeros(K, dtype=torch.float64, device=device) if b is None else _f64(b, device).reshape(-1)
    decide = _decisions(means, W, b)
    hits = torch.zeros(3, K, dtype=torch.float64, device=device)    # samples, NCC correct, agreements
    for H, y in batches():
        H, y = _batch(H, y, K, d, device)
        sq_dist, pred = decide(H)
        ncc = torch.argmin(sq_dist, dim=1)
        hits[0].index_add_(0, y, torch.ones_like(ncc, dtype=torch.float64))
        hits[1].index_add_(0, y, (ncc == y).to(torch.float64))
        if W is not None:
            hits[2].index_add_(0, y, (ncc == pred).to(torch.float64))
    all_reduce_sum(hits)
    n, correct, agree = hits.cpu().numpy()
    rate = (lambda h: h.sum() / n.sum()) if weighted else (lambda h: np.mean(h[n > 0] / n[n > 0]))
    out = {"ncc_acc": float(rate(correct)) if n.sum() else float("nan")}
    if W is not None:
        out["clf_ncc_agreement"] = float(rate(agree)) if n.sum() else float("nan")
    return out


def model_batches(model, x, y, batch_size=1024, cache_bytes=0):
    """A `batches` callable of (features, labels) of `model` (forward returns (logits, h)) on inputs x,
    computed batch by batch in eval mode without gradients (the model's mode is restored). Up to
    `cache_bytes` of features are kept from the first pass so that the second needs no forward pass;
    beyond it nothing is kept and every pass runs the model."""
    cache, state = [], {"complete": False}

    def gen():
        if state["complete"]:
            yield from cache
            return
        was_training, kept = model.training, 0
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    h = model(x[i:i + batch_size])[1]
                    kept += h.numel() * h.element_size()
                    if kept <= cache_bytes:
                        cache.append((h, y[i:i + batch_size]))
                    yield h, y[i:i + batch_size]
        finally:
            model.train(was_training)
        state["complete"] = kept <= cache_bytes
        if not state["complete"]:
            cache.clear()
    return gen


def size_groups(sizes):
    """Class groups by training size: none when balanced; two sizes: majority / minority; three: head /
    medium / tail; more: head / medium / tail by the tercile of the classes ranked by size (equal sizes
    stay together; an empty group is left out)."""
    sizes = [int(n) for n in sizes]
    distinct = sorted(set(sizes), reverse=True)
    if len(distinct) < 2:
        return {}
    if len(distinct) == 2:
        return {"majority": [k for k, n in enumerate(sizes) if n == distinct[0]],
                "minority": [k for k, n in enumerate(sizes) if n == distinct[1]]}
    groups = {"head": [], "medium": [], "tail": []}
    for k, n in enumerate(sizes):
        if len(distinct) == 3:
            tercile = distinct.index(n)
        else:                                              # by the number of classes strictly larger
            tercile = min(2, 3 * sum(m > n for m in sizes) // len(sizes))
        groups[list(groups)[tercile]].append(k)
    return {g: c for g, c in groups.items() if c}


def group_metrics(stats, groups, prefix=""):
    """Per class group g (size_groups): `acc_g` (argmax(W h + b) is the label), `nc4_g` (it is the nearest
    class mean), `ncc_acc_g` (the nearest class mean is the label), `nc1_trace_g` (the group's mean
    squared within-class residual over the size-weighted between-class trace of all classes) and, for a
    group of two classes or more, `cdnv_g` (over its pairs); theory.md "Streaming and modern NC metrics"."""
    counts, means = stats["counts"], stats["means"]
    with np.errstate(divide="ignore", invalid="ignore"):
        h_G = counts @ means / counts.sum()
        tr_bw = float(counts @ np.sum((means - h_G) ** 2, axis=1) / counts.sum())
        variances = stats["within"] / counts
    out = {}
    for g, c in groups.items():
        n = counts[c].sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{prefix}acc_{g}"] = float(stats["correct_per_class"][c].sum() / n)
            out[f"{prefix}nc4_{g}"] = float(stats["agree_per_class"][c].sum() / n)
            out[f"{prefix}ncc_acc_{g}"] = float(stats["ncc_correct_per_class"][c].sum() / n)
            out[f"{prefix}nc1_trace_{g}"] = trace_ratio(float(stats["within"][c].sum() / n), tr_bw)
        if len(c) > 1:                                     # CDNV needs a pair of classes
            out[f"{prefix}cdnv_{g}"] = nc_modern.cdnv(means[c], variances[c])
    return out


W_ONLY = ("nc2_equinorm_classifier", "w_equinorm", "w_equiangle", "w_angle_std", "w_etf_distance")


def evaluation_metrics(model, W, b, train, test=None, sizes=None, batch_size=1024, cache_bytes=2**30):
    """A training run's evaluated-epoch row, streamed from the model: `train_acc`, `test_acc` and
    `test_acc_c<k>`, the NC metrics of theory.md section 3 on the training set, the modern set and
    `clf_ncc_agreement` (section "Streaming and modern NC metrics"), per size group (size_groups), and
    with a test set the same NC metrics, groups and modern set prefixed `test_`, plus `test_ncc_acc` and
    `test_clf_ncc_agreement` with the training set's class means. train, test: (x, y) on the model's
    device; test None (the UFM) skips it. Returns (row, the training set's class_statistics)."""
    K = W.shape[0]
    groups = size_groups(sizes) if sizes is not None else {}
    stats = class_statistics(model_batches(model, *train, batch_size, cache_bytes), W, b)
    row = {"train_acc": float(stats["correct_per_class"].sum() / stats["N"])}
    tail = {}
    for prefix, st in [("", stats)] + ([] if test is None else [("test_", None)]):
        if st is None:
            test_batches = model_batches(model, *test, batch_size, cache_bytes)
            st = class_statistics(test_batches, W, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                per_class = st["correct_per_class"] / st["counts"]
            row["test_acc"] = float(st["correct_per_class"].sum() / st["N"])
            row.update({f"test_acc_c{k}": float(per_class[k]) if st["counts"][k] else None for k in range(K)})
            means = torch.as_tensor(stats["means"]).to(_device_of(W))
            tail.update({f"test_{k}": v for k, v in ncc_stream(test_batches, means, W, b).items()})
        for k, v in [*nc_from_statistics(st, W).items(), *_modern_from_statistics(st, W).items()]:
            if not (prefix and k in W_ONLY):                # the classifier's own geometry: once per row
                tail[prefix + k] = v
        tail.update(group_metrics(st, groups, prefix))
    return {**row, **tail}, stats
