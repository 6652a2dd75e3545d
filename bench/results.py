"""What every benchmark shares: the machine's name and the one way tables reach bench/RESULTS.md."""

from __future__ import annotations

import platform
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
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


def publish(table: str, path: str | Path = RESULTS_PATH) -> None:
    """Print a benchmark's table and append it to the results file (titled when new)."""
    print(table)
    with open(path, "a", encoding="utf-8") as results:
        if results.tell() == 0:
            results.write(RESULTS_TITLE)
        results.write(table if table.endswith("\n") else table + "\n")
    print(f"appended to {path}")
