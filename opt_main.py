"""Solve the convex program of the unconstrained feature model (theory.md section 2).

    python opt_main.py --cluster_s 3 3 4 --sample_s 5000 4000 3000 --lam 0.005 --reg_b 0.01

Prints Z (classes as columns), b, the objective with its certified accuracy and, per cluster, its
collapse threshold sqrt(n_c)/N and the verdict the certified accuracy supports (collapsed, apart,
or within solver accuracy of the threshold); writes opt_results/NAME.npz and NAME.json and plots Z
with the cluster boundaries into plots/NAME.png.

    python opt_main.py --profile exp --ratio 100 --num_classes 10 --n_max 5000 --lam 0.001 --loss ldam
    python opt_main.py --cluster_s 5 5 --sample_s 500 100 --lam 0.002 0.003 0.004 --oversample 1 3
    python opt_main.py --cluster_s 5 5 --sample_s 500 100 --lam 0          # the hard-margin program (SELI)

--loss and its parameters solve the re-balanced program (theory.md section 9); several --lam values
are solved as a path (each warm-started from its neighbours' answers, each certified) with one figure of the
minority spread and the cluster cosines; --lam 0 solves the hard-margin program, whose answer is SELI."""
import argparse
import os
import sys
import time

import numpy as np

import ana_utils
import cpu_threads
import figure_theory
import plot_utils
import rebalance_plots
import rebalance_program
import result_files
import seli
import theory_formulas
import ufm_certificate
import ufm_program
import utils
from utils import UserError

COLLAPSE_TOL = 1e-3  # columns closer than this times max(||Z||_F, 1) count as one (solver accuracy)
UNDECIDED = "within solver accuracy of the threshold"
# A plain path point whose certified spread intervals leave a verdict UNDECIDED is solved on to REFINE_TOL: a
# single solve (ufm_program's, polished to rounding) reaches it, so a lambda gets one verdict in a path or alone.
# Measured, exp profile, 20 lambdas: K = 300 151 of 660 verdicts open at 1e-9, 1 at 1e-13 (path 67 s, not 15);
# K = 1000 173 of 2780 open, then 13 (650 s, not 141); with rebalance_program.WARM_SCALING, 1 (37 s) and 9 (407 s);
# with L-BFGS's 10 pairs and one certificate a check, K = 300 1 open (27 s; K = 1000 not measured again).
SOLVE_TOL, REFINE_TOL = 1e-9, 1e-13
# LDAM's threshold is a root of checked solves per cluster, each O(g^3) a step in g distinct sizes: measured 5 s
# for the exp profile K = 100 (g = 98), 3 s at g = 2 (K = 1000), ~17 minutes at g = 247 (K = 300, 33 clusters)
LDAM_MAX_SIZES = 100
LAM_MAX = 1e6  # largest --lam / --reg_b: Clarabel panics at 1e300, and Z = b = 0 long before
# cvxpy/Clarabel's peak memory on the program (ru_maxrss, one thread): 0.13 GB at K = 10, 0.17 at 20, 0.32 at
# 30, 0.65 at 40, 1.37 at 50 (23 min): about 0.12 GB + 210 K^4 bytes (the nuclear norm's PSD cone of side 2K
# gives a dense block of (2K(2K+1)/2)^2 entries; K = 2000 asked for 5.1e14 bytes and aborted the process).
# --solver cvxpy is refused where this exceeds CVXPY_MEMORY_SHARE of the machine's memory: K <= 96 on 24 GB.
CVXPY_BASE_BYTES, CVXPY_BYTES_PER_K4, CVXPY_MEMORY_SHARE = 0.12e9, 210, 0.75


