"""The CPU cores a process may use, kept apart from engine/runtime.py so that numpy jobs
(evaluation_cam.py) count them without importing torch (STYLE: imports only go down)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(processes_per_node: int = 1) -> int:
    """Loader workers per process: the cores this process may use, shared among the node's processes."""
    return max(1, min(16, usable_cores() // max(1, processes_per_node)))
