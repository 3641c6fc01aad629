"""Devices: the torch device of --device (auto, cpu, cuda, cuda:N, mps), checked, and the one line that describes it."""
import os
import sys

from utils import UserError


def _nvidia_gpu_present():
    """Whether this machine shows an NVIDIA GPU (a loaded driver, or nvidia-smi listing one), whatever torch says."""
    import shutil
    import subprocess
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0"):
        return True
    if not shutil.which("nvidia-smi"):
        return False
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in r.stdout



def _cuda_status():
    """(usable, why_not): whether this torch can use CUDA, and, when a GPU is present but unusable,
    one line saying why and what to do (None when there is no GPU to miss)."""
    import warnings

    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable or not _nvidia_gpu_present():
        return usable, None
    if torch.version.cuda is None:
        return False, (f"an NVIDIA GPU is present but this torch {torch.__version__} is a CPU-only build; "
                       f"install a CUDA build of torch (README, Installing)")
    said = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), "")
    said = f" (torch says: {said[:200]})" if said else ""
    return False, (f"an NVIDIA GPU is present but this torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
                   f"cannot use it{said}; usually the NVIDIA driver is older than that CUDA build needs: install the "
                   f"torch built for the CUDA version nvidia-smi shows, or update the driver (README, Installing)")



def get_device(spec="auto"):
    """'auto' (CUDA when this torch can use it, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.

    'auto' warns on stderr (one line) when a GPU is present that this torch cannot use (a CPU-only
    build, or a CUDA build newer than the driver); the scripts' device line says what was picked."""
    import torch
    spec = str(spec).lower()
    if spec == "auto":
        usable, why_not = _cuda_status()
        if why_not:
            print(f"warning: --device auto: {why_not}; running on the CPU", file=sys.stderr)
        return torch.device("cuda" if usable else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: MPS is not available on this machine; use auto or cpu")
        return torch.device("mps")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        usable, why_not = _cuda_status()
        if not usable:
            raise UserError(f"--device {spec}: {why_not or 'CUDA is not available on this machine'}; use auto or cpu")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device(spec)
    raise UserError(f"--device {spec}: allowed are auto, cpu, cuda, cuda:N, mps")



def describe_device(device, amp=False):
    """One line naming the device a script trains on, e.g. `device: cpu (2 threads)` or
    `device: cuda:0 (NVIDIA H100, bf16 autocast)`; printed once at start so a job's log says where it ran."""
    import torch
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        detail = torch.cuda.get_device_name(index) + (", bf16 autocast" if amp else "")
        return f"device: cuda:{index} ({detail})"
    n = torch.get_num_threads()
    detail = f"{n} thread{'s' if n != 1 else ''}" if device.type == "cpu" else "Apple GPU"
    return f"device: {device.type} ({detail}{'; --amp ignored: bf16 autocast is CUDA only' if amp else ''})"