def parse_args(argv):
    p = utils.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster_s", type=int, nargs="+", help="classes in each cluster")
    p.add_argument("--sample_s", type=int, nargs="+", help="samples per class in each cluster")
    p.add_argument("--profile", default=None, help="exp | step: long-tailed sizes instead of --cluster_s/--sample_s")
    p.add_argument("--ratio", type=float, default=100.0, help="--profile: imbalance ratio n_max / n_min")
    p.add_argument("--num_classes", type=int, default=10, help="--profile: number of classes")
    p.add_argument("--n_max", type=int, default=5000, help="--profile: size of the largest class")
    p.add_argument("--lam", "--reg_z", dest="lams", type=float, nargs="+", required=True,
                   help="lambda = 2 sqrt(lam_W lam_H) of the convex program; several: a warm-started certified "
                        "path; 0 (alone): the hard-margin program, whose answer is SELI (--reg_z: the original's "
                        "name)")
    p.add_argument("--reg_b", type=float, default=0.01, help="lambda_b, the bias penalty")
    rebalance_program.add_loss_args(p)
    p.add_argument("--oversample", type=float, nargs="+", default=None, help="a factor >= 1 per cluster")
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
    """Checks every argument before any work; sets args.cluster_s/sample_s from --profile and args.loss_obj
    (the loss's vectors for the sizes as solved). Returns the output stem."""
    layout_from_profile(args)
    if len(args.cluster_s) != len(args.sample_s):
        raise UserError(f"--cluster_s and --sample_s: {len(args.cluster_s)} and {len(args.sample_s)} values; "
                        "give one sample size per cluster")
    utils.check_positive_ints("--cluster_s", args.cluster_s)
    utils.check_positive_ints("--sample_s", args.sample_s)
    if sum(args.cluster_s) < 2:
        raise UserError("--cluster_s: the program needs at least two classes in all")
    if args.solver == "cvxpy":
        check_cvxpy_size(sum(args.cluster_s))
    lams = args.lams
    utils.check_distinct("--lam/--reg_z", lams)
    if any(not v >= 0 for v in lams) or (0 in lams and len(lams) > 1):  # 0 alone: the hard-margin program
        bad = next((v for v in lams if not v >= 0), 0.0)
        raise UserError(f"--lam/--reg_z: {bad} is not allowed; lambda must be a number > 0 (or 0 alone: the "
                        "hard-margin program)")
    utils.check_nonneg("--reg_b", args.reg_b)
    for flag, value in [("--lam/--reg_z", v) for v in lams] + [("--reg_b", args.reg_b)]:
        if value > LAM_MAX:
            raise UserError(f"{flag} {value:g}: at most {LAM_MAX:g} (every collapse threshold sqrt(n_c)/N is "
                            "at most 1; far beyond it the solvers fail)")
    over = None
    if args.oversample is not None:
        if len(args.oversample) != len(args.cluster_s):
            raise UserError(f"--oversample: {len(args.oversample)} values; give one factor per cluster "
                            f"({len(args.cluster_s)})")
        over = np.repeat(args.oversample, args.cluster_s)
    n, _ = theory_formulas.expand_clusters(args.cluster_s, args.sample_s)
    args.loss_obj = rebalance_program.loss_from_args(args, n, over)
    if lams == [0] and args.loss in ("ldam", "vector_scaling"):
        raise UserError(f"--lam/--reg_z 0 with --loss {args.loss}: the hard-margin program is solved for "
                        "cross_entropy, class_balanced and logit_adjusted (weights and offsets drop out); margins and "
                        "scales change it")
    if args.name is not None:
        check_file_name("--name", args.name)
    result_files.ensure_writable_dir(args.out_dir, "--out_dir")
    result_files.ensure_writable_dir(args.plot_dir, "--plot_dir")
    return args.name or default_name(args)


def cvxpy_max_k(memory_bytes):
    """The largest K whose cvxpy/Clarabel solve fits in CVXPY_MEMORY_SHARE of memory_bytes."""
    return int(((CVXPY_MEMORY_SHARE * memory_bytes - CVXPY_BASE_BYTES) / CVXPY_BYTES_PER_K4) ** 0.25)


