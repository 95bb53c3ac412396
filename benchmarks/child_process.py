"""Wall time and peak memory of a child process, for the benchmarks.

Linux keeps a process's peak resident memory across exec, and a child spawned straight from a
large benchmark process reports that process's peak as its own. So the child is forked from a
small launcher (a fresh Python that holds nothing), which reports the child's own figures.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list) -> tuple:
    """(wall seconds, peak resident MB) of one process running ``command`` (its stdout discarded);
    exits with its stderr if it fails."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *map(str, command)], capture_output=True, text=True,
                          check=False)
    wall, peak_kb, code = done.stdout.split()
    if int(code):
        raise SystemExit(f"{Path(str(command[0])).name} failed:\n{done.stderr.strip()}")
    return float(wall), int(peak_kb) / 1024
