"""The UFM's closed-form theory (theory.md section 2): the lambda split into training weights, collapse
thresholds of clusters, class layouts from cluster sizes, and the Grams of an optimum's Z."""
import numpy as np

# The original scripts split lambda as lam_H = lambda / 20, lam_W = 5 lambda: lam_W / lam_H = 100.
SCRIPT_LAM_RATIO = 100.0


def split_lambda(lam, ratio=SCRIPT_LAM_RATIO):
    """(lam_H, lam_W) with 2 sqrt(lam_H lam_W) = lam and lam_W / lam_H = ratio (theory.md section 2):
    the one place where the lambda of the convex program becomes the training weights."""
    root = float(np.sqrt(ratio))
    return float(lam) / (2 * root), float(lam) * (root / 2)


def collapse_threshold(n_c, N):
    """A cluster of >= 2 classes with n_c samples each collapses iff lambda >= sqrt(n_c) / N."""
    return np.sqrt(n_c) / N


def expand_clusters(cluster_s, sample_s):
    """Per-class sizes and the class-index clusters from classes per cluster and samples per class."""
    n, clusters = [], []
    for k, m in zip(cluster_s, sample_s):
        clusters.append(list(range(len(n), len(n) + int(k))))
        n += [int(m)] * int(k)
    return n, clusters


def cluster_thresholds(cluster_s, sample_s):
    """Collapse threshold of each cluster (None for a single-class cluster, which cannot collapse)."""
    N = float(np.dot(cluster_s, sample_s))
    return [collapse_threshold(m, N) if k >= 2 else None for k, m in zip(cluster_s, sample_s)]


def two_cluster_lambda_star(k_A, n_A, k_B, n_B):
    """Minority collapse threshold of k_A classes of n_A and k_B of n_B (n_A > n_B)."""
    return collapse_threshold(n_B, k_A * n_A + k_B * n_B)


def two_cluster_nA_star(lam, k_A, k_B, n_B):
    """The majority size above which the minority collapses at fixed lambda."""
    return (np.sqrt(n_B) / lam - k_B * n_B) / k_A


def gram_from_Z(Z, n):
    """Classifier Gram (prop. to (M M^T)^{1/2}) and class-mean Gram (prop. to
    D^{-1/2} (M^T M)^{1/2} D^{-1/2}) at the optimum, from M = Z D^{1/2}."""
    sq = np.sqrt(np.asarray(n, np.float64))
    U, s, Vt = np.linalg.svd(np.asarray(Z, np.float64) * sq)
    return (U * s) @ U.T, (Vt.T * s) @ Vt / np.outer(sq, sq)
