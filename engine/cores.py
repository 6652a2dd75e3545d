"""The CPU cores a process may use, kept apart from engine/runtime.py so that numpy jobs
(evaluation_cam.py) count them without importing torch (STYLE: imports only go down)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def processes_on_this_node() -> int:
    """The processes torchrun started on this machine (LOCAL_WORLD_SIZE), 1 without torchrun; a
    nonsensical count counts as one."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cores_per_process() -> int:
    """This process's share of the cores: they are shared among the node's processes."""
    return usable_cores() // processes_on_this_node()


def default_num_workers() -> int:
    """Loader workers per process: this process's share of the cores, 1 to 16."""
    return max(1, min(16, cores_per_process()))
