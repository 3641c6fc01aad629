"""Where a figure is written: a file stem chosen from what the figure holds, so that no figure replaces a
different one (other points or seeds) or a fuller one of the same runs.

A figure's `key` hashes the configurations of its runs (every point with every seed, in order). The
figure goes to <stem>.json/.png when that is free or holds the same key, else to <stem>_<key>.json/.png;
a figure of the same key is replaced only by one with at least as many finished runs, and is left
byte-identical when the new one says the same (its command line aside)."""
import os
import sys

import plot_utils
import utils
from utils import UserError


def runs_key(runs):
    """The key of a figure holding these runs (JSON-able point configurations, seeds included)."""
    return utils.config_key([utils.config_key(run) for run in runs])


def _held(json_path):
    """The figure JSON at json_path as a dict, None when there is none, {} when unreadable."""
    if not os.path.exists(json_path):
        return None
    try:
        held = utils.read_json(json_path)
    except UserError:
        return {}
    return held if isinstance(held, dict) else {}


def _same_result(a, b):
    """Whether two figure results say the same, their command lines aside."""
    strip = lambda r: {k: v for k, v in utils.to_jsonable(r).items() if k != "argv"}  # noqa: E731
    return strip(a) == strip(b)


def write_figure(result, plot_dir, stem):
    """Write result (with its 'key' and 'runs': {'finished', 'total'}) under plot_dir as `stem` or
    `stem`_<key> (module docstring); print the two paths of the figure that holds it (the new one,
    or the kept one that is fuller or equal), naming on stderr whatever was kept instead of written."""
    key, finished = result["key"], result["runs"]["finished"]
    for name in (stem, f"{stem}_{key}"):
        png, js = plot_utils.figure_paths(plot_dir, name)
        held = _held(js)
        if held is not None and held.get("key") != key and name == stem:
            print(f"note: {js} holds a different figure (other points or seeds); kept, this one is "
                  f"{os.path.basename(plot_utils.figure_paths(plot_dir, f'{stem}_{key}')[1])}", file=sys.stderr)
            continue
        if held and held.get("key") == key and os.path.exists(png):
            kept = (held.get("runs") or {}).get("finished", -1)
            if kept > finished:
                print(f"note: {js} holds this figure with more runs finished ({kept} against {finished} here); "
                      "kept, not replaced", file=sys.stderr)
                return png, js
            if _same_result(held, result):
                return png, js
        return plot_utils.write_figure(result, plot_dir, name)
