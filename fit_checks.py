"""Whether a trained run learned, from its summary.csv rows: failed (test accuracy near chance, or
a training loss that stopped falling before the network fit its data) and terminal phase (every
clean training example fitted and NC1 still falling). docs/mixup_study.md states the rules.

A failed cell of the mixup study is kept in its table and figures, marked, and left out of the
means over seeds; the terminal phase is what the study's geometry needs (Papyan et al. 2020)."""
import math

# near chance: final test accuracy below CHANCE_FACTOR times chance (1/K): half the way from chance
# to a classifier twice as good as chance is not reached
CHANCE_FACTOR = 2.0
# stalled: over the second half of training the training loss fell by less than STALL_DROP of
# itself while the clean training accuracy stayed below FIT_ACC
STALL_DROP = 0.05
FIT_ACC = 0.99


def _value(row, key):
    v = row.get(key)
    return float(v) if v is not None and v == v else math.nan


def second_half(rows):
    """(row at the middle evaluated epoch, last row): the first row at or after half the training."""
    last = rows[-1]
    mid = next(r for r in rows if r["epoch"] >= last["epoch"] / 2)
    return mid, last


def failure(rows, num_classes):
    """Why a run failed to learn, or None: "chance" (final test_acc < CHANCE_FACTOR / K) or
    "stalled" (loss at the last row > (1 - STALL_DROP) x its value at the middle row, and
    train_acc < FIT_ACC). A run with no rows has failed ("no rows")."""
    if not rows:
        return "no rows"
    mid, last = second_half(rows)
    test_acc = _value(last, "test_acc")
    if test_acc < CHANCE_FACTOR / num_classes:
        return f"chance (test_acc {test_acc:.3g} < {CHANCE_FACTOR:g}/K = {CHANCE_FACTOR / num_classes:.3g})"
    loss_mid, loss_last, fit = _value(mid, "loss"), _value(last, "loss"), _value(last, "train_acc")
    if loss_last > (1 - STALL_DROP) * loss_mid and not fit >= FIT_ACC:
        return (f"stalled (loss {loss_mid:.3g} at epoch {mid['epoch']}, {loss_last:.3g} at {last['epoch']}; "
                f"train_acc {fit:.3g} < {FIT_ACC:g})")
    return None


def terminal_phase(rows):
    """Whether the run reached the terminal phase: train_acc 1 at the last row (every clean
    training example fitted) and nc1 at the last row below nc1 at the middle row."""
    if not rows:
        return False
    mid, last = second_half(rows)
    return _value(last, "train_acc") == 1.0 and _value(last, "nc1") < _value(mid, "nc1")
