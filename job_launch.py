"""Launching a sweep's missing runs as a submitit job array (--launch local|slurm) and waiting for them."""
import argparse
import os
import shlex
import sys

import figure_args
import figure_points
import launcher
import point_records
import result_files
from utils import UserError


def job_argv(argv):
    """The script's command line without the launcher's own options (--launch, --wait, --slurm_*)."""
    launcher = argparse.ArgumentParser(add_help=False)
    for flags, kw in figure_args.LAUNCH_ARGS:
        launcher.add_argument(*flags, **kw)
    return launcher.parse_known_args(argv)[1]


def slurm_parameters(args):
    """submitit SlurmExecutor parameters of the launcher's options (--slurm_extra as sbatch options): the
    warning signal (USR2) comes launcher.signal_delay_s before the time limit."""
    options = dict(time=args.slurm_time, additional_parameters=dict(kv.split("=", 1) for kv in args.slurm_extra),
                   signal_delay_s=launcher.signal_delay_s(args.slurm_time, args.slurm_signal_delay))
    for key in ("partition", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism"):
        if getattr(args, "slurm_" + key) is not None:
            options[key] = getattr(args, "slurm_" + key)
    return options


def visible_gpus():
    """Indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES when it lists indices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and all(p.strip().isdigit() for p in listed.split(",") if p.strip()):
        return [int(p) for p in listed.split(",") if p.strip()]
    import torch
    return list(range(torch.cuda.device_count()))


def launch_points(runs, args, argv, script=None):
    """Submit every unfinished run as a job (one job array) that runs this script's command line with
    --point I, print the job ids and the command that assembles the figure; with --wait, wait for
    them, otherwise end the script. A job warned of its time limit or a preemption requeues itself
    (launcher.PointJob). With --wait, a job that failed for good or a run left unfinished is named with
    its log and, unless --partial, the script ends with exit status 1, writing no figure (launching again
    resumes the run from its checkpoint). The launcher's logs go to <models_dir>/launcher/.
    script: the script the jobs run (default <figure>_main.py beside this file)."""
    import cloudpickle  # lazily, as submitit (which brings it): only launching needs them
    import submitit
    result_files.ensure_writable_dir(args.plot_dir, "--plot_dir")
    folder = os.path.join(result_files.ensure_writable_dir(args.models_dir, "--models_dir"), "launcher", "%j")
    script = script or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{runs[0]['figure']}_main.py")
    base = [sys.executable, script] + job_argv(argv)
    todo = [i for i, run in enumerate(runs) if point_records.finished_record(args.models_dir, run) is None]
    assemble = shlex.join(["python", os.path.relpath(script)] + job_argv(argv) + ["--assemble"])
    if not todo:
        print(f"all {len(runs)} runs are finished; nothing to launch")
        return
    cloudpickle.register_pickle_by_value(launcher)  # the jobs need not find launcher.py on their path
    grace = launcher.stop_grace_s(launcher.signal_delay_s(args.slurm_time, args.slurm_signal_delay))
    commands = [launcher.PointJob(base + ["--point", str(i)], os.getcwd(), args.slurm_max_requeues, grace)
                for i in todo]
    if args.launch == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.slurm_max_requeues)
        except RuntimeError as e:  # no srun here
            raise UserError(f"--launch slurm: {e}; use --launch local on a machine without SLURM") from None
        executor.update_parameters(**slurm_parameters(args))
        jobs = executor.submit_array(commands)
    else:  # one job per run, all at once, each on its own GPU (round robin) when several are visible
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.slurm_max_requeues)
        gpus = visible_gpus()
        jobs = []
        for k, command in enumerate(commands):
            executor.update_parameters(timeout_min=args.slurm_time, gpus_per_node=1 if gpus else 0,
                                       visible_gpus=[gpus[k % len(gpus)]] if gpus else [])
            jobs.append(executor.submit(command))
    for i, job in zip(todo, jobs):
        print(f"run {i} ({figure_points.describe_point(runs[i])}): job {job.job_id}, log {job.paths.stderr}")
    print(f"submitted {len(jobs)} {args.launch} jobs; when they are done, assemble the figure with:\n  {assemble}")
    if not args.wait:
        raise SystemExit(0)
    failed = launcher.wait_for_jobs(jobs, args.launch == "slurm")
    for k, (i, job) in enumerate(zip(todo, jobs)):
        if k not in failed and point_records.finished_record(args.models_dir, runs[i]) is None:
            failed[k] = "it ended without finishing its run"
        if k in failed:
            print(f"run {i} ({figure_points.describe_point(runs[i])}): job {job.job_id} failed for good: {failed[k]}; "
                  f"log {job.paths.stderr}", file=sys.stderr)
    if failed and not getattr(args, "partial", False):  # --partial: the figure of the finished runs
        launcher.fail(f"{len(failed)} of {len(jobs)} jobs failed (named above), so no figure is written; "
                      f"launching again resumes their runs from their checkpoints")