def check_cvxpy_size(K, memory_bytes=None):
    """--solver cvxpy only up to the K whose estimated memory fits this machine: refused before solving."""
    memory_bytes = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if K > cvxpy_max_k(memory_bytes):
        need = CVXPY_BASE_BYTES + CVXPY_BYTES_PER_K4 * float(K) ** 4
        raise UserError(f"--solver cvxpy at K = {K}: Clarabel would need about {need / 1e9:,.1f} GB (0.12 GB + "
                        f"210 K^4 bytes, measured), so this machine's {memory_bytes / 1e9:.0f} GB allow K <= "
                        f"{cvxpy_max_k(memory_bytes)}; use --solver fast or auto (the fast solver takes K = 1000 "
                        "and more)")


def layout_from_profile(args):
    """--profile exp|step: the long-tailed sizes as clusters of equal consecutive sizes; else both
    --cluster_s and --sample_s are needed."""
    if args.profile is None:
        for flag, v in (("--cluster_s", args.cluster_s), ("--sample_s", args.sample_s)):
            if v is None:
                raise UserError(f"{flag}: required (with --cluster_s / --sample_s), or give --profile exp|step")
        return
    if args.cluster_s is not None or args.sample_s is not None:
        raise UserError("--profile: give either --profile or --cluster_s/--sample_s, not both")
    sizes = utils.profile_sizes(args.profile, args.ratio, args.num_classes, args.n_max)
    args.cluster_s, args.sample_s = [], []
    for v in sizes:
        if args.sample_s and args.sample_s[-1] == v:
            args.cluster_s[-1] += 1
        else:
            args.cluster_s.append(1)
            args.sample_s.append(v)


def default_name(args):
    """The output stem from the arguments (the original's form for one lambda, cross-entropy, clusters)."""
    lay = (f"ufm_{args.profile}{args.ratio:g}_K{args.num_classes}_n{args.n_max}" if args.profile else
           "ufm_c" + "-".join(map(str, args.cluster_s)) + "_n" + "-".join(map(str, args.sample_s)))
    lams = args.lams
    lam = f"_lam{lams[0]:g}" if len(lams) == 1 else f"_path{min(lams):g}-{max(lams):g}x{len(lams)}"
    loss = "" if args.loss == "cross_entropy" else "_" + args.loss + "".join(
        f"_{v:g}" for v in args.loss_obj["params"].values())
    over = "" if args.oversample is None else "_os" + "-".join(f"{v:g}" for v in args.oversample)
    return lay + lam + f"_b{args.reg_b:g}" + loss + over


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
    bounds = ufm_certificate.ufm_clusters_spread_bounds(Z, b, n, lam, lam_b, clusters)
    for c, t, (lo, hi) in zip(clusters, thresholds, bounds):
        if len(c) > 1:
            spread = ana_utils.minority_spread(Z, c)
            verdict = "apart" if lo > 0 else "collapsed" if hi <= tol and lam >= t else UNDECIDED
        else:
            spread, lo, hi, verdict = 0.0, 0.0, 0.0, "single class"
        rows.append({"classes": c, "threshold": t, "theory_collapse": None if t is None else bool(lam >= t),
                     "spread": spread, "spread_lower": lo, "spread_upper": hi, "verdict": verdict,
                     "collapsed": verdict == "collapsed"})
    return rows


def rebalance_report(sol, clusters, thresholds, lam):
    """cluster_report for the re-balanced program: the spread of its certified answer against
    COLLAPSE_TOL * max(|Z|_F, 1) (no certified interval of the optimum's spread for these losses)."""
    Z = np.asarray(sol["Z"])
    tol = COLLAPSE_TOL * max(np.linalg.norm(Z), 1.0)
    rows = []
    for c, t in zip(clusters, thresholds):
        spread = ana_utils.minority_spread(Z, c) if len(c) > 1 else 0.0
        verdict = "single class" if len(c) < 2 else "collapsed" if spread <= tol else "apart"
        rows.append({"classes": c, "threshold": t, "theory_collapse": None if t is None else bool(lam >= t),
                     "spread": spread, "spread_lower": None, "spread_upper": None, "verdict": verdict,
                     "collapsed": verdict == "collapsed"})
    return rows


