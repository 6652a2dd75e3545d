"""Segmentation training throughput (SPEC_SEG §2–3): train_seg.py's step (BatchNorm statistics per group of
images, one cross-entropy, poly SGD) alone on a fixed batch and end to end with its loader, in the default fp32
(TF32 allowed) and, with --amp bf16, under bf16 autocast too.

    python -m bench.seg_train_step                       # GPU: batch 10, crop 448, BN groups of 5 (the reference)
    python -m bench.seg_train_step --device cpu          # CPU smoke test: batch 2, crop 64, BN groups of 1
    python -m bench.seg_train_step --amp bf16            # adds the bf16 row

Prints one table and appends it, with the device name, to bench/RESULTS.md. VOC-sized JPEGs cut from
scikit-image's sample photos stand in for VOC, a box of one class on background for the pseudo masks, and a
random-init network for the ImageNet weights. Goal on one H100/H200: 20,000 steps within 1 h (0.18 s/step).
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.results import cpu_name, publish
from bench.train_step import endless_batches, make_images, step_bench_parser, time_training
from engine.cores import default_num_workers
from engine.errors import run_main
from engine.runtime import (
    ProcessGroup,
    memory_format_for,
    precision_name,
    resolve_amp,
    resolve_device,
    set_fp32_precision,
)
from engine.training import ResumableSampler, training_loader
from network import build_network
from tool.seg import SEG_STEPS, seg_optimizer
from train_seg import NETWORK, StepOptions, one_opencv_thread, train_batch
from voc12.seg_data import SegTrainDataset

GOAL_S_PER_STEP = 3600 / SEG_STEPS  # 20,000 steps in an hour


def make_pseudo_labels(folder: Path, names: list[str], seed: int = 0) -> None:
    """500×375 masks like IRN's: a random box of the image's class (1–20) on background."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for index, name in enumerate(names):
        label = np.zeros((375, 500), np.uint8)
        top, left = rng.integers(0, 187), rng.integers(0, 250)
        label[top : top + 187, left : left + 250] = index % 20 + 1
        Image.fromarray(label, mode="L").save(folder / f"{name}.png")


def main() -> None:
    parser = step_bench_parser(__doc__)
    parser.add_argument("--bn_group", type=int, default=None, help="default: half the batch, as the reference")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off", help="bf16: add a bf16 autocast row")
    args = parser.parse_args()
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (10 if on_gpu else 2)
    crop = args.crop or (448 if on_gpu else 64)
    bn_group = args.bn_group or max(batch // 2, 1)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = 3 if on_gpu else 1
    workers = args.workers if args.workers is not None else default_num_workers()
    torch.backends.cudnn.benchmark = on_gpu
    set_fp32_precision(allow_tf32=True)  # train_seg.py's default
    device_name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    )
    fp32 = StepOptions(device, bn_group, memory_format=memory_format_for(device))
    configs = [(f"default: {precision_name(device, None, allow_tf32=True)}", fp32)]
    if args.amp == "bf16":
        configs.append(("--amp bf16", StepOptions(device, bn_group, resolve_amp("bf16", device), fp32.memory_format)))

    with tempfile.TemporaryDirectory() as tmp:
        names, _ = make_images(Path(tmp), args.images)
        make_pseudo_labels(Path(tmp) / "sem_seg", names)
        dataset = SegTrainDataset(tmp, names, Path(tmp) / "sem_seg", crop_size=crop)

        def loader(num_workers: int):
            sampler = ResumableSampler(len(dataset), batch, seed=0, group=ProcessGroup())
            return training_loader(dataset, sampler, num_workers, device, worker_init_fn=one_opencv_thread)

        fixed = next(endless_batches(loader(0)))
        model = build_network(NETWORK).train().to(device, memory_format=fp32.memory_format)
        rows = []
        for label, options in configs:
            optimizer = seg_optimizer(model)
            feeding = loader(workers)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)  # each row's own peak, not the largest so far
            step_s, loader_ips, end_to_end_s = time_training(
                model, optimizer, fixed, feeding, steps, options, warmup, train_batch
            )
            peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else float("nan")
            rows.append((label, step_s, batch / step_s, loader_ips, end_to_end_s, peak_gib))
            del feeding, optimizer

    header = (
        f"\n### seg_train_step — {device_name} — {datetime.date.today()}\n\n"
        f"batch {batch}, crop {crop}, BatchNorm groups of {bn_group}, {steps} timed steps after {warmup} warm-up, "
        f"{workers} loader workers, 500×375 JPEGs cut from scikit-image's sample photos, random-init DeepLab\n\n"
        "| configuration | step s | images/s (step only) | loader images/s | end-to-end s/step | "
        f"{SEG_STEPS:,} steps h | peak GPU GiB |\n|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r[0]} | {r[1]:.3f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.3f} | {r[4] * SEG_STEPS / 3600:.2f} | "
        f"{'–' if np.isnan(r[5]) else f'{r[5]:.1f}'} |\n"
        for r in rows
    )
    table += (
        f"\ngoal: {SEG_STEPS:,} steps of batch 10 at crop 448 within 1 h on one H100/H200 "
        f"({GOAL_S_PER_STEP:.2f} s/step); the hours column is at this table's batch and crop\n"
    )
    publish(table)


if __name__ == "__main__":
    run_main(main)
