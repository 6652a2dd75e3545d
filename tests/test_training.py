"""engine/training.py: the sampler's order, sharding and mid-epoch start, TrainState, checkpoints,
the run log's JSON lines and the Ctrl-C hint — what every trainer shares."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from engine.errors import UserError
from engine.runtime import ProcessGroup
from engine.training import (
    Checkpoints,
    ResumableSampler,
    RunLog,
    StepTimer,
    TrainState,
    check_finite,
    mean_over_processes,
    resume_hint_on_interrupt,
    training_loader,
    write_run_record,
)

# ---------------------------------------------------------------- ResumableSampler


def test_sampler_is_the_seeded_shuffle_cut_to_whole_batches():
    sampler = ResumableSampler(num_items=11, batch_size=3, seed=5, group=ProcessGroup())
    sampler.set_epoch(2)
    expected = torch.randperm(11, generator=torch.Generator().manual_seed(5 + 2))[:9].tolist()
    assert list(sampler) == [(2, index) for index in expected]
    assert sampler.batches_per_epoch == 3 and len(sampler) == 9
    sampler.set_epoch(3)
    assert [index for _, index in sampler] != expected


def test_sampler_shards_one_order_over_the_processes():
    ranks = [ResumableSampler(20, 2, seed=0, group=ProcessGroup(rank=rank, world_size=3)) for rank in range(3)]
    single = ResumableSampler(20, 2, seed=0, group=ProcessGroup())
    shards = [[index for _, index in sampler] for sampler in ranks]
    assert all(sampler.batches_per_epoch == 3 for sampler in ranks)  # 20 // (2 × 3)
    assert [len(shard) for shard in shards] == [6, 6, 6]
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    full_order = [index for _, index in single][:18]
    assert [full_order[position] for position in range(1, 18, 3)] == shards[1]  # interleaved, as DistributedSampler


def test_sampler_resumes_mid_epoch_with_the_rest_of_the_epoch():
    sampler = ResumableSampler(12, 2, seed=1, group=ProcessGroup())
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.set_epoch(4, start_batch=2)
    assert list(sampler) == whole[4:] and len(sampler) == 8


# ---------------------------------------------------------------- TrainState and checkpoints


def test_train_state_rolls_over_after_the_last_batch_of_an_epoch():
    state = TrainState()
    positions = []
    for _ in range(5):
        state.advance(batches_per_epoch=2)
        positions.append((state.step, state.epoch, state.batch_in_epoch))
    assert positions == [(1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0), (5, 2, 1)]


def tiny_training(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer


def one_step(model, optimizer):
    optimizer.zero_grad()
    model(torch.ones(2, 3)).sum().backward()  # dropout draws from the global RNG
    optimizer.step()


def test_checkpoint_round_trip_restores_model_optimizer_state_and_rng(tmp_path):
    model, optimizer = tiny_training()
    one_step(model, optimizer)
    state = TrainState(step=7, epoch=1, batch_in_epoch=3)
    checkpoints = Checkpoints(tmp_path)
    path = checkpoints.save(model, optimizer, state, {"lr": 0.1})
    assert path == tmp_path / "step_0000007.pt" and checkpoints.last == path
    one_step(model, optimizer)
    expected = [parameter.detach().clone() for parameter in model.parameters()]

    resumed_model, resumed_optimizer = tiny_training(seed=1)
    torch.rand(5)  # move the RNG on: loading must put it back
    resumed = Checkpoints(tmp_path)
    loaded = resumed.load(path, resumed_model, resumed_optimizer)
    assert loaded == state and loaded is not state and resumed.last == path
    one_step(resumed_model, resumed_optimizer)
    for parameter, value in zip(resumed_model.parameters(), expected):
        assert torch.equal(parameter.detach(), value)
    assert torch.load(path, weights_only=True)["args"] == {"lr": 0.1}


def test_checkpoints_keep_the_last_two_and_auto_finds_the_newest(tmp_path):
    model, optimizer = tiny_training()
    checkpoints = Checkpoints(tmp_path / "run_checkpoints")
    assert checkpoints.find("auto") is None and checkpoints.find(None) is None
    for step in (1, 2, 10, 11):
        checkpoints.save(model, optimizer, TrainState(step=step), {})
    assert sorted(path.name for path in checkpoints.folder.iterdir()) == ["step_0000010.pt", "step_0000011.pt"]
    assert checkpoints.find("auto") == checkpoints.folder / "step_0000011.pt"
    assert checkpoints.find(str(checkpoints.folder / "step_0000010.pt")) == checkpoints.folder / "step_0000010.pt"


def test_missing_or_broken_checkpoints_are_user_errors(tmp_path):
    model, optimizer = tiny_training()
    checkpoints = Checkpoints(tmp_path)
    with pytest.raises(UserError, match="checkpoint not found: .*absent.pt; pass an existing file or --resume auto"):
        checkpoints.find(str(tmp_path / "absent.pt"))
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"cannot resume from {not_a_checkpoint}: not a checkpoint; pass a step_"):
        checkpoints.load(not_a_checkpoint, model, optimizer)
    weights_only = tmp_path / "weights.pth"  # a state dict, not a training checkpoint
    torch.save(model.state_dict(), weights_only)
    with pytest.raises(UserError, match=f"cannot resume from {weights_only}: 'model'; delete it"):
        checkpoints.load(weights_only, model, optimizer)
    truncated = tmp_path / "step_0000003.pt"
    checkpoints.save(model, optimizer, TrainState(step=3), {})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserError, match=f"cannot resume from {truncated}: .*delete it"):
        checkpoints.load(truncated, model, optimizer)


@pytest.mark.parametrize(
    "state, every, due",
    [
        (TrainState(step=3, epoch=1, batch_in_epoch=0), 0, True),  # an epoch just ended
        (TrainState(step=9, epoch=0, batch_in_epoch=9), 0, True),  # the last step
        (TrainState(step=4, epoch=0, batch_in_epoch=4), 0, False),
        (TrainState(step=4, epoch=0, batch_in_epoch=4), 2, True),
        (TrainState(step=5, epoch=0, batch_in_epoch=5), 2, False),
    ],
)
def test_checkpoints_are_due_after_epochs_at_the_end_and_every_n_steps(tmp_path, state, every, due):
    assert Checkpoints(tmp_path, every=every).due(state, last_step=9) is due


# ---------------------------------------------------------------- loader, losses


class ThreadCount(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, key):
        epoch, index = key
        return torch.tensor([epoch, index, torch.get_num_threads()])


def test_loader_follows_the_sampler_and_runs_workers_on_one_thread():
    sampler = ResumableSampler(4, 2, seed=0, group=ProcessGroup())
    sampler.set_epoch(1)
    loader = training_loader(ThreadCount(), sampler, num_workers=1, device=torch.device("cpu"))
    rows = torch.cat(list(loader)).tolist()
    assert [(epoch, index) for epoch, index, _ in rows] == list(sampler)
    assert {threads for _, _, threads in rows} == {1}  # PyTorch's worker default: cores stay unsubscribed


def test_losses_are_floats_and_non_finite_ones_stop_with_a_hint(tmp_path):
    values = mean_over_processes({"loss": torch.tensor(1.5), "loss_cls": torch.tensor(0.25)}, ProcessGroup())
    assert values == {"loss": 1.5, "loss_cls": 0.25}
    check_finite(values, step=3, last_checkpoint=None)
    with pytest.raises(UserError, match="non-finite loss at step 3 .*no checkpoint yet with a lower --lr"):
        check_finite({**values, "loss": float("nan")}, step=3, last_checkpoint=None)
    with pytest.raises(UserError, match="resume from .*step_0000002.pt with a lower --lr"):
        check_finite({"loss": float("inf")}, step=3, last_checkpoint=tmp_path / "step_0000002.pt")


# ---------------------------------------------------------------- RunLog


def test_run_log_writes_a_json_line_per_logged_step(tmp_path):
    timer = StepTimer(first_step=0, last_step=5, images_per_step=4)
    with RunLog(tmp_path, "run", enabled=True, log_every=2) as log:
        log.line("first line")
        for step, _ in enumerate(log.progress(range(5), TrainState(), batches_per_epoch=5, max_epochs=1), start=1):
            log.step(step, 0, {"loss": step / 10, "loss_cls": 0.5}, lr=0.01, timer=timer)
    records = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4, 5]  # every 2nd and the last
    images_per_s = records[0].pop("images_per_s")
    assert records[0] == {"step": 2, "epoch": 1, "loss": 0.2, "loss_cls": 0.5, "lr": 0.01} and images_per_s > 0
    text = (tmp_path / "run.log").read_text().splitlines()
    assert text[0] == "first line" and len(text) == 4
    assert text[1].startswith("step 2/5 epoch 1 loss 0.2000 loss_cls 0.5000 lr 1.000e-02 ")


def test_a_disabled_run_log_writes_nothing(tmp_path):
    timer = StepTimer(first_step=0, last_step=1, images_per_step=1)
    with RunLog(tmp_path / "out", "run", enabled=False, log_every=1) as log:
        log.line("ignored")
        log.step(1, 0, {"loss": 1.0}, lr=0.1, timer=timer)
    assert not (tmp_path / "out").exists()


def test_unwritable_log_folder_is_a_user_error(tmp_path):
    plain_file = tmp_path / "plain_file"
    plain_file.write_text("")
    with pytest.raises(UserError, match=f"cannot write {plain_file / 'out'}: .*writable --out_dir"):
        RunLog(plain_file / "out", "run", enabled=True, log_every=1)


def test_interrupt_says_how_to_resume_and_logs_it(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    state = TrainState()
    with RunLog(tmp_path, "run", enabled=True, log_every=1) as log:
        with pytest.raises(KeyboardInterrupt, match=r"at step 0; resume with --resume auto \(no checkpoint yet\)"):
            with resume_hint_on_interrupt(log, state, checkpoints):
                raise KeyboardInterrupt
        checkpoints.last = checkpoints.folder / "step_0000004.pt"
        state.step = 5
        with pytest.raises(KeyboardInterrupt) as interrupt:
            with resume_hint_on_interrupt(log, state, checkpoints):
                raise KeyboardInterrupt
    message = f"interrupted at step 5; resume with --resume auto (from {checkpoints.last})"
    assert str(interrupt.value) == message
    assert (tmp_path / "run.log").read_text().splitlines()[-1] == message


def test_run_record_holds_the_arguments_versions_and_device(tmp_path):
    write_run_record(tmp_path / "run.json", {"lr": 0.01, "out_dir": tmp_path}, torch.device("cpu"), ProcessGroup())
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["args"] == {"lr": 0.01, "out_dir": str(tmp_path)}
    assert record["versions"]["torch"] == torch.__version__ and record["world_size"] == 1
    assert set(record) == {"args", "versions", "git_commit", "device", "world_size", "command"}
