"""The README's layer table is true: every module of the repository root has a row, imports project modules
only from lower layers, and imports none inside a function."""
import ast
import glob
import os
import re

from conftest import ROOT


def layer_table():
    """{module: layer} from the README's Layout table (rows `| N | `a.py`, `b.py` | ... |`)."""
    layers = {}
    for line in open(os.path.join(ROOT, "README.md"), encoding="utf-8"):
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`(\w+)\.py`", m.group(2)):
                layers[name] = int(m.group(1))
    return layers


def project_imports(tree, modules):
    """(line, module, top-level?) of every import of a project module in a parsed file."""
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        out += [(node.lineno, n.split(".")[0], id(node) in top) for n in names if n.split(".")[0] in modules]
    return out


def test_every_module_imports_only_from_lower_layers():
    layers = layer_table()
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert modules <= set(layers), f"modules without a row in the README's layer table: {modules - set(layers)}"
    bad = []
    for m in sorted(modules):
        tree = ast.parse(open(os.path.join(ROOT, m + ".py"), encoding="utf-8").read())
        for line, dep, top_level in project_imports(tree, modules):
            if not top_level:
                bad.append(f"{m}.py:{line}: imports {dep} inside a function")
            elif layers[dep] >= layers[m]:
                bad.append(f"{m}.py:{line}: layer {layers[m]} imports {dep} (layer {layers[dep]})")
    assert not bad, "\n".join(bad)


def test_the_table_check_sees_a_violation():
    """The check itself: an import of a higher layer and one inside a function are both found."""
    tree = ast.parse("import sweep\n\ndef f():\n    import utils\n")
    assert project_imports(tree, {"sweep", "utils"}) == [(1, "sweep", True), (4, "utils", False)]
    assert layer_table()["utils"] == 1 and layer_table()["sweep"] > layer_table()["train_utils"]
