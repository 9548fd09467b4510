"""Peak memory of one call: resident memory of the current process on Linux, resettable
(``/proc/self/clear_refs``), and the CUDA allocator's peak.

``ru_maxrss`` is useless in a subprocess started from a large parent (it is kept across exec), so
the peak is read from ``VmHWM`` after resetting it to the current RSS.
"""


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> float:
    """Reset the peak to the current RSS; return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_mb() -> float:
    return _status("VmHWM")


def gpu_extra_mb(fn, device) -> float:
    """MB the CUDA allocator held at its peak during one call of ``fn`` above what it held before."""
    import torch

    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20
