"""Assembling a figure's JSON from its points' records and saving it with its PNG."""
import sys

import figure_points
import figure_store
import figure_theory


def assemble_figure(figure, settings, points, records, missing, lam_b):
    """The figure's JSON: settings, each finished point with its theory prediction, the missing
    (point, seed) runs."""
    out = []
    for i, rec in enumerate(records):
        if rec is not None:
            theory = figure_theory.ufm_theory(rec["sizes"], rec["clusters"], rec["params"]["lam"], lam_b,
                                          points[i].get("loss"))
            out.append(dict(rec, index=i, **({"scaled": points[i]["scaled"]} if points[i].get("scaled") else {}),
                            theory=theory))
    note = figure_points.scaled_note(points)
    if note:  # what --quick scaled is named on the figure and in its settings
        settings = dict(settings, scaled=note, title=f"{settings['title']} ({note})")
    return {"figure": figure, "argv": sys.argv[1:], "settings": settings, "points": out,
            "missing": [dict(index=i, seed=seed, params=points[i]["params"]) for i, seed in missing]}


def save_figure_result(result, args, stem):
    """Write the figure's JSON and PNG under --plot_dir (the --quick ones with a _quick suffix) as
    figure_store.write_figure does (never over a different or fuller figure) and print their paths."""
    stem += "_quick" if args.quick else ""
    runs = args.figure_runs
    result = dict(result, key=runs["key"], runs=dict(finished=runs["total"] - len(result["missing"]),
                                                     total=runs["total"]))
    for path in figure_store.write_figure(result, args.plot_dir, stem):
        print(path)
