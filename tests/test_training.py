"""engine/training.py: the shared flags, the sampler's order, sharding and mid-epoch start, TrainState,
checkpoints, the run log's JSON lines, the Ctrl-C hint, and `Trainer`'s run of a toy model (seed, resume,
the after-training hook, the teardown of two processes) — what every trainer shares."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from torch import nn
from torch.utils.data import Dataset

from engine import training
from engine.errors import UserError
from engine.runtime import ProcessGroup
from engine.training import (
    Checkpoints,
    LossWatch,
    ResumableSampler,
    RunLog,
    StepTimer,
    Trainer,
    TrainState,
    add_training_arguments,
    per_process_batch,
    restore_rng_states,
    resume_hint_on_interrupt,
    sampler_over_processes,
    training_loader,
    write_run_record,
)

# ---------------------------------------------------------------- the shared flags


def toy_parser(tmp_path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_training_arguments(
        parser,
        weights_help="the start",
        momentum=0.9,
        momentum_help="SGD momentum",
        save_every=3,
        out_dir=tmp_path / "TOY",
        session_name="toy",
    )
    return parser


def test_shared_flags_take_the_trainers_defaults(tmp_path):
    args = toy_parser(tmp_path).parse_args(["--weights", "none"])
    assert vars(args) == {
        "device": None,
        "amp": "off",
        "no_tf32": False,
        "deterministic": False,
        "train_list": None,
        "weights": "none",
        "num_workers": None,
        "momentum": 0.9,
        "seed": 0,
        "max_steps": None,
        "resume": None,
        "save_every": 3,
        "log_every": 20,
        "out_dir": str(tmp_path / "TOY"),
        "session_name": "toy",
        "tensorboard": None,
    }
    other = argparse.ArgumentParser()
    add_training_arguments(
        other, weights_help="", momentum=None, momentum_help="", save_every=200, out_dir=tmp_path, session_name="s"
    )
    assert vars(other.parse_args(["--weights", "w.pth"])) == {
        **vars(args),
        "weights": "w.pth",
        "momentum": None,
        "save_every": 200,
        "out_dir": str(tmp_path),
        "session_name": "s",
    }


def test_weights_are_required_and_the_help_says_what_each_trainer_passed(tmp_path, capsys):
    parser = toy_parser(tmp_path)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--weights" in capsys.readouterr().err
    help_text = " ".join(parser.format_help().split())
    assert "--weights WEIGHTS the start" in help_text and "--momentum MOMENTUM SGD momentum" in help_text


def test_a_global_batch_splits_over_the_processes_or_says_which_flag_to_change():
    assert per_process_batch(32, ProcessGroup(rank=1, world_size=4), "--irn_batch_size") == 8
    assert per_process_batch(6, ProcessGroup(), "--batch_size") == 6
    with pytest.raises(UserError, match="--batch_size 10 does not split over 4 processes; use a multiple"):
        per_process_batch(10, ProcessGroup(world_size=4), "--batch_size")


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


CPU = torch.device("cpu")


ONE_PROCESS = ProcessGroup()


def cpu_checkpoints(folder, group: ProcessGroup = ONE_PROCESS, **options) -> Checkpoints:
    return Checkpoints(folder, group, CPU, **options)


def no_scaling() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


def test_checkpoint_round_trip_restores_model_optimizer_state_and_rng(tmp_path):
    model, optimizer = tiny_training()
    one_step(model, optimizer)
    state = TrainState(step=7, epoch=1, batch_in_epoch=3)
    checkpoints = cpu_checkpoints(tmp_path)
    path = checkpoints.save(model, optimizer, no_scaling(), state, {"lr": 0.1})
    assert path == tmp_path / "step_0000007.pt" and checkpoints.last == path
    one_step(model, optimizer)
    expected = [parameter.detach().clone() for parameter in model.parameters()]

    resumed_model, resumed_optimizer = tiny_training(seed=1)
    torch.rand(5)  # move the RNG on: loading must put it back
    resumed = cpu_checkpoints(tmp_path)
    loaded, note = resumed.load(path, resumed_model, resumed_optimizer, no_scaling())
    assert loaded == state and loaded is not state and resumed.last == path and note is None
    one_step(resumed_model, resumed_optimizer)
    for parameter, value in zip(resumed_model.parameters(), expected):
        assert torch.equal(parameter.detach(), value)
    assert torch.load(path, weights_only=True)["args"] == {"lr": 0.1}


def test_each_process_resumes_its_own_rng_stream(tmp_path):
    model, optimizer = tiny_training()
    path = cpu_checkpoints(tmp_path).save(model, optimizer, no_scaling(), TrainState(step=2), {})
    content = torch.load(path, weights_only=True)
    streams = [torch.Generator().manual_seed(seed).get_state() for seed in (10, 11)]
    content["rng"] = [{"torch": stream, "cuda": None} for stream in streams]  # what two processes gathered
    torch.save(content, path)
    second_of_two = ProcessGroup(rank=1, world_size=2, local_rank=1)
    _, note = cpu_checkpoints(tmp_path, second_of_two).load(path, model, optimizer, no_scaling())
    assert note is None
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(11)))


def test_another_process_count_resumes_with_fresh_streams_and_says_so(tmp_path, monkeypatch):
    cuda_writes = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *state: cuda_writes.append(state))
    two_gpus = [  # a 2-GPU run's checkpoint, each process with its GPU's state
        {"torch": torch.Generator().manual_seed(rank).get_state(), "cuda": torch.full((8,), rank, dtype=torch.uint8)}
        for rank in (0, 1)
    ]
    torch.manual_seed(5)
    expected = torch.rand(3, generator=torch.Generator().manual_seed(5))
    note = restore_rng_states(two_gpus, ProcessGroup(), torch.device("cuda", 0))
    assert "written by 2 processes, this run has 1" in note and "starts afresh from --seed + rank" in note
    assert torch.equal(torch.rand(3), expected) and cuda_writes == []  # nothing restored
    second_of_two = ProcessGroup(rank=1, world_size=2, local_rank=1)
    assert restore_rng_states(two_gpus, second_of_two, torch.device("cuda", 1)) is None
    assert cuda_writes == [(two_gpus[1]["cuda"], torch.device("cuda", 1))]  # its own GPU, its own state


def test_a_checkpoint_of_the_earlier_format_resumes(tmp_path):
    model, optimizer = tiny_training()
    path = cpu_checkpoints(tmp_path).save(model, optimizer, no_scaling(), TrainState(step=2), {})
    content = torch.load(path, weights_only=True)
    content["torch_rng"] = torch.Generator().manual_seed(4).get_state()
    content["cuda_rng"] = []
    del content["rng"], content["scaler"]
    torch.save(content, path)
    state, note = cpu_checkpoints(tmp_path).load(path, model, optimizer, no_scaling())
    assert state == TrainState(step=2) and note is None
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(4)))


def test_the_fp16_loss_scale_resumes_where_it_was(tmp_path):
    model, optimizer = tiny_training()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    scaler.scale(torch.ones(()))
    scaler.update(2.0**9)  # where an fp16 run's overflows took it
    path = cpu_checkpoints(tmp_path).save(model, optimizer, scaler, TrainState(step=2), {})
    resumed = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    cpu_checkpoints(tmp_path).load(path, model, optimizer, resumed)
    assert resumed.get_scale() == 2.0**9 and resumed.state_dict() == scaler.state_dict()
    cpu_checkpoints(tmp_path).load(path, model, optimizer, no_scaling())  # an fp32 resume ignores it


def test_checkpoints_keep_the_last_two_and_auto_finds_the_newest(tmp_path):
    model, optimizer = tiny_training()
    checkpoints = cpu_checkpoints(tmp_path / "run_checkpoints")
    assert checkpoints.find("auto") is None and checkpoints.find(None) is None
    for step in (1, 2, 10, 11):
        checkpoints.save(model, optimizer, no_scaling(), TrainState(step=step), {})
    assert sorted(path.name for path in checkpoints.folder.iterdir()) == ["step_0000010.pt", "step_0000011.pt"]
    assert checkpoints.find("auto") == checkpoints.folder / "step_0000011.pt"
    assert checkpoints.find(str(checkpoints.folder / "step_0000010.pt")) == checkpoints.folder / "step_0000010.pt"


def test_missing_or_broken_checkpoints_are_user_errors(tmp_path):
    model, optimizer = tiny_training()
    checkpoints = cpu_checkpoints(tmp_path)
    with pytest.raises(UserError, match="checkpoint not found: .*absent.pt; pass an existing file or --resume auto"):
        checkpoints.find(str(tmp_path / "absent.pt"))
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"cannot resume from {not_a_checkpoint}: not a checkpoint; pass a step_"):
        checkpoints.load(not_a_checkpoint, model, optimizer, no_scaling())
    weights_only = tmp_path / "weights.pth"  # a state dict, not a training checkpoint
    torch.save(model.state_dict(), weights_only)
    with pytest.raises(UserError, match=f"cannot resume from {weights_only}: 'model'; delete it"):
        checkpoints.load(weights_only, model, optimizer, no_scaling())
    truncated = tmp_path / "step_0000003.pt"
    checkpoints.save(model, optimizer, no_scaling(), TrainState(step=3), {})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserError, match=f"cannot resume from {truncated}: .*delete it"):
        checkpoints.load(truncated, model, optimizer, no_scaling())


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
    assert cpu_checkpoints(tmp_path, every=every).due(state, last_step=9) is due


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


def test_losses_are_looked_at_as_floats_and_non_finite_ones_stop_with_a_hint(tmp_path):
    watch = LossWatch(ProcessGroup())
    watch.add({"loss": torch.tensor(1.5), "loss_cls": torch.tensor(0.25)}, step=3)
    assert watch.look(3, last_checkpoint=None) == {"loss": 1.5, "loss_cls": 0.25}
    watch.add({"loss": torch.tensor(float("nan"))}, step=4)
    with pytest.raises(UserError, match="non-finite loss at step 4 .*no checkpoint yet with a lower --lr"):
        watch.look(4, last_checkpoint=None)
    for step, value in ((5, float("inf")), (6, 1.0), (7, 2.0)):  # a bad step between two looks is not missed
        watch.add({"loss": torch.tensor(value)}, step)
    with pytest.raises(UserError, match="between steps 5 and 7 .*resume from .*step_0000002.pt with a lower --lr"):
        watch.look(7, last_checkpoint=tmp_path / "step_0000002.pt")


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
    checkpoints = cpu_checkpoints(tmp_path / "checkpoints")
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


# ---------------------------------------------------------------- Trainer on a toy model


class Numbers(Dataset):
    """Item (epoch, index) → x = (index, epoch), the target 1."""

    def __len__(self):
        return 8

    def __getitem__(self, key):
        epoch, index = key
        return {"x": torch.tensor([float(index), float(epoch)]), "target": torch.tensor(1.0)}


def toy_step(model, optimizer, scaler, batch, options) -> dict[str, torch.Tensor]:
    """A trainer's step: forward, loss, update; `options` is the loss's scale."""
    loss = options * (model(batch["x"]).squeeze(1) - batch["target"]).pow(2).mean()
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.detach()}


def toy_args(out_dir, *extra) -> argparse.Namespace:
    return toy_parser(out_dir).parse_args(
        ["--weights", "none", "--device", "cpu", "--out_dir", str(out_dir), "--log_every", "1", *extra]
    )


def toy_run(args, after_training=None, **run_options) -> nn.Module:
    """A trainer's main(): start, data, model (with dropout: it draws from the seeded RNG), optimiser, run (with
    `run_options`, Trainer.run's keywords)."""
    trainer = Trainer.start(args)
    sampler = ResumableSampler(len(Numbers()), 2, args.seed, trainer.group)
    loader = training_loader(Numbers(), sampler, num_workers=0, device=trainer.device)
    model = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=args.momentum)
    notes = ["toy", "a note"]
    trainer.run(loader, 2, model, optimizer, toy_step, 0.5, notes=notes, after_training=after_training, **run_options)
    return model