def plain(args):
    """Cross-entropy without oversampling: the original program, with its certified spread intervals."""
    return args.loss == "cross_entropy" and args.oversample is None


def thresholds_of(args, sizes, clusters):
    """Each cluster's collapse threshold under the loss (None: one class; LDAM with more than LDAM_MAX_SIZES
    distinct sizes: not computed)."""
    if plain(args):
        return theory_formulas.cluster_thresholds(args.cluster_s, args.sample_s)
    if args.loss == "ldam" and len(set(sizes)) > LDAM_MAX_SIZES:
        return [None] * len(clusters)
    return [rebalance_program.collapse_threshold(sizes, args.loss_obj, c, args.reg_b) if len(c) > 1 else None
            for c in clusters]


def cluster_line(i, r, sizes):
    """One printed line of a cluster's report row: its threshold, verdict and spread."""
    c = r["classes"]
    if len(c) < 2:
        return f"cluster {i} (class {c[0]}, n = {sizes[c[0]]}): single class (cannot collapse)"
    t = (f"threshold {r['threshold']:.6g}" if r["threshold"] is not None else
         f"threshold not computed (LDAM beyond {LDAM_MAX_SIZES} distinct sizes)")
    bounds = "" if r["spread_lower"] is None else \
        f"; optimum's spread certified in [{r['spread_lower']:.3g}, {r['spread_upper']:.3g}]"
    return (f"cluster {i} (classes {c[0]}-{c[-1]}, n = {sizes[c[0]]}): {t}; "
            f"{r['verdict']} (spread {r['spread']:.3g}{bounds})")


def solve(args, sizes, lam, Z0=None, b0=None, tol=SOLVE_TOL):
    """One certified answer at lam (warm-started from Z0, b0 when given: rebalance_program's solver, whose
    warm start is a proximal step from Z0)."""
    if not plain(args) or Z0 is not None:
        return rebalance_program.solve_rebalance(sizes, args.loss_obj, lam, args.reg_b, solver=args.solver,
                                                 tol=tol, Z0=Z0, b0=b0)
    return ufm_program.solve_ufm(sizes, lam, args.reg_b, solver=args.solver, tol=tol)


def solve_path_point(args, sizes, clusters, thresholds, lam, Z0, b0):
    """A path point (warm-started from Z0, b0) with its cluster report ("clusters"); for the plain program
    and the fast solver, solved on from its answer to REFINE_TOL when its certified spread intervals leave a
    verdict open (the better certified answer kept, its status against SOLVE_TOL, its time both solves')."""
    sol = solve(args, sizes, lam, Z0, b0)
    report = report_of(args, sol, sizes, clusters, thresholds, lam)
    settled = sol["accuracy"] <= REFINE_TOL or UNDECIDED not in [r["verdict"] for r in report]
    if not plain(args) or args.solver == "cvxpy" or settled:      # (Clarabel again would give the same answer)
        return dict(sol, clusters=report)
    fine = solve(args, sizes, lam, sol["Z"], sol["b"], tol=REFINE_TOL)
    time_both = sol["solve_time"] + fine["solve_time"]
    if fine["accuracy"] >= sol["accuracy"]:
        return dict(sol, clusters=report, solve_time=time_both)
    return dict(fine, status="optimal" if fine["accuracy"] <= SOLVE_TOL else "inaccurate", solve_time=time_both,
                clusters=report_of(args, fine, sizes, clusters, thresholds, lam))


def report_of(args, sol, sizes, clusters, thresholds, lam):
    if plain(args):
        return cluster_report(sol, sizes, clusters, thresholds, lam, args.reg_b)
    return rebalance_report(sol, clusters, thresholds, lam)


def common_record(args, n, sizes):
    """The JSON fields every result of opt_main holds: the layout, the sizes as solved and the loss."""
    return {"cluster_s": args.cluster_s, "sample_s": args.sample_s, "n": n, "sizes": sizes, "lam_b": args.reg_b,
            "loss": args.loss_obj, "profile": None if args.profile is None else
            {"profile": args.profile, "ratio": args.ratio, "num_classes": args.num_classes, "n_max": args.n_max}}


