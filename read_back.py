"""What a file read back must hold (figure JSONs, point records, snapshots, run folders, CSVs): checked
before it is used, the file and its first missing or malformed part named in one line (a UserError).

A spec describes the parts a reader uses: a dict of required keys ("?key": optional, checked when
present), a one-element list [spec] (a list whose every item matches spec), a type or tuple of types,
or one of the tokens below. Only the parts the readers use are required, so older files still pass."""
import os

import numpy as np

import result_files
import snapshot_files
from utils import UserError

NUM = "a number"
NUM_OR_NULL = "a number or null"
MATRIX = "a matrix of numbers"


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _is_number(value, null_ok=False):
    return (null_ok and value is None) or (isinstance(value, (int, float, np.number)) and not isinstance(value, bool))


def _matches(value, token):
    """Whether value matches a token or type spec."""
    if token in (NUM, NUM_OR_NULL):
        return _is_number(value, token == NUM_OR_NULL)
    if token == MATRIX:
        return (isinstance(value, list) and all(isinstance(r, list) and len(r) == len(value[0]) for r in value)
                and all(_is_number(v, True) for r in value for v in r))
    return isinstance(value, token)


def problem(obj, spec, at=""):
    """The first part of obj that spec requires and obj lacks or holds in another form, as a sentence
    ('lacks points[2].Z', 'points[0].Z is a string where a matrix of numbers belongs'); None when obj fits."""
    if isinstance(spec, dict):
        if not isinstance(obj, dict):
            return f"{at or 'the file'} is {_type_name(obj)} where an object belongs"
        for key, sub in spec.items():
            name = key.lstrip("?")
            where = f"{at}.{name}" if at else name
            if name not in obj:
                if key.startswith("?"):
                    continue
                return f"lacks {where}"
            found = problem(obj[name], sub, where)
            if found:
                return found
        return None
    if isinstance(spec, list):
        if not isinstance(obj, list):
            return f"{at} is {_type_name(obj)} where a list belongs"
        return next((p for i, item in enumerate(obj) for p in [problem(item, spec[0], f"{at}[{i}]")] if p), None)
    if not _matches(obj, spec):
        want = spec if isinstance(spec, str) else " or ".join(t.__name__ for t in np.atleast_1d(spec))
        return f"{at} is {_type_name(obj)} where {want} belongs"
    return None


def require(obj, spec, path, what):
    """Raise one line naming the file `path` and the part of `what` (e.g. 'a minority_l figure JSON') it lacks."""
    found = problem(obj, spec)
    if found:
        raise UserError(f"{path}: {found} (needed by {what}); rewrite it with the command that made it")


FIGURE_POINT = {"params": {"lam": NUM}, "sizes": [NUM], "clusters": [[int]], "Z": MATRIX, "z_norm": NUM,
                "theory": {"?z_norm": NUM_OR_NULL}, "?stats": dict, "?seeds": [dict], "?nc": (dict, type(None))}
FIGURE_SPECS = {
    "block": {"points": [dict(FIGURE_POINT, theory={"?z_norm": NUM_OR_NULL, "Z": (list, type(None))})],
              "history": [{"epoch": NUM}]},
    "minority": {"settings": {"x_key": str, "x_label": str}, "?threshold": NUM_OR_NULL,
                 "points": [dict(FIGURE_POINT, minority_spread=NUM, theory={"?z_norm": NUM_OR_NULL, "verdict": str})],
                 "?theory_curve": {"?x": [NUM], "?minority_spread": [NUM_OR_NULL], "?z_norm": [NUM_OR_NULL]}},
    "limit": {"points": [dict(FIGURE_POINT, params={"n_A": NUM},
                              cosines={"within": [NUM_OR_NULL], "across": NUM_OR_NULL})],
              "?theory_curve": {"?x": [NUM], "?within_A": [NUM_OR_NULL], "?within_B": [NUM_OR_NULL],
                                "?across": [NUM_OR_NULL]}},
}
OPT_JSON = {"Z": MATRIX, "cluster_s": [int], "lam": NUM}


def _square(Z, K):
    return len(Z) == K and all(len(row) == K for row in Z)


def _figure_problem(result, kind):
    """What the generic spec cannot say: shapes, the swept key, the curves a plotted axis needs."""
    for i, p in enumerate(result["points"]):
        K = len(p["sizes"])
        if sorted(k for c in p["clusters"] for k in c) != list(range(K)) or not _square(p["Z"], K):
            return f"points[{i}] has clusters or a Z that do not fit its {K} class sizes"
        if kind == "minority" and not _is_number(p["params"].get(result["settings"]["x_key"])):
            return f"lacks points[{i}].params.{result['settings']['x_key']} (the swept value, settings.x_key)"
        if kind == "limit" and len(p["cosines"]["within"]) < 2:
            return f"points[{i}].cosines.within has fewer than 2 clusters"
    if kind == "block" and not result["points"]:
        return "has no trained point (points is empty)"
    curve = result.get("theory_curve") or {}
    need = {"minority": ["minority_spread"], "limit": ["within_A", "within_B", "across"]}.get(kind, [])
    lacking = [k for k in need if curve.get("x") and len(curve.get(k) or []) != len(curve["x"])]
    return f"theory_curve.{lacking[0]} does not match theory_curve.x" if lacking else None