def toy_logged(out_dir) -> list[dict]:
    records = [json.loads(line) for line in (out_dir / "toy.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "images_per_s"} for record in records]


def test_start_seeds_torch_with_the_seed_plus_the_rank(tmp_path, monkeypatch):
    trainer = Trainer.start(toy_args(tmp_path, "--seed", "3"))
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    assert trainer.device == torch.device("cpu") and trainer.precision == "fp32" and trainer.amp_dtype is None
    assert trainer.memory_format == torch.contiguous_format and trainer.out_dir == tmp_path
    third_of_four = ProcessGroup(rank=2, world_size=4, local_rank=2)
    monkeypatch.setattr(training, "init_process_group", lambda device: third_of_four)
    assert Trainer.start(toy_args(tmp_path, "--seed", "3")).group == third_of_four
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(3 + 2)))


def test_run_logs_checkpoints_and_hands_the_open_log_to_after_training(tmp_path):
    seen = []

    def after_training(log):
        seen.append(log)
        log.line("after training")

    model = toy_run(toy_args(tmp_path), after_training)
    assert len(seen) == 1 and seen[0].text.closed  # called once, with the log that run() then closed
    assert [(record["step"], record["epoch"]) for record in toy_logged(tmp_path)] == [
        (step, 1 + (step - 1) // 4) for step in range(1, 9)
    ]
    lines = (tmp_path / "toy.log").read_text().splitlines()
    assert (
        lines[0]
        == "None: 8 images, 4 steps/epoch × 2 epochs = 8 steps, batch 2×1, cpu, fp32, 0 loader workers, toy, a note"
    )
    assert lines[-2].startswith("step 8/8 epoch 2 loss ") and lines[-1] == "after training"
    assert json.loads((tmp_path / "toy.json").read_text())["args"]["save_every"] == 3
    checkpoints = sorted(path.name for path in (tmp_path / "toy_checkpoints").iterdir())
    assert checkpoints == ["step_0000006.pt", "step_0000008.pt"]  # every 3 steps, each epoch, the last; 2 kept
    saved = torch.load(tmp_path / "toy_checkpoints" / "step_0000008.pt", weights_only=True)
    assert all(torch.equal(saved["model"][key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize("stop_step", [3, 4])  # within the first epoch, at its end (4 steps per epoch)
def test_max_steps_stops_early_and_a_resumed_run_matches_an_uninterrupted_one(tmp_path, stop_step):
    straight, split = tmp_path / "straight", tmp_path / "split"
    expected = toy_run(toy_args(straight, "--max_steps", "6", "--save_every", "0"))
    toy_run(toy_args(split, "--max_steps", str(stop_step)))
    resumed = toy_run(toy_args(split, "--max_steps", "6", "--resume", "auto"))
    assert toy_logged(split) == toy_logged(straight) and len(toy_logged(straight)) == 6
    for key, value in expected.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    second_start = [line for line in (split / "toy.log").read_text().splitlines() if line.startswith("None:")][1]
    checkpoint = split / "toy_checkpoints" / f"step_{stop_step:07d}.pt"
    assert second_start.endswith(f"; resumed from {checkpoint} at step {stop_step}")


def test_total_steps_cut_the_last_epoch_and_inputs_reach_the_run_record(tmp_path):
    toy_run(toy_args(tmp_path), total_steps=6, inputs={"labels": {"folder": "x", "manifest": None}})
    assert [record["step"] for record in toy_logged(tmp_path)] == list(range(1, 7))
    first_line = (tmp_path / "toy.log").read_text().splitlines()[0]
    assert "4 steps/epoch × 2 epochs = 8 steps, stopping at 6, batch 2×1" in first_line
    assert json.loads((tmp_path / "toy.json").read_text())["inputs"] == {"labels": {"folder": "x", "manifest": None}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_process_run(rank: int, out_dir, port: int) -> None:
    """One of two torchrun-like processes: both run after_training (the log enabled on the main one only);
    the main one's is slow and leaves a file; the other must not leave run() before it (the barrier), and
    both end their process group."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    finished = out_dir / "after_training_finished"

    def after_training(log):
        (out_dir / f"after_training_{rank}").write_text(str(log.enabled))
        if rank == 0:
            time.sleep(1)
            finished.write_text("")

    toy_run(toy_args(out_dir, "--max_steps", "2"), after_training)
    assert (out_dir / f"after_training_{rank}").read_text() == str(rank == 0)
    assert finished.exists(), "no process leaves run() before the main one's after_training ends"
    assert not dist.is_initialized()
    (out_dir / f"rank{rank}_done").write_text("")


@pytest.mark.slow  # two processes
def test_both_processes_run_after_training_wait_for_each_other_and_end_their_group(tmp_path):
    torch.multiprocessing.spawn(two_process_run, args=(tmp_path, free_port()), nprocs=2)
    assert (tmp_path / "rank0_done").exists() and (tmp_path / "rank1_done").exists()
    assert [record["step"] for record in toy_logged(tmp_path)] == [1, 2]  # written by the main process alone


def test_the_loop_syncs_with_the_device_only_where_the_log_or_a_checkpoint_needs_the_losses(tmp_path, monkeypatch):
    looked_at = []
    look = LossWatch.look
    monkeypatch.setattr(LossWatch, "look", lambda self, step, last: looked_at.append(step) or look(self, step, last))
    toy_run(toy_args(tmp_path, "--log_every", "3", "--save_every", "0"))
    assert looked_at == [3, 4, 6, 8]  # log lines at 3, 6 and the last; checkpoints at the epochs' ends (4, 8)
    assert [record["step"] for record in toy_logged(tmp_path)] == [3, 6, 8]


def test_sampler_over_processes_splits_the_batch_and_refuses_a_list_shorter_than_one():
    sampler = sampler_over_processes(10, 4, "--batch_size", 0, ProcessGroup(rank=1, world_size=2), "l.txt")
    assert sampler.batches_per_epoch == 2  # 10 // 4 global batches, each 2 images on each of 2 processes
    with pytest.raises(UserError, match=r"^l.txt has 3 images, fewer than one batch of 4; lower --irn_batch_size$"):
        sampler_over_processes(3, 4, "--irn_batch_size", 0, ProcessGroup(), "l.txt")
