"""The speed of the theory engine at long-tailed class counts (benchmark.py --only rebalance): one cold
certified solve and a warm-started 20-value lambda path at an exponential profile (K = 1000, ratio 100),
in CPU seconds of this process (one BLAS thread; robust to a busy machine) and in decompositions of g x g or
larger matrices (g distinct sizes: the solver's certificates decompose g x g class coordinates, K x K before)."""
import contextlib
import time

import numpy as np
import scipy.linalg

import rebalance_program
import utils


@contextlib.contextmanager
def counted_decompositions(min_size):
    """Counts the eigh and SVD calls on matrices of at least min_size rows while active (dict)."""
    counts, saved = {"eigh": 0, "svd": 0}, []
    for mod, name, key in ((scipy.linalg, "eigh", "eigh"), (np.linalg, "eigh", "eigh"), (np.linalg, "svd", "svd")):
        f = getattr(mod, name)
        saved.append((mod, name, f))

        def counted(A, *a, _f=f, _key=key, **k):
            counts[_key] += np.shape(A)[0] >= min_size
            return _f(A, *a, **k)
        setattr(mod, name, counted)
    try:
        yield counts
    finally:
        for mod, name, f in saved:
            setattr(mod, name, f)


def _measure(solve, lams, size):
    """(CPU seconds, wall seconds, decompositions of size x size or larger, answers) of solve(lam, Z0, b0) along
    lams, warm-started as opt_main's paths (rebalance_program.lambda_path)."""
    with counted_decompositions(size) as counts:
        c0, w0 = time.process_time(), time.perf_counter()
        sols = rebalance_program.lambda_path(lams, solve)
        return time.process_time() - c0, time.perf_counter() - w0, counts["eigh"] + counts["svd"], sols


def bench_rebalance(K=1000, ratio=100, n_max=1280, loss_name="cross_entropy", lam_b=0.01):
    """Cold solve at the path's middle lambda (sqrt(n_min) / N) against the 20-value path 0.5 .. 2 times it."""
    n = utils.profile_sizes("exp", ratio, K, n_max)
    loss = rebalance_program.loss_vectors(loss_name, n)
    lam_mid = np.sqrt(min(n)) / sum(n)
    lams = list(np.geomspace(2.0, 0.5, 20) * lam_mid)

    # the solver of opt_main's paths (cross-entropy: the same program, its vectors trivial); opt_main.py solves on a
    # plain point whose certified verdicts stay open (opt_main.solve_path_point), which is not timed here
    def solve(lam, Z0, b0):
        return rebalance_program.solve_rebalance_fast(n, loss, lam, lam_b, Z0=Z0, b0=b0)
    g = len(set(n))
    c_cold, w_cold, d_cold, cold = _measure(solve, [lam_mid], g)
    c_path, w_path, d_path, path = _measure(solve, lams, g)
    ok = sum(s["status"] == "optimal" for s in path)
    steps = [s["bm_iterations"] for s in path]
    upper = sum(k for k, lam in zip(steps, lams) if lam > lam_mid)
    print(f"{loss_name}, exp profile K = {K}, ratio {ratio}, n_max {n_max} ({len(set(n))} distinct sizes): cold solve "
          f"at lambda = sqrt(n_min)/N {c_cold:.1f} CPU s ({w_cold:.1f} s wall), "
          f"{d_cold} decompositions ({g} x {g} or larger), "
          f"{cold[0]['status']} {cold[0]['accuracy']:.0e}; 20-lambda path (0.5-2x, warm-started) {c_path:.1f} CPU s "
          f"({w_path:.1f} s wall) = {c_path / c_cold:.2f} x the cold solve, {d_path} decompositions, "
          f"{ok} of 20 certified (worst accuracy {max(s['accuracy'] for s in path):.0e}); L-BFGS steps: cold "
          f"{cold[0]['bm_iterations']}, path {sum(steps)} ({upper} at the 10 lambdas above the middle, where groups "
          f"cross their thresholds)", flush=True)
    return {"cold_cpu_s": c_cold, "cold_decompositions": d_cold, "path_cpu_s": c_path,
            "path_over_cold": c_path / c_cold, "path_decompositions": d_path, "path_certified": ok,
            "cold_steps": cold[0]["bm_iterations"], "path_steps": sum(steps), "path_steps_upper": upper}
