"""CPU threads: the cores free to this process and the threads a work size gets (OMP_NUM_THREADS kept when set)."""
import os
import sys

import utils

# set_threads: at least this many elements in a step's largest tensor per extra thread. Smaller
# work (the --quick MLPs, a UFM of a few thousand samples) runs fastest on one thread, and on a
# shared machine extra threads of small work only wait for each other (3.5-9x slower measured).
THREAD_WORK_PER_THREAD = 200_000


_USER_THREADS = os.environ.get("OMP_NUM_THREADS")  # read once: set_threads itself sets it below


def free_cores():
    """Cores this process may use (its CPU affinity) less those busy with other processes
    (the 1-minute load average, rounded), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(load + 0.5)))


def set_threads(work_size=0, threads=None):
    """Set torch's and the BLAS libraries' thread count for work whose largest tensor has
    `work_size` elements, and return it. `threads` (--threads) wins, then an OMP_NUM_THREADS set
    by the user; otherwise one thread per THREAD_WORK_PER_THREAD elements, capped by free_cores()."""
    if threads is not None:
        utils.check_positive_ints("--threads", [threads])
        n = int(threads)
    elif _USER_THREADS and _USER_THREADS.isdigit() and int(_USER_THREADS) > 0:
        n = int(_USER_THREADS)
    else:
        n = max(1, min(free_cores(), int(work_size) // THREAD_WORK_PER_THREAD))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # libraries not loaded yet
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    from threadpoolctl import threadpool_limits  # BLAS already loaded (numpy's OpenBLAS)
    threadpool_limits(limits=n, user_api="blas")
    return n
