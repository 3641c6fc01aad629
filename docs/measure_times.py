"""Measure the wall time of every command whose time the documentation states, and write docs/timings.json.

docs/timings.json is the one source of those times: the scripts' --help reads it (utils.measured_time), and
the README's times (<!--t:NAME-->...<!--/t--> spans) are rewritten from it by this script. Each command runs
from scratch in its own temporary folders (models, plots, data: nothing reused), one after another, and its
wall and CPU time (the child's, from os.wait4) are recorded with the machine it ran on and the load average
before it started, so that a time measured on a busy machine says so. Run it on an idle machine:

    python docs/measure_times.py                                  # every command, the test suite last
    python docs/measure_times.py --only "minority_l --quick" "opt_main"   # some; the others are kept
"""
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import result_files  # noqa: E402  (the repository's modules, found through the path above)
import utils  # noqa: E402

README = os.path.join(REPO, "README.md")
# a time the README states: <!--t:NAME-->text<!--/t-->, the text rewritten from docs/timings.json
README_TIME = re.compile(r"<!--t:([^>]*)-->(.*?)<!--/t-->")
# name (the key utils.measured_time reads) -> the command line, as the README states it; FIG takes the
# temporary --models_dir/--plot_dir/--data_dir, OPT opt_main's --out_dir/--plot_dir, NONE no folders.
FIG, OPT, NONE = "fig", "opt", "none"
COMMANDS = {
    "opt_main": (OPT, "opt_main.py --cluster_s 5 5 --sample_s 500 100 --lam 0.003"),
    "block --quick": (FIG, "block_main.py --structure 1 --quick"),
    "minority_l --quick": (FIG, "minority_l_main.py --ka 5 --quick"),
    "minority_n --quick": (FIG, "minority_n_main.py --ka 3 --quick"),
    "limit --quick": (FIG, "limit_main.py --quick"),
    "block UFM": (FIG, "block_main.py --structure 1 --network UFM"),
    "minority_l UFM": (FIG, "minority_l_main.py --ka 5 --network UFM"),
    "minority_n UFM": (FIG, "minority_n_main.py --ka 3 --network UFM"),
    "limit UFM": (FIG, "limit_main.py --network UFM"),
    "mixup --quick": (FIG, "mixup_main.py --quick"),
    "mixup --quick --loss mse": (FIG, "mixup_main.py --quick --loss mse"),
    "study --quick": (FIG, "mixup_main.py --study --quick"),
    "rebalance --quick": (FIG, "rebalance_main.py --quick"),
    "test suite": (NONE, "-m pytest -q tests -p no:cacheprovider"),
}


def machine():
    """The machine a time was measured on, in words and fields."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = os.cpu_count()
    return {"summary": f"{cores} CPU cores ({cpu})", "cores": cores, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def run_one(kind, command, tmp):
    """(wall seconds, CPU seconds of the child and its children, exit status) of one command."""
    folders = {OPT: ["--out_dir", os.path.join(tmp, "opt"), "--plot_dir", os.path.join(tmp, "plots")],
               FIG: ["--models_dir", os.path.join(tmp, "models"), "--plot_dir", os.path.join(tmp, "plots"),
                     "--data_dir", os.path.join(tmp, "data")], NONE: []}[kind]
    argv = [sys.executable] + command.split() + folders
    with open(os.path.join(tmp, "stderr"), "w+b") as err:   # a file, not a pipe: a full pipe would block the child
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            err.seek(0)
            print(f"{command}: exit status {rc}\n{err.read().decode()[-2000:]}", file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, rc


def short_time(entry):
    """'≈ 12 s' / '≈ 2.5 min' of a timings entry (wall time), with the load when the machine was busy."""
    wall = float(entry["wall_s"])
    took = f"≈ {wall:.0f} s" if wall < 120 else f"≈ {wall / 60:.1f} min"
    load = entry.get("load_before") or 0
    return took + (f", busy machine: load {load:.0f}" if load >= 1 else "")


def update_readme(timings, path=README):
    """Rewrite every time the README states (README_TIME spans) from `timings`; returns the names not
    measured (their spans say so)."""
    text = open(path, encoding="utf-8").read()
    missing = []

    def replace(m):
        entry = timings["commands"].get(m.group(1))
        if entry is None:
            missing.append(m.group(1))
        return f"<!--t:{m.group(1)}-->{'not measured' if entry is None else short_time(entry)}<!--/t-->"
    result_files.atomic_write(path, lambda f: f.write(README_TIME.sub(replace, text).encode()))
    return missing


def main(argv=None):
    p = utils.ArgumentParser(description="Measure the documented commands and write docs/timings.json.")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="measure these (names: " + ", ".join(f"'{n}'" for n in COMMANDS) + "); keep the others")
    p.add_argument("--out", default=utils.TIMINGS_PATH, help="the JSON to write (default docs/timings.json)")
    p.add_argument("--readme", default=README, help="the README whose time spans are rewritten (default README.md)")
    args = p.parse_args(argv)
    for name in args.only or []:
        if name not in COMMANDS:
            raise utils.UserError(f"--only: unknown command {name!r}; one of {', '.join(COMMANDS)}")
    old = result_files.read_json(args.out) if os.path.exists(args.out) else {}
    here = machine()
    # times measured on another machine are not kept beside new ones: one machine per file
    kept = old.get("commands", {}) if old.get("machine", {}).get("summary") == here["summary"] else {}
    commands = {n: kept[n] for n in COMMANDS if n in kept}
    for name in args.only or list(COMMANDS):
        kind, command = COMMANDS[name]
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="measure_times_") as tmp:
            wall, cpu, rc = run_one(kind, command, tmp)
        commands[name] = {"command": "python " + command, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                          "exit_status": rc, "load_before": round(load, 2),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or None,   # unset: the scripts choose
                          "measured": time.strftime("%Y-%m-%d", time.gmtime())}
        print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load average before {load:.1f}, exit {rc})", flush=True)
    ordered = {n: commands[n] for n in COMMANDS if n in commands}
    result_files.atomic_write_json(args.out, {"machine": here, "commands": ordered})
    missing = update_readme({"machine": here, "commands": ordered}, args.readme)
    print(args.out + ", " + args.readme + (f" (not measured: {', '.join(missing)})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(utils.cli(main) or 0)
