"""Solve the convex program of the unconstrained feature model (theory.md section 2).

    python opt_main.py --cluster_s 3 3 4 --sample_s 5000 4000 3000 --lam 0.005 --reg_b 0.01

Prints Z (classes as columns), b, the objective with its certified accuracy and, per cluster, its
collapse threshold sqrt(n_c)/N and the verdict the certified accuracy supports (collapsed, apart,
or within solver accuracy of the threshold); writes opt_results/NAME.npz and NAME.json and plots Z
with the cluster boundaries into plots/NAME.png."""
import argparse
import os
import sys

import numpy as np

import ana_utils
import plot_utils
import theory_formulas
import ufm_certificate
import ufm_program
import utils
from utils import UserError

COLLAPSE_TOL = 1e-3  # columns closer than this times max(||Z||_F, 1) count as one (solver accuracy)
LAM_MAX = 1e6  # largest --lam / --reg_b: Clarabel panics at 1e300, and Z = b = 0 long before


def parse_args(argv):
    p = utils.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster_s", type=int, nargs="+", required=True, help="classes in each cluster")
    p.add_argument("--sample_s", type=int, nargs="+", required=True, help="samples per class in each cluster")
    p.add_argument("--lam", "--reg_z", dest="lam", type=float, required=True,
                   help="lambda = 2 sqrt(lam_W lam_H) of the convex program (--reg_z: the original's name)")
    p.add_argument("--reg_b", type=float, default=0.01, help="lambda_b, the bias penalty")
    p.add_argument("--solver", default="auto", choices=("auto", "cvxpy", "fast"),
                   help="cvxpy (Clarabel/SCS), fast (proximal gradient with a Newton polish), auto: fast, "
                        f"and cvxpy too (up to K = {ufm_program.AUTO_CVXPY_MAX_K}) when the fast answer is not "
                        "certified; every answer's accuracy is certified and printed")
    p.add_argument("--name", default=None, help="output stem (default: from the arguments)")
    p.add_argument("--out_dir", default="opt_results")
    p.add_argument("--plot_dir", default="plots")
    p.add_argument("--dry_run", action="store_true",
                   help="solve nothing: print the program's size, the solver, and whether its result exists")
    return p.parse_args(argv)


def check_args(args):
    if len(args.cluster_s) != len(args.sample_s):
        raise UserError(f"--cluster_s and --sample_s: {len(args.cluster_s)} and {len(args.sample_s)} values; "
                        "give one sample size per cluster")
    utils.check_positive_ints("--cluster_s", args.cluster_s)
    utils.check_positive_ints("--sample_s", args.sample_s)
    if sum(args.cluster_s) < 2:
        raise UserError("--cluster_s: the program needs at least two classes in all")
    if not args.lam > 0:  # at lambda = 0 the infimum is not attained (Z grows without bound)
        raise UserError(f"--lam/--reg_z: {args.lam} is not allowed; lambda must be a number > 0")
    utils.check_nonneg("--reg_b", args.reg_b)
    for flag, value in (("--lam/--reg_z", args.lam), ("--reg_b", args.reg_b)):
        if value > LAM_MAX:
            raise UserError(f"{flag} {value:g}: at most {LAM_MAX:g} (every collapse threshold sqrt(n_c)/N is at most "
                            "1; "
                            "far beyond it the solvers fail)")
    if args.name is not None:
        check_file_name("--name", args.name)
    utils.ensure_writable_dir(args.out_dir, "--out_dir")
    utils.ensure_writable_dir(args.plot_dir, "--plot_dir")
    return args.name or ("ufm_c" + "-".join(map(str, args.cluster_s)) + "_n" + "-".join(map(str, args.sample_s))
                         + f"_lam{args.lam:g}_b{args.reg_b:g}")


def check_file_name(name, value):
    """One file name: not empty, no path separator or newline, at most 100 characters."""
    if not value or len(value) > 100 or value in (".", "..") or any(c in value for c in "/\\\n\r\0"):
        raise UserError(f"{name} {value[:40]!r}: give one file name (1-100 characters, no / or newline)")


