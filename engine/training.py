"""What every trainer shares, whatever its network (MAE's util/misc.py role): the flags, the resumable
sampler and its loader, the counters saved as one `TrainState`, checkpoints, the run log, the run record,
and `Trainer`, which owns one process's run from its seed to its teardown.

Nothing here knows a network or a data set: a trainer passes its arguments, loader, model, optimiser and step.
A trainer's main() reads:

    trainer = Trainer.start(args)        # process group, device, precision, seed: before data and model
    loader = ...; model = ...; optimizer = ...
    trainer.run(loader, num_epochs, model, optimizer, train_step, options, notes=[...], after_training=...)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import pickle
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from engine.cores import default_num_workers
from engine.datasets import list_default_help
from engine.errors import UserError
from engine.fileio import atomic_path
from engine.manifest import git_commit
from engine.runtime import (
    ProcessGroup,
    Runtime,
    add_runtime_arguments,
    device_name,
    init_process_group,
    memory_format_for,
    on_cpu,
)

CHECKPOINTS_KEPT = 2
CHECKPOINT_PATTERN = "step_*.pt"


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    weights_help: str,
    momentum: float | None,
    momentum_help: str,
    save_every: int,
    out_dir: Path,
    session_name: str,
) -> None:
    """The flags every trainer shares, `add_runtime_arguments`' --device, --amp and --no_tf32 among them;
    the keywords are what differs per trainer (what --weights takes, the momentum's default and its story,
    the checkpoint interval, where and under which name the run's files go)."""
    add_runtime_arguments(parser)
    parser.add_argument("--train_list", help=list_default_help("train"))
    parser.add_argument("--weights", required=True, help=weights_help)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="loader workers per process (default: the cores shared among the processes)",
    )
    parser.add_argument("--momentum", type=float, default=momentum, help=momentum_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for the newest one")
    parser.add_argument(
        "--save_every", type=int, default=save_every, help="also checkpoint every N steps (0: per epoch only)"
    )
    parser.add_argument("--log_every", type=int, default=20, help="write a log line every N steps")
    parser.add_argument("--out_dir", default=str(out_dir), help="log, run record and checkpoints")
    parser.add_argument("--session_name", default=session_name, help="the name of the run's files in --out_dir")
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard scalars here")


@dataclasses.dataclass
class TrainState:
    """Where training stands: steps done, and the epoch and batch the next step starts from.
    Saved and loaded as one unit, so a resumed run continues exactly where its checkpoint was."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self, batches_per_epoch: int) -> None:
        """Count one finished step; after an epoch's last batch the next step opens the next epoch."""
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class ResumableSampler(Sampler):
    """Reference order (shuffle, drop_last) reproducible from (seed, epoch), sharded over the processes,
    and able to start mid-epoch. Yields (epoch, index) keys, so the data set can make each sample's
    augmentation a pure function of them (voc12.data.TrainDataset does)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, group: ProcessGroup):
        self.batch_size, self.seed, self.group = batch_size, seed, group
        self.batches_per_epoch = num_items // (batch_size * group.world_size)
        self.num_items = num_items
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        used = order[: self.batches_per_epoch * self.batch_size * self.group.world_size]
        mine = used[self.group.rank :: self.group.world_size]
        for index in mine[self.start_batch * self.batch_size :].tolist():
            yield (self.epoch, index)


def per_process_batch(batch_size: int, group: ProcessGroup, flag: str) -> int:
    """A batch of `batch_size` images over all processes (the `flag` that sets it), split over them."""
    if batch_size % group.world_size:
        raise UserError(
            f"{flag} {batch_size} does not split over {group.world_size} processes; use a multiple of the process count"
        )
    return batch_size // group.world_size


def sampler_over_processes(
    num_samples: int, batch_size: int, flag: str, seed: int, group: ProcessGroup, list_path
) -> ResumableSampler:
    """The resumable sampler of one global batch of `batch_size` (set by `flag`) split over the processes;
    a list shorter than one batch is a UserError naming `list_path`."""
    sampler = ResumableSampler(num_samples, per_process_batch(batch_size, group, flag), seed, group)
    if sampler.batches_per_epoch == 0:
        raise UserError(f"{list_path} has {num_samples} images, fewer than one batch of {batch_size}; lower {flag}")
    return sampler


def training_loader(
    dataset: Dataset,
    sampler: ResumableSampler,
    num_workers: int | None,
    device: torch.device,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Batches of `dataset` in `sampler`'s order. `num_workers` None: the cores shared among this node's
    processes. PyTorch runs each worker on one torch thread, so workers never oversubscribe the cores;
    `worker_init_fn` does the same for another library the data set uses (OpenCV)."""
    if num_workers is None:
        num_workers = default_num_workers()
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator(),  # keep the loader off the global RNG (dropout's)
        worker_init_fn=worker_init_fn,
    )


