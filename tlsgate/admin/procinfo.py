"""CPU time, memory and file descriptors of a process by pid, read from Linux's /proc.

Used for the node and each worker (prometheus_client's ProcessCollector covers only the
process it runs in under fixed names). Anything unreadable (not Linux, process gone) is None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

try:
    _TICKS = float(os.sysconf("SC_CLK_TCK"))
    _PAGE = int(os.sysconf("SC_PAGE_SIZE"))
except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
    _TICKS, _PAGE = 100.0, 4096


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    cpu_seconds: float
    rss_bytes: int
    vms_bytes: int
    open_fds: int | None
    start_time: float | None   # Unix time


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def read(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ")"
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])
        start_ticks = int(fields[19])
        vsize, rss_pages = int(fields[20]), int(fields[21])
    except (IndexError, ValueError):
        return None
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    boot = _boot_time()
    return ProcInfo(pid=pid, cpu_seconds=(utime + stime) / _TICKS, rss_bytes=rss_pages * _PAGE,
                    vms_bytes=vsize, open_fds=fds,
                    start_time=boot + start_ticks / _TICKS if boot is not None else None)
