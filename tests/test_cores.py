"""tool/cores.py: core counting without torch."""

import pytest

import tool.cores


def test_usable_cores_is_positive():
    assert tool.cores.usable_cores() >= 1


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
    monkeypatch.setattr(tool.cores, "usable_cores", lambda: cores)
    assert tool.cores.default_num_workers(processes_per_node) == workers
