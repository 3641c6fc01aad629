"""Tests import the top-level modules from the repository root and run on the CPU."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_terminal_summary(terminalreporter):
    """One line saying whether tests/test_slurm.py's SLURM tests ran or skipped, and why (CI's log shows it)."""
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, [])
               if "test_slurm.py" in getattr(r, "nodeid", "") and (r.when == "call" or r.skipped)]
    if reports:
        skipped = [r for r in reports if r.skipped]
        why = f": {skipped[0].longrepr[-1]}" if skipped and isinstance(skipped[0].longrepr, tuple) else ""
        terminalreporter.write_line(f"tests/test_slurm.py: {len(reports) - len(skipped)} ran, "
                                    f"{len(skipped)} skipped{why}")