def main(argv=None):
    args = parse_args(argv)
    name = check_args(args)
    n, clusters = theory_formulas.expand_clusters(args.cluster_s, args.sample_s)
    sizes = [int(v) if float(v).is_integer() else v for v in args.loss_obj["sizes"]]
    cpu_threads.set_threads(len(n) ** 2)  # K x K matrices: one thread until K is in the hundreds
    if args.dry_run:
        done = os.path.exists(os.path.join(args.out_dir, name + ".json"))
        state = f"finished ({os.path.join(args.out_dir, name + '.json')})" if done else "not solved yet"
        print(f"{name}: K = {len(n)}, N = {sum(sizes)}, lambda = {' '.join(f'{v:g}' for v in args.lams)}; solver "
              f"{args.solver}; {state}; "
              "nothing to train (the solve is the whole run)")
        return
    if args.lams == [0]:
        return solve_hard_margin(args, name, n, sizes)
    thresholds = thresholds_of(args, sizes, clusters)
    if len(args.lams) > 1:
        return solve_path(args, name, n, sizes, clusters, thresholds)
    lam = args.lams[0]
    sol = solve(args, sizes, lam)
    Z, b = np.asarray(sol["Z"]), np.asarray(sol["b"])
    report = report_of(args, sol, sizes, clusters, thresholds, lam)

    np.set_printoptions(precision=4, suppress=True, linewidth=150)
    loss = "" if plain(args) else f", loss {args.loss} {args.loss_obj['params']}, sizes as solved {sizes}"
    print(f"K = {len(n)}, N = {sum(sizes)}, lambda = {lam:g}, lambda_b = {args.reg_b:g}{loss}; "
          f"solver {sol['solver']}: {sol['status']} (certified relative accuracy {sol['accuracy']:.1e}) "
          f"in {sol['solve_time']:.2f} s")
    # rounded to the printed digits, + 0.0: no "-0." for entries that are zero up to solver accuracy
    print(f"Z (classes as columns):\n{np.round(Z, 4) + 0.0}\nb = {np.round(b, 4) + 0.0}\n"
          f"objective = {sol['objective']:.10g}")
    for i, r in enumerate(report):
        print(cluster_line(i, r, sizes))
    live = [t for t in thresholds if t is not None]
    if live and len(live) == len(thresholds) and lam >= max(live):     # no single class, every threshold known
        print(f"warning: lambda = {lam:g} is above every cluster's threshold (largest {max(live):.6g}); "
              f"every cluster collapses, and here Z = 0 is the trivial answer (||Z|| = {np.linalg.norm(Z):.3g})",
              file=sys.stderr)
    dist = seli.geometry_distances(Z, sizes)
    print(f"distance (1 - cos) of Z to SELI / the ETF's logits: {dist['seli']['Z']:.3g}; classifier Gram to SELI "
          f"{dist['seli']['gram_W']:.3g}, to the ETF {dist['etf']['gram_W']:.3g}")

    npz = os.path.join(args.out_dir, name + ".npz")
    summary = os.path.join(args.out_dir, name + ".json")
    png = os.path.join(args.plot_dir, name + ".png")
    result_files.atomic_savez(npz, Z=Z, b=b, n=np.asarray(n), lam=lam, lam_b=args.reg_b, objective=sol["objective"],
                       cluster_s=np.asarray(args.cluster_s), sample_s=np.asarray(args.sample_s),
                       sizes=np.asarray(sizes))
    result_files.atomic_write_json(summary, dict(common_record(args, n, sizes), lam=lam, Z=Z, b=b,
                                                 objective=sol["objective"],
                                          solver=sol["solver"], status=sol["status"], accuracy=sol["accuracy"],
                                          solve_time=sol["solve_time"], clusters=report, distances=dist))
    plot_utils.save_z_heatmap(Z, args.cluster_s, f"Z of the convex program, λ = {lam:g}", png)
    print("wrote:\n  " + "\n  ".join([npz, summary, png]))


