"""A process's peak memory, read so that it is its own (torch-free: the studio's benchmarks use it too)."""

from __future__ import annotations


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory of a process (this one by default), in MiB: VmHWM of /proc/<pid>/status.

    Not getrusage's ru_maxrss: Linux carries the forking parent's RSS into a child's ru_maxrss across exec,
    so a small process started by a big one (a benchmark phase, a calibration run) reads as big. Where /proc
    is missing (macOS), ru_maxrss of this process is the best there is."""
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    if pid is not None:
        return 0.0
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
