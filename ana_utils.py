"""Analysis: feature extraction, NC metrics, the UFM convex program and its solvers,
theory formulas, and the mixup geometry."""

# ======================================================================================
# Feature extraction and NC metrics  (foundation)
# ======================================================================================


# ======================================================================================
# UFM convex program: cvxpy and fast solvers, thresholds, geometry from Z  (theory engine)
# ======================================================================================


# ======================================================================================
# Mixup geometry: projection, free-feature optimum, summaries  (mixup)
# ======================================================================================
