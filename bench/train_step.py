"""Training throughput: the reference-equivalent step (fp32 with TF32 as its stack ran, three forwards),
fed by the reference's 2 loader workers and by as many as ours, against ours (one batched forward,
channels_last) in the default fp32, with --amp bf16 and under --deterministic; each alone and end to end with
its loader.

    python -m bench.train_step                       # GPU: batch 4, crop 448; CPU: batch 2, crop 96
    python -m bench.train_step --device cpu --crop 64 --steps 3

Prints one table and appends it, with the device name, to bench/RESULTS.md. VOC-sized JPEGs cut from
scikit-image's sample photos stand in for VOC (no data set is needed); a random-init network stands in for the
ImageNet weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.photos import sample_photos
from bench.results import cpu_name, publish
from engine.cores import default_num_workers
from engine.errors import UserError, run_main
from engine.runtime import (
    CUBLAS_WORKSPACE,
    ProcessGroup,
    memory_format_for,
    precision_name,
    resolve_amp,
    resolve_device,
    set_fp32_precision,
    set_kernel_policy,
)
from engine.training import ResumableSampler, training_loader
from network import build_network
from tool.optim import PolyOptimizer, cpn_param_groups
from train_cpn import StepOptions, train_step
from voc12.data import TrainDataset

REFERENCE_WORKERS = 2
FULL_SCHEDULE_STEPS = 21160  # SPEC §4: 10,582 // 4 × 8 epochs


def make_images(
    root: Path, count: int, seed: int = 0, size: tuple[int, int] = (375, 500)
) -> tuple[list[str], dict[str, np.ndarray]]:
    """JPEGs of size (height, width; default VOC's 375×500) cut from scikit-image's bundled photos, one class each."""
    height, width = size
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    photos = sample_photos()
    names, labels = [], {}
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = rng.uniform(1.0, 1.5) * max(width / photo.width, height / photo.height)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        left, top = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
        name = f"bench_{index:04d}"
        photo.crop((left, top, left + width, top + height)).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        names.append(name)
        labels[name] = np.eye(20, dtype=np.float32)[index % 20]
    return names, labels


def make_loader(dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """train_cpn.py's loader, in epoch 0's order."""
    return training_loader(
        dataset, ResumableSampler(len(dataset), batch_size, seed=0, group=ProcessGroup()), workers, device
    )


def endless_batches(loader: DataLoader) -> Iterator:
    """The loader's batches over epochs 0, 1, 2, … (its ResumableSampler set to each in turn, as the trainers'
    loop sets it), so that a bench draws any number of steps from a list of any length."""
    if loader.sampler.batches_per_epoch == 0:
        raise UserError(
            f"--images {len(loader.dataset)} holds no batch of {loader.batch_size}: "
            "use more --images or a smaller --batch"
        )
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, optimizer, batches: Iterable, count: int, options, warmup: int, step=train_step) -> float:
    """Seconds per `step` (train_cpn's `train_step`, or another trainer's step of the same form) over `count`
    batches drawn from `batches` after `warmup` more."""
    scaler = torch.amp.GradScaler(options.device.type, enabled=False)  # fp32 and bf16 need no loss scaling
    started = None
    for index, batch in zip(range(warmup + count), batches):
        if index == warmup:
            synchronize(options.device)
            started = time.perf_counter()
        step(model, optimizer, scaler, batch, options)
    synchronize(options.device)
    return (time.perf_counter() - started) / count


def loader_rate(loader: DataLoader, batches: int) -> float:
    """Images per second the loader alone delivers over `batches` batches after its first, across epochs."""
    stream = endless_batches(loader)
    next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * loader.batch_size / (time.perf_counter() - started)


def time_training(model, optimizer, fixed, loader: DataLoader, count: int, options, warmup: int, step=train_step):
    """(seconds per step on the fixed batch, the loader's images/s, seconds per step fed by the loader): one
    table row's measurements, `count` timed steps or batches of each after `warmup` more."""
    step_s = time_steps(model, optimizer, itertools.repeat(fixed), count, options, warmup, step)
    loader_ips = loader_rate(loader, count)
    end_to_end_s = time_steps(model, optimizer, endless_batches(loader), count, options, warmup, step)
    return step_s, loader_ips, end_to_end_s


def step_bench_parser(description: str) -> argparse.ArgumentParser:
    """The flags of a training-step benchmark (this one's and bench/seg_train_step.py's); None: the device's default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--workers", type=int, default=None, help="our loader workers (default: the core count)")
    parser.add_argument("--images", type=int, default=64)
    return parser


def main() -> None:
    args = step_bench_parser(__doc__).parse_args()
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (4 if on_gpu else 2)
    crop = args.crop or (448 if on_gpu else 96)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = 3 if on_gpu else 1
    workers = args.workers if args.workers is not None else default_num_workers()
    bf16 = resolve_amp("auto", device)
    # The --deterministic row's cuBLAS setting must precede cuBLAS's first use; it is the size PyTorch picks on
    # Hopper GPUs anyway, so the other rows run as before.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    set_fp32_precision(allow_tf32=True)  # the default of train_cpn.py and of the reference's stack
    device_name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    )
    fp32 = precision_name(device, None, allow_tf32=True)
    channels_last = ", channels_last" if on_gpu else ""
    reference = StepOptions(device, three_pass=True)  # fp32, three forwards, contiguous memory
    ours = StepOptions(device, memory_format=memory_format_for(device))
    # (label, step options, loader workers, deterministic: the kernel policy of train_cpn.py --deterministic,
    # set_kernel_policy(True, False), around that row's timing; the others autotune on CUDA as train_cpn.py does)
    configs = [
        (f"reference: {fp32}, three forwards, {REFERENCE_WORKERS} workers", reference, REFERENCE_WORKERS, False),
        (f"reference: {fp32}, three forwards, {workers} workers", reference, workers, False),
        (f"ours, default: {fp32}, one batched forward{channels_last}", ours, workers, False),
    ]
    if bf16 is not None:
        configs.append(
            (
                f"ours, --amp bf16: one batched forward{channels_last}",
                dataclasses.replace(ours, amp_dtype=bf16),
                workers,
                False,
            )
        )
    # On the CPU too (deterministic without the switch there): the dry run of gpu_check.sh proves the row's path.
    configs.append((f"ours, --deterministic: {fp32}, one batched forward{channels_last}", ours, workers, True))

    with tempfile.TemporaryDirectory() as tmp:
        names, labels = make_images(Path(tmp), args.images)
        dataset = TrainDataset(
            tmp, names, labels, crop_size=crop, resize_long=(crop, round(crop * 768 / 448)), patch_strategy="superpixel"
        )
        fixed = next(endless_batches(make_loader(dataset, batch, 0, device)))

        model = build_network("network.resnet38_CPN")
        model.train()
        rows = []
        for label, options, config_workers, deterministic in configs:
            set_kernel_policy(deterministic, autotune=on_gpu)
            model.to(device, memory_format=options.memory_format)
            optimizer = PolyOptimizer(
                cpn_param_groups(model.get_parameter_groups()._asdict(), 0.01, 5e-4),
                lr=0.01,
                weight_decay=5e-4,
                max_step=10**6,
            )
            loader = make_loader(dataset, batch, config_workers, device)
            step_s, loader_ips, end_to_end_s = time_training(model, optimizer, fixed, loader, steps, options, warmup)
            rows.append((label, step_s, batch / step_s, config_workers, loader_ips, end_to_end_s))
            del loader, optimizer
        set_kernel_policy(False, autotune=on_gpu)

    header = (
        f"\n### train_step — {device_name} — {datetime.date.today()}\n\n"
        f"batch {batch}, crop {crop}, {steps} timed steps after {warmup} warm-up, superpixel patches, "
        f"500×375 JPEGs cut from scikit-image's sample photos\n\n"
        "| configuration | step s | images/s (step only) | loader workers | loader images/s | "
        "end-to-end s/step | full schedule h |\n|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r[0]} | {r[1]:.3f} | {r[2]:.1f} | {r[3]} | {r[4]:.1f} | {r[5]:.3f} | "
        f"{r[5] * FULL_SCHEDULE_STEPS * 4 / batch / 3600:.2f} |\n"
        for r in rows
    )
    table += "".join(
        f"\nend to end, {ours[0]}: {rows[0][5] / ours[5]:.1f}× the reference fed by "
        f"{REFERENCE_WORKERS} workers, {rows[1][5] / ours[5]:.1f}× the reference fed by {workers}"
        for ours in rows[2:]
    )
    table += f"\n--deterministic: {rows[-1][5] / rows[2][5]:.2f}× the default's end-to-end time"
    table += (
        f"\n\nfull schedule: {FULL_SCHEDULE_STEPS:,} steps of batch 4 (VOC train_aug, 8 epochs), "
        "scaled from this batch\n"
    )
    publish(table)


if __name__ == "__main__":
    run_main(main)