def cluster_report(sol, n, clusters, thresholds, lam, lam_b):
    """Per cluster: threshold, whether theory says it collapses, the spread found, the certified
    interval [spread_lower, spread_upper] of the optimum's spread, and the verdict it supports:
    'apart' (the optimum's spread is certainly > 0), 'collapsed' (certainly <= COLLAPSE_TOL *
    max(|Z|_F, 1), on the collapsing side of the threshold), or 'within solver accuracy of the
    threshold' (neither can be certified: the optimum may be apart by less than the accuracy)."""
    Z, b = np.asarray(sol["Z"]), np.asarray(sol["b"])
    tol = COLLAPSE_TOL * max(np.linalg.norm(Z), 1.0)
    rows = []
    for c, t in zip(clusters, thresholds):
        if len(c) > 1:
            spread = ana_utils.minority_spread(Z, c)
            lo, hi = ufm_certificate.ufm_spread_bounds(Z, b, n, lam, lam_b, c)
            verdict = ("apart" if lo > 0 else "collapsed" if hi <= tol and lam >= t
                       else "within solver accuracy of the threshold")
        else:
            spread, lo, hi, verdict = 0.0, 0.0, 0.0, "single class"
        rows.append({"classes": c, "threshold": t, "theory_collapse": None if t is None else bool(lam >= t),
                     "spread": spread, "spread_lower": lo, "spread_upper": hi, "verdict": verdict,
                     "collapsed": verdict == "collapsed"})
    return rows


def main(argv=None):
    args = parse_args(argv)
    name = check_args(args)
    n, clusters = theory_formulas.expand_clusters(args.cluster_s, args.sample_s)
    utils.set_threads(len(n) ** 2)  # K x K matrices: one thread until K is in the hundreds
    thresholds = theory_formulas.cluster_thresholds(args.cluster_s, args.sample_s)
    if args.dry_run:
        done = os.path.exists(os.path.join(args.out_dir, name + ".json"))
        print(f"{name}: K = {len(n)}, N = {sum(n)}, lambda = {args.lam:g}; solver {args.solver}; "
              f"{'finished (' + os.path.join(args.out_dir, name + '.json') + ')' if done else 'not solved yet'}; "
              "nothing to train (the solve is the whole run)")
        return

    sol = ufm_program.solve_ufm(n, args.lam, args.reg_b, solver=args.solver)
    Z, b = np.asarray(sol["Z"]), np.asarray(sol["b"])
    report = cluster_report(sol, n, clusters, thresholds, args.lam, args.reg_b)

    np.set_printoptions(precision=4, suppress=True, linewidth=150)
    print(f"K = {len(n)}, N = {sum(n)}, lambda = {args.lam:g}, lambda_b = {args.reg_b:g}; "
          f"solver {sol['solver']}: {sol['status']} (certified relative accuracy {sol['accuracy']:.1e}) "
          f"in {sol['solve_time']:.2f} s")
    # rounded to the printed digits, + 0.0: no "-0." for entries that are zero up to solver accuracy
    print(f"Z (classes as columns):\n{np.round(Z, 4) + 0.0}\nb = {np.round(b, 4) + 0.0}\n"
          f"objective = {sol['objective']:.10g}")
    for i, r in enumerate(report):
        t = "single class" if r["threshold"] is None else f"threshold {r['threshold']:.6g}"
        print(f"cluster {i} (classes {r['classes'][0]}-{r['classes'][-1]}, n = {n[r['classes'][0]]}): {t}; "
              f"{r['verdict']} (spread {r['spread']:.3g}; optimum's spread certified in "
              f"[{r['spread_lower']:.3g}, {r['spread_upper']:.3g}])")
    live = [t for t in thresholds if t is not None]
    if live and args.lam >= max(live):
        print(f"warning: lambda = {args.lam:g} is above every cluster's threshold (largest {max(live):.6g}); "
              f"every cluster collapses, and here Z = 0 is the trivial answer (||Z|| = {np.linalg.norm(Z):.3g})",
              file=sys.stderr)

    npz = os.path.join(args.out_dir, name + ".npz")
    summary = os.path.join(args.out_dir, name + ".json")
    png = os.path.join(args.plot_dir, name + ".png")
    utils.atomic_savez(npz, Z=Z, b=b, n=np.asarray(n), lam=args.lam, lam_b=args.reg_b, objective=sol["objective"],
                       cluster_s=np.asarray(args.cluster_s), sample_s=np.asarray(args.sample_s))
    utils.atomic_write_json(summary, {"cluster_s": args.cluster_s, "sample_s": args.sample_s, "n": n, "lam": args.lam,
                                      "lam_b": args.reg_b, "Z": Z, "b": b, "objective": sol["objective"],
                                      "solver": sol["solver"], "status": sol["status"], "accuracy": sol["accuracy"],
                                      "solve_time": sol["solve_time"],
                                      "clusters": report})
    plot_utils.save_z_heatmap(Z, args.cluster_s, f"Z of the convex program, λ = {args.lam:g}", png)
    print("wrote:\n  " + "\n  ".join([npz, summary, png]))


if __name__ == "__main__":
    utils.cli(main)
