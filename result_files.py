"""Result files: written atomically (fsynced, never half a file), read back, and the run folder's leftovers cleaned."""
import contextlib
import json
import os
import sys
import tempfile

import numpy as np

from utils import UserError


def ensure_writable_dir(path, arg_name):
    """Create `path` if needed; fail with one line naming the argument if it cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{arg_name} {path}: not a writable folder ({e.strerror})") from None
    return path



def atomic_write(path, write):
    """Write `.tmp_<name>.*` beside `path` (fsynced, mode as the umask gives), rename it over `path`, fsync
    the folder: a crash leaves the old or the new file, never an empty one. OSError is a UserError."""
    folder, tmp = os.path.dirname(os.path.abspath(path)), None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp_{os.path.basename(path)}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            mask = os.umask(0o22)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)
        os.replace(tmp, path)
        dfd = os.open(folder, os.O_RDONLY)
        with contextlib.suppress(OSError):  # a durable rename, where the file system can sync folders
            os.fsync(dfd)
        os.close(dfd)
    except BaseException as e:
        remove_leftovers(folder, None, [tmp] if tmp else [])
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}; free space there or choose another "
                            "folder") from None
        raise



def remove_leftovers(folder, name="", also=()):
    """Delete the temporary files `.tmp_<name>*` a killed write left in `folder` (name None: none;
    only while holding the lock of what they belong to) and the files `also`."""
    tmps = [] if name is None else [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(".tmp_" + name)]
    for p in tmps + list(also):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)



def to_jsonable(obj):
    """numpy/torch values -> plain python for json."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # no tensor can exist before torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj



def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(to_jsonable(obj), indent=1).encode()))



def read_json(path):
    """A JSON file, or one line naming it: unreadable, truncated or empty files are UserErrors."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or broken ({type(e).__name__}); move it away to recompute it") from None



def atomic_savez(path, **arrays):
    atomic_write(path, lambda f: np.savez(f, **arrays))



def atomic_torch_save(obj, path):
    import torch
    atomic_write(path, lambda f: torch.save(obj, f))



def atomic_write_csv(path, rows):
    """Rewrite a CSV (header = union of keys in first-seen order) from a list of dict rows."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]}" for c in cols) for r in rows]
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))



def flatten(obj, prefix=""):
    """The scalar leaves of nested dicts and lists as {"a.b.0": value}: one name per number, for
    statistics over seeds and for one-row-per-run tables."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out



def read_csv(path):
    """Rows of a CSV written by atomic_write_csv, numbers parsed."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        cols = lines[0].split(",")
    except (OSError, IndexError, ValueError) as e:
        raise UserError(f"{path} is unreadable or empty ({type(e).__name__}); move its run folder away to "
                        "retrain") from None

    def parse(v):
        try:
            return float(v) if v != "" else None
        except ValueError:
            return v
    return [dict(zip(cols, map(parse, ln.split(",")))) for ln in lines[1:] if ln]