def check_figure_json(path, result, figures=("block", "minority_l", "minority_n", "limit")):
    """A figure JSON (block, minority_l, minority_n, limit) or opt_main's JSON holds what
    plot_utils.plot_figure_json draws; else one line naming the file and the part."""
    if isinstance(result, dict) and "figure" not in result and set(OPT_JSON) & set(result):
        require(result, OPT_JSON, path, "opt_main's Z heat map")
        if not _square(result["Z"], sum(result["cluster_s"])):
            raise UserError(f"{path}: Z is not {sum(result['cluster_s'])}x{sum(result['cluster_s'])} "
                            "as cluster_s says (needed by opt_main's Z heat map)")
        return result
    require(result, {"figure": str, "settings": dict, "points": [dict]}, path,
            f"a figure JSON ({', '.join(figures)}) or opt_main's JSON (cluster_s, Z, lam)")
    if result["figure"] not in figures:
        raise UserError(f"{path}: figure is {result['figure']!r}; replot-figure draws {', '.join(figures)} "
                        "and opt_main's JSON")
    kind = "minority" if result["figure"].startswith("minority") else result["figure"]
    what = f"the {result['figure']} figure"
    require(result, FIGURE_SPECS[kind], path, what)
    found = _figure_problem(result, kind)
    if found:
        raise UserError(f"{path}: {found} (needed by {what}); rewrite it with the command that made it")
    return result


POINT_RECORD = {"params": dict, "Z": MATRIX, "z_norm": NUM_OR_NULL, "minority_spread": NUM_OR_NULL,
                "cosines": {"within": [NUM_OR_NULL], "across": NUM_OR_NULL}, "train": {"seed": int},
                "?nc": (dict, type(None))}


def point_record_problem(record, point):
    """What a figure point's record (sweep.train_point) lacks for assembling and plotting, or None."""
    return problem(record, dict(POINT_RECORD, history=[{"epoch": NUM}]) if point.get("history") else POINT_RECORD)


SNAPSHOT_ARRAYS = ("features", "mix", "y_a", "y_b", "W", "b", "classes")


def load_snapshot(path, what="a mixup projection"):
    """snapshot_files.load_snapshot, checked for the arrays a projection draws and their shapes: features (n, d),
    mix, y_a, y_b (n), W (K, d), b (K), classes (three distinct indices below K)."""
    snap = snapshot_files.load_snapshot(path)
    missing = [k for k in SNAPSHOT_ARRAYS if k not in snap]
    if missing:
        raise UserError(f"{path}: lacks the array{'s' * (len(missing) > 1)} {', '.join(missing)} (needed by {what}; "
                        f"a snapshot holds {', '.join(SNAPSHOT_ARRAYS)}); rewrite it with the command that made it")
    H, W, classes = (np.asarray(snap[k]) for k in ("features", "W", "classes"))
    n, K = (H.shape[0] if H.ndim == 2 else -1), (W.shape[0] if W.ndim == 2 else -1)
    bad = next((f"{k} is {classes.tolist()}" if k == "classes" else f"{k} has shape {np.shape(snap[k])}" for k, ok in (
        ("features", H.ndim == 2), ("W", W.ndim == 2 and W.shape[1] == H.shape[-1]),
        ("mix", np.shape(snap["mix"]) == (n,)), ("y_a", np.shape(snap["y_a"]) == (n,)),
        ("y_b", np.shape(snap["y_b"]) == (n,)), ("b", np.shape(snap["b"]) == (K,)),
        ("classes", classes.shape == (3,) and len(set(classes.tolist())) == 3 and classes.min() >= 0
         and classes.max() < K)) if not ok), None)
    if bad:
        raise UserError(f"{path}: {bad}, which does not fit features {H.shape} and W {W.shape} (needed by {what}; "
                        "classes: three distinct indices below the rows of W); rewrite it with the command that "
                        "made it")
    return snap


def run_config(run_dir, arg="run_dir"):
    """A run folder's config.json as a dict; one line naming the folder or the file otherwise."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise UserError(f"{arg}: no such folder {run_dir}")
    if not os.path.isfile(path):
        raise UserError(f"{arg}: {run_dir} has no config.json (not a run folder)")
    cfg = result_files.read_json(path)
    require(cfg, {}, path, "the run's label and overlay")
    return cfg


def read_csv(path, columns, what, empty_ok=False):
    """The rows of a CSV that must have the given columns and (unless empty_ok) at least one row; one
    line naming the file and the first missing column otherwise."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (needed by {what})")
    rows = result_files.read_csv(path)
    if not rows and empty_ok:
        return rows
    if not rows:
        raise UserError(f"{path}: has no rows (needed by {what}); the run has not finished an evaluated epoch")
    lacking = [c for c in columns if c not in rows[0]]
    if lacking:
        raise UserError(f"{path}: lacks the column {lacking[0]} (needed by {what}); rewrite it with the command "
                        "that made it")
    return rows


def read_json(path, spec, what):
    """A JSON file that must exist and hold spec's parts."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (needed by {what})")
    obj = result_files.read_json(path)
    require(obj, spec, path, what)
    return obj
