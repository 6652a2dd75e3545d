"""engine/parallel.py: the default worker count, jobs run inline or in fork-server workers, and a
job's error surfacing in the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.cores
from engine.parallel import WorkerPool, default_pool_workers, map_unordered


@pytest.mark.parametrize(
    "cores, loader_workers, processes_per_node, workers",
    [(16, 4, 1, 8), (16, 4, 2, 3), (4, 4, 1, 1), (64, 4, 1, 8)],
)
def test_default_pool_workers_take_the_cores_the_loader_leaves(
    cores, loader_workers, processes_per_node, workers, monkeypatch
):
    monkeypatch.setattr(engine.cores, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes_per_node))
    assert default_pool_workers(loader_workers) == workers


def test_no_workers_runs_each_job_at_once(tmp_path):
    with WorkerPool(0) as pool:
        pool.submit(Path.write_text, tmp_path / "a.txt", "a")
        assert (tmp_path / "a.txt").read_text() == "a"


def test_workers_run_every_job_and_report_errors(tmp_path):
    with WorkerPool(1) as pool:
        for index in range(4):
            pool.submit(Path.write_text, tmp_path / f"{index}.txt", str(index))
    assert sorted(path.read_text() for path in tmp_path.iterdir()) == ["0", "1", "2", "3"]
    with pytest.raises(FileNotFoundError), WorkerPool(1) as pool:
        pool.submit(Path.read_text, tmp_path / "missing.txt")


@pytest.mark.parametrize("num_workers, max_chunk", [(0, 1), (2, 1), (2, 4)])
def test_map_unordered_returns_every_result(num_workers, max_chunk):
    items = list(range(23))
    results = list(map_unordered(abs, [-item for item in items], num_workers, max_chunk))
    assert sorted(results) == items
    if num_workers == 0:
        assert results == items  # in this process: in order
