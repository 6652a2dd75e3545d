"""The benchmarks' loop shapes at the GPU defaults' proportion (more steps than batches per epoch) on tiny
inputs, the results file they append to, their --help, and (slow) `bash bench/gpu_check.sh --dry-run`."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset

from bench import infer, random_walk, results, seg_infer, seg_train_step, train_step
from bench.train_step import endless_batches, time_training
from engine.errors import UserError
from engine.runtime import ProcessGroup
from engine.training import ResumableSampler, training_loader

REPO = Path(__file__).resolve().parents[1]


class Keys(Dataset):
    """Each sample is its sampler key (epoch, index), as voc12.data.TrainDataset receives it."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        epoch, index = key
        return torch.tensor([epoch, index])


def keys_loader(items: int, batch: int, workers: int):
    sampler = ResumableSampler(items, batch, seed=0, group=ProcessGroup())
    return training_loader(Keys(items), sampler, workers, torch.device("cpu"))


def epoch_order(items: int, batch: int, epoch: int) -> list[list[int]]:
    """The sampler's batches of one epoch, read straight from it."""
    sampler = ResumableSampler(items, batch, seed=0, group=ProcessGroup())
    sampler.set_epoch(epoch)
    indices = [index for _, index in sampler]
    return [indices[start : start + batch] for start in range(0, len(indices), batch)]


@pytest.mark.parametrize("workers", [0, 1])
def test_endless_batches_runs_over_epochs_in_the_trainers_order(workers):
    """5 items, batch 2: 2 batches per epoch, 7 drawn; epoch e's batches are the sampler's at set_epoch(e). A
    second stream (time_steps after loader_rate) starts again at epoch 0, also with a persistent worker."""
    loader = keys_loader(5, 2, workers)
    expected = [(epoch, order) for epoch in range(4) for order in epoch_order(5, 2, epoch)][:7]
    for _ in range(2):
        drawn = [next(stream) for stream in [endless_batches(loader)] for _ in range(7)]
        assert [(int(b[0, 0]), b[:, 1].tolist()) for b in drawn] == expected


def test_endless_batches_of_too_few_images_is_a_user_error():
    with pytest.raises(UserError, match="holds no batch of 4"):
        next(endless_batches(keys_loader(3, 4, 0)))


def test_time_training_at_the_gpu_defaults_proportion():
    """bench/train_step.py on the GPU: 64 images, batch 4 (16 batches per epoch), 3 warm-up + 20 timed steps,
    each of the fixed batch, the loader alone and the steps fed by it: the fed steps reach into epoch 1."""
    seen = []

    def step(model, optimizer, scaler, batch, options):
        seen.append(batch)

    loader = keys_loader(64, 4, 0)
    fixed = next(endless_batches(loader))
    step_s, loader_ips, end_to_end_s = time_training(
        None, None, fixed, loader, 20, SimpleNamespace(device=torch.device("cpu")), 3, step
    )
    assert len(seen) == 2 * 23 and all(batch is fixed for batch in seen[:23])
    assert [int(batch[0, 0]) for batch in seen[23:]] == [0] * 16 + [1] * 7
    assert step_s > 0 and loader_ips > 0 and end_to_end_s > 0


def test_publish_appends_to_the_file_bench_results_names(tmp_path, monkeypatch, capsys):
    before = results.RESULTS_PATH.read_bytes()
    scratch = tmp_path / "scratch.md"
    monkeypatch.setenv(results.RESULTS_VARIABLE, str(scratch))
    results.publish("\n### a table\n")
    results.publish("\n### another table")
    assert scratch.read_text() == results.RESULTS_TITLE + "\n### a table\n\n### another table\n"
    assert results.RESULTS_PATH.read_bytes() == before
    assert f"appended to {scratch}" in capsys.readouterr().out


@pytest.mark.parametrize("bench", [train_step, infer, random_walk, seg_train_step, seg_infer])
def test_bench_help(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [bench.__name__, "--help"])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    assert exited.value.code == 0 and "--device" in capsys.readouterr().out
