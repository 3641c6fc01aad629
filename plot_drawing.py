"""Shared drawing helpers of every figure: Z heat-maps, their colour scales and cluster labels, and writing a
figure as PNG atomically (matplotlib's Agg backend: files only)."""
import matplotlib

import result_files

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize, SymLogNorm


def symlog_norm(Zs, linthresh=None):
    """One symmetric-log colour scale for a list of Z matrices: +-max|Z|, linear within linthresh."""
    vmax = max([float(np.max(np.abs(np.asarray(Z, dtype=float)))) for Z in Zs] + [1e-8])
    return SymLogNorm(linthresh=linthresh or max(vmax * 1e-2, 1e-8), vmin=-vmax, vmax=vmax, base=10)


def plot_z_heatmap(ax, Z, cluster_sizes, norm=None, title=None):
    """Heat-map of Z (classes as columns) with lines at the cluster boundaries; returns the image."""
    Z = np.asarray(Z, dtype=float)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")  # NaN entries (masked) in grey
    im = ax.imshow(np.ma.masked_invalid(Z), cmap=cmap,
                   norm=norm if norm is not None else symlog_norm([np.nan_to_num(Z)]),
                   interpolation="nearest")
    for edge in np.cumsum(cluster_sizes)[:-1]:
        ax.axhline(edge - 0.5, color="k", lw=0.8)
        ax.axvline(edge - 0.5, color="k", lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return im


def save_figure(fig, path, dpi=110):
    """Write a matplotlib figure as PNG atomically and close it. A figure with a layout engine is
    drawn once; bbox_inches="tight" (for the others) draws it twice."""
    tight = None if fig.get_layout_engine() is not None else "tight"
    result_files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches=tight))
    plt.close(fig)
    return path


def cluster_letters(i):
    """The i-th cluster's name: A ... Z, then AA, AB, ... (as spreadsheet columns; long-tailed profiles have
    hundreds of clusters, and letters past Z had drawn control characters)."""
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("A") + r) + name
    return name


def label_clusters(ax, cluster_sizes, class_ticks=True, fontsize=6):
    """Class numbers as ticks (columns below, rows left) and the clusters' letters A, B, ...
    centred under their columns, so a heat-map reads without the caption."""
    K = int(sum(cluster_sizes))
    if class_ticks:
        ax.set_xticks(range(K), [str(k) for k in range(K)], fontsize=fontsize - 1)
        ax.set_yticks(range(K), [str(k) for k in range(K)], fontsize=fontsize - 1)
        ax.tick_params(length=1.5, pad=1)
    starts = np.concatenate([[0], np.cumsum(cluster_sizes)])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        ax.text((a + b - 1) / 2, K - 0.5 + 0.12 * K, cluster_letters(i), ha="center", va="center",
                fontsize=fontsize + 2, fontweight="bold", clip_on=False)


def centred_norm(values):
    """A linear colour scale symmetric about 0 (white of a diverging map at 0, so the sign reads
    right: all-negative data is all blue), spanning the largest |value|."""
    vmax = float(np.nanmax(np.abs(values))) if np.any(np.isfinite(values)) else 1.0
    return Normalize(-max(vmax, 1e-12), max(vmax, 1e-12))