def rng_states(group: ProcessGroup, device: torch.device) -> list[dict]:
    """Every process's RNG states in rank order, gathered to all of them (a collective under torchrun): its
    CPU generator and, on CUDA, its own GPU's generator."""
    own = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    if not group.distributed:
        return [own]
    gathered = [None] * group.world_size
    dist.all_gather_object(gathered, own)
    return gathered


def restore_rng_states(states: list[dict], group: ProcessGroup, device: torch.device) -> str | None:
    """This process's own states of `rng_states`' list, when the checkpoint's process count is this run's;
    else the streams stay as `Trainer.start` seeded them and the returned note says so."""
    if len(states) != group.world_size:
        return (
            f"the checkpoint was written by {len(states)} processes, this run has {group.world_size}: each "
            "process's RNG (dropout) starts afresh from --seed + rank; the data order and augmentation, which "
            "depend on (seed, epoch, index) alone, are an uninterrupted run's"
        )
    own = states[group.rank]
    torch.set_rng_state(own["torch"])
    if device.type == "cuda" and own["cuda"] is not None:
        torch.cuda.set_rng_state(own["cuda"], device)
    return None


class Checkpoints:
    """`step_<N>.pt` files in one folder, the newest `keep` kept: model, optimiser, loss scaler, `TrainState`,
    every process's RNG states and the run's arguments, all on the CPU (a checkpoint resumes on any device
    and GPU count). `last` is the newest one written or resumed from (or None)."""

    def __init__(
        self, folder: Path, group: ProcessGroup, device: torch.device, every: int = 0, keep: int = CHECKPOINTS_KEPT
    ):
        self.folder, self.group, self.device, self.every, self.keep = folder, group, device, every, keep
        self.last: Path | None = None

    def due(self, state: TrainState, last_step: int) -> bool:
        """After each epoch, at the last step and every `every` steps (0: never in mid-epoch)."""
        return state.batch_in_epoch == 0 or state.step == last_step or (self.every > 0 and state.step % self.every == 0)

    def find(self, resume: str | None) -> Path | None:
        """The checkpoint `--resume` names: None, a path, or "auto" for the newest in the folder (if any)."""
        if resume is None:
            return None
        if resume != "auto":
            path = Path(resume)
            if not path.is_file():
                raise UserError(f"checkpoint not found: {path}; pass an existing file or --resume auto")
            return path
        candidates = sorted(self.folder.glob(CHECKPOINT_PATTERN))
        return candidates[-1] if candidates else None

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        state: TrainState,
        args: dict,
    ) -> Path | None:
        """Called by every process (the RNG states are gathered); the main one writes. → the path written."""
        rng = rng_states(self.group, self.device)
        if not self.group.is_main:
            return None
        path = self.folder / f"step_{state.step:07d}.pt"
        content = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "train_state": dataclasses.asdict(state),
            "rng": rng,
            "args": args,
        }
        with atomic_path(path) as tmp_path:
            torch.save(on_cpu(content), tmp_path)
        for old in sorted(self.folder.glob(CHECKPOINT_PATTERN))[: -self.keep]:
            old.unlink()
        self.last = path
        return path

    def load(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> tuple[TrainState, str | None]:
        """Restore the model, the optimiser, the loss scaler and this process's RNG states; → the state
        training continues from and a note when the RNG states could not be this process's own."""
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(content["model"])
            optimizer.load_state_dict(content["optimizer"])
            if scaler.is_enabled() and content.get("scaler"):  # saved by an fp16 run
                scaler.load_state_dict(content["scaler"])
            state = TrainState(**content["train_state"])
            rng = content.get("rng") or [{"torch": content["torch_rng"], "cuda": None}]  # before per-process states
        except pickle.UnpicklingError:
            raise UserError(
                f"cannot resume from {path}: not a checkpoint; pass a step_*.pt file or --resume auto"
            ) from None
        except (RuntimeError, KeyError, TypeError, EOFError, OSError) as error:
            raise UserError(
                f"cannot resume from {path}: {str(error).splitlines()[0]}; "
                "delete it to fall back to the previous checkpoint"
            ) from None
        note = restore_rng_states(rng, self.group, self.device)
        self.last = path
        return state, note


def distributed_model(model: nn.Module, device: torch.device, group: ProcessGroup) -> nn.Module:
    """The model wrapped to average its gradients over the torchrun processes; itself in one process."""
    if not group.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def save_weights(model: nn.Module, path: Path) -> Path:
    """The trained state dict, written atomically, its tensors on the CPU (a plain `torch.load` reads it anywhere)."""
    with atomic_path(path) as tmp_path:
        torch.save(on_cpu(model.state_dict()), tmp_path)
    return path


class LossWatch:
    """Each step's loss terms, kept on the device until the log or a checkpoint needs them: then one host sync
    (and under torchrun one all_reduce) gives the last step's terms averaged over the processes, as floats,
    and stops the run if any step since the last look had a non-finite term."""

    def __init__(self, group: ProcessGroup):
        self.group = group
        self.names: tuple[str, ...] = ()
        self.last: torch.Tensor | None = None
        self.any_non_finite: torch.Tensor | None = None
        self.first_unseen: int | None = None

    def add(self, losses: dict[str, torch.Tensor], step: int) -> None:
        self.names = tuple(losses)
        self.last = torch.stack([value.detach().float() for value in losses.values()])
        non_finite = ~self.last.isfinite().all()
        self.any_non_finite = non_finite if self.any_non_finite is None else self.any_non_finite | non_finite
        self.first_unseen = step if self.first_unseen is None else self.first_unseen

    def look(self, step: int, last_checkpoint: Path | None) -> dict[str, float]:
        """The terms of `step`, the last one added; a UserError (where to resume from) if a step since the
        last look had a non-finite term."""
        packed = torch.cat([self.last, self.any_non_finite.float()[None]])
        if self.group.distributed:
            dist.all_reduce(packed)
        *sums, non_finite = packed.tolist()
        losses = {name: value / self.group.world_size for name, value in zip(self.names, sums)}
        first, self.first_unseen, self.any_non_finite = self.first_unseen, None, None
        if non_finite or not all(math.isfinite(value) for value in losses.values()):
            where = f"at step {step}" if first == step else f"between steps {first} and {step}"
            hint = f"resume from {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
            raise UserError(f"non-finite loss {where} (step {step}: {losses}); {hint} with a lower --lr or --amp off")
        return losses


class StepTimer:
    """Images per second since this process started training (a resumed run counts afresh)."""

    def __init__(self, first_step: int, last_step: int, images_per_step: int):
        self.first_step, self.last_step, self.images_per_step = first_step, last_step, images_per_step
        self.started = time.perf_counter()

    def images_per_s(self, step: int) -> float:
        return (step - self.first_step) * self.images_per_step / (time.perf_counter() - self.started)


class RunLog:
    """What the main process shows and keeps of a run: a progress bar per epoch; text lines on the
    console and in <session>.log; every `log_every` steps and at the last one a text line, one JSON
    object in <session>.jsonl ({"step", "epoch", the losses, "lr", "images_per_s"}; epochs count
    from 1, as on the console) and, optionally, TensorBoard scalars. Other processes write nothing."""

    def __init__(
        self, out_dir: Path, session_name: str, *, enabled: bool, log_every: int, tensorboard_dir: str | None = None
    ):
        self.enabled, self.log_every = enabled, log_every
        self.text = self.json_lines = self.board = self.bar = None
        if not enabled:
            return
        text_path = out_dir / f"{session_name}.log"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.text = open(text_path, "a", encoding="utf-8")
            self.json_lines = open(text_path.with_suffix(".jsonl"), "a", encoding="utf-8")
        except OSError as error:
            raise UserError(f"cannot write {error.filename}: {error.strerror}; choose a writable --out_dir") from None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.board = SummaryWriter(tensorboard_dir)

    def line(self, text: str, console: bool = True) -> None:
        if self.enabled:
            if console:
                tqdm.write(text)
            self.text.write(text + "\n")
            self.text.flush()

    def progress(self, batches: Iterable, state: TrainState, batches_per_epoch: int, max_epochs: int) -> Iterator:
        """The batches of the state's epoch, from its batch on, under a progress bar."""
        with tqdm(
            batches,
            total=batches_per_epoch,
            initial=state.batch_in_epoch,
            disable=not self.enabled,
            desc=f"epoch {state.epoch + 1}/{max_epochs}",
            dynamic_ncols=True,
        ) as self.bar:
            yield from self.bar

    def due(self, step: int, last_step: int) -> bool:
        """Whether `step` gets a log line: every `log_every` steps and the last (the same on every process)."""
        return step % self.log_every == 0 or step == last_step

    def step(self, step: int, epoch: int, losses: dict[str, float], lr: float, timer: StepTimer) -> None:
        """After a step whose losses were looked at (`epoch` counted from 0, as in `TrainState`): the
        progress bar's figures, and the log line when due."""
        if not self.enabled:
            return
        images_per_s = timer.images_per_s(step)
        self.bar.set_postfix(
            {
                **{name: f"{value:.3f}" for name, value in losses.items()},
                "lr": f"{lr:.2e}",
                "img/s": f"{images_per_s:.1f}",
            }
        )
        if not self.due(step, timer.last_step):
            return
        eta_s = (timer.last_step - step) * timer.images_per_step / max(images_per_s, 1e-9)
        self.line(
            f"step {step}/{timer.last_step} epoch {epoch + 1} "
            + " ".join(f"{name} {value:.4f}" for name, value in losses.items())
            + f" lr {lr:.3e} {images_per_s:.1f} img/s eta {eta_s / 60:.1f} min"
        )
        record = {"step": step, "epoch": epoch + 1, **losses, "lr": lr, "images_per_s": images_per_s}
        self.json_lines.write(json.dumps(record) + "\n")
        self.json_lines.flush()
        if self.board is not None:
            for name, value in {**losses, "lr": lr}.items():
                self.board.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        for writer in (self.text, self.json_lines, self.board):
            if writer is not None:
                writer.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_steps(
    step: Callable[[dict], dict[str, torch.Tensor]],
    loader: DataLoader,
    state: TrainState,
    last_step: int,
    num_epochs: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    group: ProcessGroup,
    log: RunLog,
    checkpoints: Checkpoints,
    timer: StepTimer,
    run_args: dict,
) -> None:
    """The loop every trainer shares: from `state` up to `last_step`, one `step(batch)` per batch of the
    ResumableSampler-driven `loader`; the losses looked at (averaged over the processes, checked) only when
    the log or a checkpoint (of the unwrapped `model`) is due, so the device runs ahead of the host between.
    `state` advances in place."""
    sampler = loader.sampler
    watch = LossWatch(group)
    while state.step < last_step:
        epoch = state.epoch
        sampler.set_epoch(epoch, state.batch_in_epoch)
        for batch in log.progress(loader, state, sampler.batches_per_epoch, num_epochs):
            losses = step(batch)
            state.advance(sampler.batches_per_epoch)
            watch.add(losses, state.step)
            save = checkpoints.due(state, last_step)
            if save or log.due(state.step, last_step):
                log.step(
                    state.step, epoch, watch.look(state.step, checkpoints.last), optimizer.param_groups[0]["lr"], timer
                )
            if save:
                checkpoints.save(model, optimizer, scaler, state, run_args)
            if state.step == last_step:
                break


@contextlib.contextmanager
def resume_hint_on_interrupt(log: RunLog, state: TrainState, checkpoints: Checkpoints) -> Iterator[None]:
    """Turn Ctrl-C into one line (also logged) that says how to go on; `run_main` prints it last."""
    try:
        yield
    except KeyboardInterrupt:
        where = f"from {checkpoints.last}" if checkpoints.last else "no checkpoint yet"
        message = f"interrupted at step {state.step}; resume with --resume auto ({where})"
        log.line(message, console=False)
        raise KeyboardInterrupt(message) from None


def write_run_record(
    path: Path, args: dict, device: torch.device, group: ProcessGroup, inputs: dict | None = None
) -> None:
    """What made a run, as JSON: its arguments, library versions, git commit, device, process count, command,
    and what the trainer adds about its `inputs` (e.g. the manifest of a folder it reads)."""
    record = {
        "args": args,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "git_commit": git_commit(),
        "device": device_name(device),
        "world_size": group.world_size,
        "command": " ".join(sys.argv),
        **({"inputs": inputs} if inputs else {}),
    }
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(record, indent=2, default=str))


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One training process: its arguments (those of `add_training_arguments` and the runtime flags), its
    place among the torchrun processes, its device and precision (decided once, STYLE 7). `start` comes
    before the data and the model, which draw from the RNG it seeds; `run` trains and tears down."""

    args: argparse.Namespace
    group: ProcessGroup
    device: torch.device
    amp_dtype: torch.dtype | None
    precision: str  # its name in logs

    @classmethod
    def start(cls, args: argparse.Namespace) -> Trainer:
        """Join the torchrun job, pick the device, precision and kernel policy (`Runtime`: cuDNN autotunes
        the fixed crop size), seed torch's RNG with seed + rank (each process draws its own dropout masks)."""
        group = init_process_group(args.device)
        runtime = Runtime.decide(args, group, fixed_input_size=True)
        torch.manual_seed(args.seed + group.rank)
        return cls(args, group, runtime.device, runtime.amp_dtype, runtime.precision)

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format_for(self.device)

    @property
    def out_dir(self) -> Path:
        return Path(self.args.out_dir)

    def run(
        self,
        loader: DataLoader,
        num_epochs: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_step: Callable[..., dict[str, torch.Tensor]],
        options: object,
        *,
        notes: Iterable[str] = (),
        after_training: Callable[[RunLog], None] | None = None,
        total_steps: int | None = None,
        inputs: dict | None = None,
    ) -> None:
        """`num_epochs` of the ResumableSampler-driven `loader` (or up to `total_steps`, where a schedule ends
        inside the last epoch, and --max_steps) through `model` (as built, on the CPU) and `optimizer`: the
        model moved to the device, resumed from --resume, wrapped for the processes; the run record (with
        `inputs`), the log (its first line ends with `notes`), one
        `train_step(model, optimizer, scaler, batch, options)` → loss terms per batch, checkpoints. Then
        `after_training(log)` on every process while the log is open (the log writes on the main process
        only, and so must the hook's files: the processes can share its work, as IRN's calibration does),
        and under torchrun a barrier and the process group's end."""
        args, group, device = self.args, self.group, self.device
        sampler = loader.sampler
        model.to(device, memory_format=self.memory_format)
        scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        checkpoints = Checkpoints(
            self.out_dir / f"{args.session_name}_checkpoints", group, device, every=args.save_every
        )
        resume_path = checkpoints.find(args.resume)
        state, rng_note = (
            checkpoints.load(resume_path, model, optimizer, scaler) if resume_path else (TrainState(), None)
        )
        trained = distributed_model(model, device, group)

        log = RunLog(
            self.out_dir,
            args.session_name,
            enabled=group.is_main,
            log_every=args.log_every,
            tensorboard_dir=args.tensorboard,
        )
        if group.is_main:
            write_run_record(self.out_dir / f"{args.session_name}.json", vars(args), device, group, inputs)
        epoch_steps = sampler.batches_per_epoch * num_epochs
        total_steps = epoch_steps if total_steps is None else min(total_steps, epoch_steps)
        log.line(
            f"{args.train_list}: {len(loader.dataset)} images, {sampler.batches_per_epoch} steps/epoch × "
            f"{num_epochs} epochs = {epoch_steps} steps"
            + (f", stopping at {total_steps}" if total_steps < epoch_steps else "")
            + f", batch {sampler.batch_size}×{group.world_size}, {device}, "
            f"{self.precision}, {loader.num_workers} loader workers"
            + "".join(f", {note}" for note in notes)
            + (f"; resumed from {resume_path} at step {state.step}" if resume_path else "")
            + (f"; {rng_note}" if rng_note else "")
        )
        last_step = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
        timer = StepTimer(state.step, last_step, sampler.batch_size * group.world_size)
        with log, resume_hint_on_interrupt(log, state, checkpoints):
            run_steps(
                lambda batch: train_step(trained, optimizer, scaler, batch, options),
                loader,
                state,
                last_step,
                num_epochs,
                model=model,
                optimizer=optimizer,
                scaler=scaler,
                group=group,
                log=log,
                checkpoints=checkpoints,
                timer=timer,
                run_args=vars(args),
            )
            if after_training is not None:
                after_training(log)
        if group.distributed:
            dist.barrier()
            dist.destroy_process_group()
