"""engine/cores.py: core counting without torch."""

import pytest

import engine.cores


def test_usable_cores_is_positive():
    assert engine.cores.usable_cores() >= 1


@pytest.mark.parametrize(
    "cores, processes_per_node, workers",
    [
        (40, 1, 16),  # capped at 16
        (40, 4, 10),  # shared among the node's processes
        (8, 1, 8),
        (2, 4, 1),  # at least one
        (8, 0, 8),  # a nonsensical process count counts as one
    ],
)
def test_default_num_workers(monkeypatch, cores, processes_per_node, workers):
    monkeypatch.setattr(engine.cores, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes_per_node))
    assert engine.cores.default_num_workers() == workers
