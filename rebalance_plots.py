"""The figures of the re-balancing study (theory.md section 9): opt_main's lambda path (minority spread and
cluster cosines along it) and rebalance_main's minority spread against lambda under each loss."""
import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

import plot_drawing


def _cos_series(points, key, idx=None):
    vals = [p["cosines"][key] if idx is None else p["cosines"][key][idx] for p in points]
    return [np.nan if v is None else v for v in vals]


def save_path_figure(record, path):
    """Two panels along opt_main's lambda path: the minority spread (with each cluster's threshold) and
    the mean cosines of columns of Z within each cluster and across clusters."""
    pts = sorted(record["path"], key=lambda p: p["lam"])
    lams = [p["lam"] for p in pts]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.6), layout="constrained")
    a1.plot(lams, [p["minority_spread"] for p in pts], "o-", color="C3", ms=3, label="minority spread")
    for t in record["thresholds"]:
        if t is not None:
            a1.axvline(t, color="0.5", ls="--", lw=0.8)
    over = "" if max(record["loss"]["oversample"]) == 1 else ", oversampled"
    a1.set(xscale="log", xlabel="λ", ylabel="max ‖z_j − z_k‖ over the minority",
           title=f"loss {record['loss']['name']}{over}: certified path (dashed: λ*)")
    for c in range(len(record["cluster_s"])):
        if record["cluster_s"][c] > 1 and len(record["cluster_s"]) <= 8:
            a2.plot(lams, _cos_series(pts, "within", c), "o-", ms=3, label=f"within cluster {c}")
    a2.plot(lams, _cos_series(pts, "across"), "s-", ms=3, color="k", label="across clusters")
    a2.set(xscale="log", xlabel="λ", ylabel="mean cosine of columns of Z", title="cluster cosines")
    a2.legend(fontsize=7)
    a1.legend(fontsize=7)
    return plot_drawing.save_figure(fig, path)


def save_rebalance_figure(result, path):
    """One panel per loss: the minority spread against lambda from the convex program (line) and the trained
    points of each network (markers), with the loss's threshold lambda* (dashed)."""
    losses = result["losses"]
    fig, axes = plt.subplots(1, len(losses), figsize=(2.9 * len(losses) + 0.4, 3.3), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, entry in zip(axes[0], losses):
        ax.plot(entry["curve"]["lam"], [np.nan if v is None else v for v in entry["curve"]["spread"]], "-", color="k",
                lw=1.2, label="convex program")
        for (net, spreads), marker in zip(entry["spread"].items(), "so^"):
            ax.plot(entry["lam"], [np.nan if v is None else v for v in spreads], marker, ms=5, mfc="none",
                    label="UFM" if net == "ufm" else f"trained ({net})")
        ax.axvline(entry["threshold"], color="C3", ls="--", lw=1, label="λ*")
        ax.set(xscale="log", xlabel="λ", title=f"{entry['name']}\nλ* = {entry['threshold']:.4g}")
        ax.title.set_fontsize(8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("minority spread  max ‖z_j − z_k‖")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(result.get("title", "minority collapse under re-balancing losses"), fontsize=9)
    return plot_drawing.save_figure(fig, path)
