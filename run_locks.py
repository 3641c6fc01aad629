"""Run locks: a lock file held by one process at a time, waited for while its owner lives, taken over when it died."""
import contextlib
import os
import socket
import sys
import time

import result_files
from utils import UserError


@contextlib.contextmanager
def run_lock(path, what, wait_s=None, poll_s=2.0):
    """Hold the lock file `path` for `what`: JSON with the owner's host and pid, made with os.link (atomic on NFS).
    A dead process's lock on this host is taken over; a live one's is waited for (saying once who holds it)."""
    mine, t0, told = f"{path}.{socket.gethostname()}.{os.getpid()}", time.time(), False
    result_files.atomic_write_json(mine, {"host": socket.gethostname(), "pid": os.getpid()})
    try:
        while True:
            try:
                os.link(mine, path)
                break
            except FileExistsError:
                owner, gone = None, False
            try:  # owner None while unreadable; PermissionError: alive (another user's)
                raw = result_files.read_json(path)
                owner = {"host": str(raw["host"]), "pid": int(raw["pid"])}
                if owner["host"] == socket.gethostname():  # a pid can be checked on its own host only
                    os.kill(owner["pid"], 0)
            except ProcessLookupError:
                gone = True
            except (UserError, KeyError, TypeError, ValueError, PermissionError):
                pass
            if gone:
                print(f"note: taking over the stale lock {path} of pid {owner['pid']} (gone)", file=sys.stderr)
                result_files.remove_leftovers(None, None, [path])
                continue
            holder = f"pid {owner['pid']} on host {owner['host']}" if owner else "another process"
            if wait_s is not None and time.time() - t0 >= wait_s:
                raise UserError(f"{what} is held by {holder} (lock {path}); wait for it, or delete the lock if "
                                "that process is gone")
            if not told:
                print(f"waiting for {holder}, which holds {what} (delete {path} if it is gone)", file=sys.stderr)
            told = True
            time.sleep(poll_s)
    finally:
        os.remove(mine)
    try:
        yield
    finally:
        result_files.remove_leftovers(None, None, [path])