def solve_hard_margin(args, name, n, sizes):
    """--lam 0: min ||Z D^{1/2}||_* s.t. z_kk - z_jk >= 1 (SELI). Clarabel up to K = 20 (or --solver cvxpy),
    else its known answer I - 11^T/K; either way checked by SELI's exact dual certificate."""
    K = len(sizes)
    cert = seli.seli_certificate(sizes)
    if args.solver == "cvxpy" or K <= ufm_program.AUTO_CVXPY_MAX_K:
        sol = seli.solve_seli_cvxpy(sizes)
        Z, solver = sol["Z_centred"], sol["solver"]
    else:
        Z, solver = seli.seli_logits(K), "SELI formula with its dual certificate"
    Zn = Z / np.linalg.norm(Z)
    err = float(np.abs(Z - seli.seli_logits(K)).max())
    dist = seli.geometry_distances(Z, sizes)
    print(f"K = {K}, N = {sum(sizes)}: the hard-margin program (lambda = 0), solver {solver}; centred Z = I - 11^T/K "
          f"to {err:.1e} (max entry); SELI's dual certificate: {'optimal' if cert['certified'] else 'NOT certified'} "
          f"(objective {cert['objective']:.10g}, dual {cert['dual']:.10g}, smallest alpha {cert['min_alpha']:.3g})")
    np.set_printoptions(precision=4, suppress=True, linewidth=150)
    print(f"Z centred and normalised (classes as columns):\n{np.round(Zn, 4) + 0.0}")
    summary = os.path.join(args.out_dir, name + ".json")
    png = os.path.join(args.plot_dir, name + ".png")
    result_files.atomic_write_json(summary, dict(common_record(args, n, sizes), lam=0.0, program="hard-margin (SELI)",
                                          Z=Z, Z_normalised=Zn, max_error_to_seli=err, certificate=cert,
                                          solver=solver, distances=dist))
    plot_utils.save_z_heatmap(Zn, args.cluster_s, "Z of the hard-margin program (SELI), centred, normalised", png)
    print("wrote:\n  " + "\n  ".join([summary, png]))


def solve_path(args, name, n, sizes, clusters, thresholds):
    """Several lambdas: solved from the smallest up, each warm-started from its neighbours' answers
    (rebalance_program.lambda_path) and certified; one figure of the minority spread and the cluster cosines."""
    t0 = time.perf_counter()
    sols = rebalance_program.lambda_path(
        args.lams, lambda lam, Z0, b0: solve_path_point(args, sizes, clusters, thresholds, lam, Z0, b0))
    total = time.perf_counter() - t0
    minority = min((c for c in clusters if len(c) > 1), key=lambda c: sizes[c[0]], default=clusters[-1])
    points = []
    for lam, sol in zip(args.lams, sols):
        Z = np.asarray(sol["Z"])
        points.append(dict(figure_theory.z_summary(Z, clusters, minority), lam=lam, Z=Z, b=sol["b"],
                           objective=sol["objective"], status=sol["status"], accuracy=sol["accuracy"],
                           solve_time=sol["solve_time"], distances=seli.geometry_distances(Z, sizes),
                           clusters=sol["clusters"]))
        print(f"lambda = {lam:.6g}: {sol['status']} (certified {sol['accuracy']:.1e}) in {sol['solve_time']:.2f} s; "
              f"minority spread {points[-1]['minority_spread']:.4g}, ||Z|| = {points[-1]['z_norm']:.4g}")
    print(f"path of {len(sols)} lambdas in {total:.2f} s")
    summary = os.path.join(args.out_dir, name + ".json")
    png = os.path.join(args.plot_dir, name + ".png")
    record = dict(common_record(args, n, sizes), lam=args.lams, path=points, minority=minority,
                  thresholds=thresholds, path_time=total)
    result_files.atomic_write_json(summary, record)
    rebalance_plots.save_path_figure(record, png)
    print("wrote:\n  " + "\n  ".join([summary, png]))


if __name__ == "__main__":
    utils.cli(main)
