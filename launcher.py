"""The job of one run under --launch: runs the script with --point I; at SLURM's warning signal (a time limit
or a preemption ahead) the run checkpoints and the job requeues itself, at most a stated number of times;
and waiting for the jobs, naming each one that failed for good with its log."""
import re
import signal
import subprocess
import sys
import time

import stop_signals

STOPPED_STATUS = stop_signals.STOPPED_STATUS  # copied here: PointJob travels by value to jobs that may not import utils
STOP_SIGNAL = signal.SIGUSR2  # submitit's warning signal (sbatch --signal=USR2@<delay>)
RUN_STOP_SIGNALS = (signal.SIGUSR2,)  # what a --point run checkpoints at its epoch's end and stops on
DEFAULT_MAX_REQUEUES = 10
MAX_SIGNAL_DELAY_S = 90  # submitit's default
# squeue states of a job that has ended (a requeued job is PENDING or REQUEUED again, not ended)
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT"}


def signal_delay_s(time_min, given=None):
    """Seconds before the time limit at which SLURM is asked to warn a job: `given`, else a sixth of the limit
    between 10 s and 90 s (submitit's default). slurmctld looks at the limits every 30 s and warns when the
    limit is less than delay + 30 s away, so a 1-minute job is warned after 20-50 s, at least 30 s before
    it is killed."""
    return given if given is not None else min(MAX_SIGNAL_DELAY_S, max(10, time_min * 60 // 6))


def stop_grace_s(delay_s):
    """How long a warned job waits for its run to checkpoint and stop before requeueing: the warning's delay
    less 5 s for the requeue itself, at least 20 s (slurmctld kills 30 s after its warning at the soonest)."""
    return max(20, delay_s - 5)


class PointJob:
    """The job of one run: `command` (the script with --point I) in `cwd`. submitit calls checkpoint() at the
    warning signal: the run is told to checkpoint at the end of its epoch and stop (stop_signals.stop_on_signals),
    and the job is requeued as attempt requeues + 1, unless it was requeued max_requeues times already (then it
    fails, its checkpoint kept). Stdlib only (pickled by value, see job_launch.launch_points)."""

    def __init__(self, command, cwd, max_requeues, grace_s, requeues=0):
        self.command, self.cwd, self.max_requeues, self.grace_s, self.requeues = (
            list(command), cwd, max_requeues, grace_s, requeues)
        self._proc = None

    def __getstate__(self):
        return dict(self.__dict__, _proc=None)

    def __call__(self):
        if self.requeues:
            print(f"job requeued {self.requeues} of at most {self.max_requeues} times: the run resumes",
                  file=sys.stderr, flush=True)
        self._proc = subprocess.Popen(self.command, cwd=self.cwd)
        while self._proc.poll() is None:  # poll, not wait(): checkpoint() polls it too, from a signal handler
            time.sleep(0.2)
        rc = self._proc.returncode
        if rc == STOPPED_STATUS:
            raise RuntimeError("the run checkpointed and stopped on SIGUSR2 without this job's warning; launching "
                               "again resumes it")
        if rc:
            raise RuntimeError(f"the run exited with status {rc}; its error is above in this log")
        return rc

    def checkpoint(self):
        """submitit's handler of the warning signal: stop the run (checkpointed), then requeue or fail."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(STOP_SIGNAL)
            end = time.time() + self.grace_s
            while proc.poll() is None and time.time() < end:
                time.sleep(0.2)
            if proc.poll() is None:  # it resumes from its last evaluated epoch instead
                print(f"the run did not stop within {self.grace_s} s; killed", file=sys.stderr, flush=True)
                proc.kill()
                while proc.poll() is None:
                    time.sleep(0.1)
        if self.requeues >= self.max_requeues:
            raise RuntimeError(f"not requeued: this job was requeued {self.requeues} times already, the most "
                               "--slurm_max_requeues allows; its run's checkpoint is kept, launching again resumes it")
        from submitit.helpers import DelayedSubmission  # the job's own process: submitit is loaded
        print(f"requeueing the job ({self.requeues + 1} of at most {self.max_requeues} requeues)",
              file=sys.stderr, flush=True)
        return DelayedSubmission(PointJob(self.command, self.cwd, self.max_requeues, self.grace_s, self.requeues + 1))


def squeue_states(job_ids):
    """{job id: squeue state} of SLURM jobs ('123' or array tasks '123_4'); a job squeue no longer knows
    (ended longer ago than MinJobAge) is absent. None when squeue itself does not answer."""
    states = {}
    for array_id in sorted({j.split("_")[0] for j in job_ids}):
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i %T"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode and "Invalid job id" not in out.stderr:
            return None
        states.update(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    return states


def job_failure(job, slurm, ended_state=None):
    """Why `job` failed for good, '' when it succeeded, or None while it is not over. A SLURM job without a
    result is over when squeue has shown it ended (or forgotten it) at two polls in a row: ended_state."""
    if job.paths.result_pickle.exists() or (not slurm and job.done()):
        try:
            job.result()
            return ""
        except Exception as e:  # the job's own error and traceback are in its log; say the error's line
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            errors = [ln for ln in lines if re.match(r"[\w.]+(Error|Exception): ", ln)]
            return (errors or lines or [type(e).__name__])[-1 if errors else 0]
    return None if ended_state is None else f"it ended ({ended_state}) without a result"


def wait_for_jobs(jobs, slurm, poll_s=5.0):
    """Wait until every job has ended; return {index in jobs: reason} of those that failed for good."""
    waiting, failed, ended_before = set(range(len(jobs))), {}, set()
    while waiting:
        states = squeue_states([jobs[k].job_id for k in waiting]) if slurm else {}
        for k in sorted(waiting):
            state = None if states is None or not slurm else states.get(jobs[k].job_id, "GONE from squeue")
            ended = state is not None and state.split()[0] in ENDED_STATES | {"GONE"}
            reason = job_failure(jobs[k], slurm, state if ended and k in ended_before else None)
            if reason is not None:
                waiting.discard(k)
                if reason:
                    failed[k] = reason
            elif ended:
                ended_before.add(k)
        if waiting:
            time.sleep(poll_s)
    return failed


def fail(message):
    """End the script with `error: message` and exit status 1 (jobs failed: not the user's input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
