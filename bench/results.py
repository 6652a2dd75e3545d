"""What every benchmark shares: the machine's name and the one way tables reach bench/RESULTS.md (or the file
that the environment variable BENCH_RESULTS names: `bash bench/gpu_check.sh --dry-run` points it at a scratch
file, so that a trial run appends nothing to bench/RESULTS.md)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_VARIABLE = "BENCH_RESULTS"
RESULTS_TITLE = (
    "# Benchmark results\n\nEach `bench/*.py` script appends its table here, with the device and the date.\n"
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_path() -> Path:
    """bench/RESULTS.md, or the file $BENCH_RESULTS names."""
    return Path(os.environ.get(RESULTS_VARIABLE) or RESULTS_PATH)


def publish(table: str, path: str | Path | None = None) -> None:
    """Print a benchmark's table and append it to the results file (default `results_path()`; titled when new)."""
    path = path or results_path()
    print(table)
    with open(path, "a", encoding="utf-8") as results:
        if results.tell() == 0:
            results.write(RESULTS_TITLE)
        results.write(table if table.endswith("\n") else table + "\n")
    print(f"appended to {path}")
