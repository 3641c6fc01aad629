"""Stopping a run cleanly on a signal: it checkpoints at the end of its epoch and exits with STOPPED_STATUS."""
import signal

# Exit status of a run stopped by a signal after checkpointing (EX_TEMPFAIL: run it again to go on).
STOPPED_STATUS = 75
_stop_signals = []  # the signals received since stop_on_signals


class Stopped(SystemExit):
    """Raised by a run that checkpointed and stopped on a signal (a cluster's time limit or preemption ahead),
    having said so: the process ends with exit status STOPPED_STATUS once every cleanup has run (locks released);
    the same command resumes the run."""


def stop_on_signals(signums):
    """Make each signal in `signums` ask the training loop to checkpoint at the end of its epoch and raise
    Stopped, instead of killing the process (a job's warning before its time limit, or a preemption)."""
    for signum in signums:
        signal.signal(signum, lambda got, frame: _stop_signals.append(signal.Signals(got).name))


def stop_requested():
    """The name of the first signal asking this process to stop (stop_on_signals), or None."""
    return _stop_signals[0] if _stop_signals else None
