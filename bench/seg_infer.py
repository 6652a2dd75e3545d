"""Segmentation inference throughput (SPEC_SEG §4): the 12 forwards of one image (tool.seg's
multiscale_probabilities as infer_seg.py calls it, probabilities copied back), the dense CRF of those
probabilities in one process (infer_seg.seg_label), and the whole infer_seg.py run, whose CRFs run in worker
processes while the network computes the next images. The goal on one GPU: VOC val (1,449 images) in ≤ 3 min.

    python -m bench.seg_infer                    # GPU: 500×375, 20 images per setting, e2e on 200 images
    python -m bench.seg_infer --device cpu       # CPU smoke test: 63×47, 2 images, e2e on 3 images
    python -m bench.seg_infer --size 375 500 --images 5 --e2e_images 20

Run from the repository root. Prints one table and appends it, with the device name, to bench/RESULTS.md. A
random-init DeepLab stands in for trained weights (the network's cost does not depend on them; the CRF's does
little); the images are scikit-image's sample photos resized to the size.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import infer_seg
from bench.photos import sample_photos
from bench.results import cpu_name, publish
from engine.datasets import VOC_VAL_IMAGES
from engine.errors import run_main
from engine.runtime import memory_format_for, resolve_amp, resolve_device
from network import build_network
from tool.constants import SEG_TEST_SCALES
from tool.crf import DEEPLAB_CRF
from tool.seg import multiscale_probabilities
from voc12.seg_data import SegTestDataset


def make_photos(root: Path, count: int, height: int, width: int) -> list[str]:
    """`count` JPEGs of height×width in root/JPEGImages (the sample photos, resized), their names."""
    (root / "JPEGImages").mkdir(parents=True)
    photos = sample_photos()
    names = [f"bench_{index:04d}" for index in range(count)]
    for index, name in enumerate(names):
        photos[index % len(photos)].resize((width, height)).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
    return names


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forwards(model, sample: dict, device, amp_dtype, images: int, warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds per image of the 12 forwards with the probabilities copied back, and the probabilities."""
    size = tuple(sample["image"].shape[1:])
    latencies = []
    for index in range(warmup + images):
        synchronize(device)
        started = time.perf_counter()
        probs = multiscale_probabilities(
            model, sample["inputs"], size, amp_dtype=amp_dtype, memory_format=memory_format_for(device)
        )
        probs = probs.cpu().numpy()
        if index >= warmup:
            latencies.append(time.perf_counter() - started)
    return latencies, probs


def time_crf(result, images: int) -> list[float]:
    """Seconds per image of SPEC_SEG §4's CRF and argmax in this process (one worker's rate)."""
    latencies = []
    for _ in range(images):
        started = time.perf_counter()
        infer_seg.seg_label(result, DEEPLAB_CRF)
        latencies.append(time.perf_counter() - started)
    return latencies


def time_end_to_end(root: Path, names: list[str], device: torch.device, amp: str) -> tuple[float, float, float]:
    """infer_seg.main (its defaults, --out_seg) on the images: (seconds to the first forward, images/s after the
    first tenth, wall seconds), the forwards timestamped."""
    stamps = []
    forwards = infer_seg.multiscale_probabilities

    def stamped(*args, **kwargs):
        stamps.append(time.perf_counter())
        return forwards(*args, **kwargs)

    (root / "list.txt").write_text("\n".join(names) + "\n")
    infer_seg.multiscale_probabilities = stamped
    try:
        started = time.perf_counter()
        infer_seg.main(
            ["--weights", str(root / "random.pth"), "--voc12_root", str(root / "VOC2012")]
            + ["--infer_list", str(root / "list.txt"), "--device", str(device), "--amp", amp]
            + ["--out_seg", str(root / f"seg_{amp}")]
        )
        wall = time.perf_counter() - started
    finally:
        infer_seg.multiscale_probabilities = forwards
    skip = len(names) // 10
    return stamps[0] - started, (len(names) - 1 - skip) / (stamps[-1] - stamps[skip]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="375 500 GPU, 47 63 CPU")
    parser.add_argument("--images", type=int, default=None, help="timed images per setting (default 20 GPU, 2 CPU)")
    parser.add_argument("--e2e_images", type=int, default=None, help="images of the end-to-end run (200 GPU, 3 CPU)")
    args = parser.parse_args()
    if args.e2e_images == 1:
        parser.error("--e2e_images needs 2 or more (its rate is timed from the first image to the last)")
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    height, width = args.size or ((375, 500) if on_gpu else (47, 63))
    images = args.images or (20 if on_gpu else 2)
    e2e_images = args.e2e_images or (200 if on_gpu else 3)
    warmup = 3 if on_gpu else 1
    device_name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    )

    torch.manual_seed(0)
    model = build_network(infer_seg.SEG_NETWORK).eval().to(device, memory_format=memory_format_for(device))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = make_photos(root / "VOC2012", max(e2e_images, 1), height, width)
        sample = SegTestDataset(root / "VOC2012", names[:1])[0]
        if on_gpu:
            sample["inputs"] = [scaled.pin_memory() for scaled in sample["inputs"]]
        amp_dtype = resolve_amp("auto", device)
        settings = [("off", None)]
        if amp_dtype is not None:
            settings.append(("bf16" if amp_dtype == torch.bfloat16 else "fp16", amp_dtype))
        for amp, dtype in settings:
            latencies, probs = time_forwards(model, sample, device, dtype, images, warmup)
            rows.append((f"12 forwards + copy back, --amp {amp}", np.mean(latencies)))
        crf_latencies = time_crf(infer_seg.ImageProbs(names[0], sample["image"].numpy(), probs), images)
        rows.append(("CRF (1 iteration, 21 labels) + argmax, one process", np.mean(crf_latencies)))
        torch.save(model.cpu().state_dict(), root / "random.pth")
        end_to_end = [(amp, *time_end_to_end(root, names[:e2e_images], device, amp)) for amp, _ in settings]

    workers = infer_seg.default_pool_workers(infer_seg.LOADER_WORKERS)
    table = (
        f"\n### seg_infer — {device_name} — {datetime.date.today()}\n\n"
        f"one {width}×{height} photo: scales {' '.join(f'{s:g}' for s in SEG_TEST_SCALES)}, each with its flip (12 "
        f"inputs, 6 forwards of 2), random-init DeepLab (21 classes); {images} timed images after {warmup} warm-up; "
        f"torch {torch.__version__}\n\n"
        "| step | ms/image | images/s | VOC val (1,449) at this rate, min |\n|---|---|---|---|\n"
    )
    table += "".join(
        f"| {step} | {seconds * 1e3:.1f} | {1 / seconds:.2f} | {seconds * VOC_VAL_IMAGES / 60:.2f} |\n"
        for step, seconds in rows
    )
    table += (
        f"\noverlapped, `infer_seg.py` end to end with its defaults ({infer_seg.LOADER_WORKERS} loader workers, "
        f"{workers} CRF workers, --out_seg) on {e2e_images} photos (start-up: to the first forward; rate: after the "
        "first tenth):\n\n| --amp | start-up s | images/s | wall s | VOC val (1,449), min |\n|---|---|---|---|---|\n"
    )
    table += "".join(
        f"| {amp} | {startup:.1f} | {rate:.2f} | {wall:.1f} | {(startup + VOC_VAL_IMAGES / rate) / 60:.2f} |\n"
        for amp, startup, rate, wall in end_to_end
    )
    publish(table)


if __name__ == "__main__":
    run_main(main)
