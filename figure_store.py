"""Where a figure is written: a file stem chosen from what the figure holds, so that no figure replaces a
different one (other points or seeds) or a fuller one of the same runs.

A figure's `key` hashes the configurations of its runs (every point with every seed, in order). The
figure goes to <stem>.json/.png when that is free or holds the same key, else to <stem>_<key>.json/.png;
a figure of the same key is replaced only by one with at least as many finished runs, and is left
byte-identical when the new one says the same (its command line aside)."""
import os
import sys

import plot_utils
import result_files
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
        held = result_files.read_json(json_path)
    except UserError:
        return {}
    return held if isinstance(held, dict) else {}


def _same_result(a, b):
    """Whether two figure results say the same, their command lines aside."""
    return ({k: v for k, v in result_files.to_jsonable(a).items() if k != "argv"}
            == {k: v for k, v in result_files.to_jsonable(b).items() if k != "argv"})


def choose_stem(plot_dir, stem, result):
    """(stem to write `result` as, or None to keep what is there, and the JSON path that then holds it):
    `stem` when free or holding the same key, else `stem`_<key> (module docstring). result: a dict with
    'key' and 'runs': {'finished', 'total'}; the JSON of a stem is plot_dir/<stem>.json."""
    key, finished = result["key"], result["runs"]["finished"]
    for name in (stem, f"{stem}_{key}"):
        js = os.path.join(plot_dir, f"{name}.json")
        held = _held(js)
        if held is not None and held.get("key") != key and name == stem:
            print(f"note: {js} holds a different figure (other points or seeds); kept, this one is {name}_{key}.*",
                  file=sys.stderr)
            continue
        if held and held.get("key") == key:
            kept = (held.get("runs") or {}).get("finished", -1)
            if kept > finished:
                print(f"note: {js} holds this figure with more runs finished ({kept} against {finished} here); "
                      "kept, not replaced", file=sys.stderr)
                return None, js
            if _same_result(held, result):
                return None, js
        return name, js


def write_figure(result, plot_dir, stem):
    """Write result (with its 'key' and 'runs') under plot_dir as choose_stem says; return the PNG and
    JSON paths of the figure that holds it (the new one, or the kept one that is fuller or equal)."""
    name, js = choose_stem(plot_dir, stem, result)
    if name is None:
        return os.path.splitext(js)[0] + ".png", js
    return plot_utils.write_figure(result, plot_dir, name)
