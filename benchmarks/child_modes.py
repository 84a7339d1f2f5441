"""The memory benchmarks' children (``study_memory.py``, ``bench_full_resolution.py``): each mode runs in
a fresh process of its own, so that each peak RSS is that mode's alone."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence


def run_modes(script: str | Path, modes: Sequence[str], args_of: Callable[[str], Sequence],
              shown: Callable[[dict], dict] = lambda run: run) -> dict[str, dict]:
    """``script --child MODE *args_of(MODE)`` for each mode in turn: the JSON each prints last, by mode
    (``shown(run)`` printed as each ends)."""
    runs = {}
    for mode in modes:
        done = subprocess.run([sys.executable, str(script), "--child", mode, *map(str, args_of(mode))],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{Path(script).name} --child {mode} failed:\n{done.stderr[-3000:]}")
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, shown(runs[mode]), flush=True)
    return runs


def peak_rss_gb() -> float:
    """This process's peak resident memory (GB; Linux reports kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
