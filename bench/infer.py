"""CAM inference throughput (SPEC §5): the 8-input multi-scale CAM of one image (tool/cam.py's
present_class_cams, as infer_cam.py calls it), fp32 against AMP, and the whole infer_cam.py run
(loader workers, output writers) on synthetic VOC-sized images.

    python -m bench.infer                        # GPU: 500×375, 30 images per setting, e2e on 300 images
    python -m bench.infer --device cpu           # CPU: 125×94 (a quarter of VOC's sides), 2 images, no e2e
    python -m bench.infer --device cpu --size 32 48 --images 1   # a smoke run

Run from the repository root. Prints one table and appends it, with the device name, to
bench/RESULTS.md. A random-init CPN stands in for trained weights (the cost does not depend on the
weights); the image is random noise, read by infer_cam.py's dataset.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import infer_cam
from bench.results import cpu_name, publish
from bench.train_step import make_images
from engine.datasets import VOC12, VOC_TRAIN_IMAGES
from engine.errors import run_main
from engine.runtime import memory_format_for, resolve_amp, resolve_device
from network import build_network
from tool.cam import present_class_cams
from tool.constants import INFER_SCALES
from voc12.data import InferDataset

CLASSES_PER_IMAGE = 2  # maps copied back per image (VOC averages about 1.5 classes)


def make_sample(height: int, width: int, scales, pin: bool) -> dict:
    """infer_cam.py's loader sample of one random image with CLASSES_PER_IMAGE classes: per scale
    the image and its flip, 2×3×h×w (pinned for the GPU, as the loader does)."""
    rng = np.random.default_rng(0)
    label = np.zeros(VOC12.num_fg_classes, np.float32)
    label[:CLASSES_PER_IMAGE] = 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "VOC2012"
        (root / "JPEGImages").mkdir(parents=True)
        noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        noise.save(root / "JPEGImages" / "noise.jpg", quality=95)
        sample = InferDataset(root, ["noise"], {"noise": label}, scales=scales)[0]
    if pin:
        sample["inputs"] = [pair.pin_memory() for pair in sample["inputs"]]
    return sample


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_present_class_cams(model, sample: dict, device, amp_dtype, images: int, warmup: int) -> list[float]:
    """Seconds per image, inputs copied in and the present classes' maps copied out each time."""
    size = sample["image"].shape[:2]
    memory_format = memory_format_for(device)
    latencies = []
    with torch.inference_mode():
        for index in range(warmup + images):
            synchronize(device)
            started = time.perf_counter()
            present_class_cams(
                model, sample["inputs"], sample["label"], [size], amp_dtype=amp_dtype, memory_format=memory_format
            )
            if index >= warmup:
                latencies.append(time.perf_counter() - started)
    return latencies


def time_end_to_end(device: torch.device, images: int, amp: str, root: Path) -> tuple[float, float, float]:
    """infer_cam.main (defaults, --out_cam and --out_cam_irn) on `images` images: (seconds to the
    first image, steady images/s after the first tenth, wall seconds), the CAM calls timestamped."""
    stamps = []
    timed_cam = infer_cam.present_class_cams

    def stamped(*args, **kwargs):
        stamps.append(time.perf_counter())
        return timed_cam(*args, **kwargs)

    infer_cam.present_class_cams = stamped
    try:
        started = time.perf_counter()
        infer_cam.main(
            [
                "--weights",
                str(root / "random.pth"),
                "--voc12_root",
                str(root / "VOC2012"),
                "--cls_labels",
                str(root / "cls_labels.npy"),
                "--infer_list",
                str(root / "list.txt"),
                "--device",
                str(device),
                "--amp",
                amp,
                "--out_cam",
                str(root / amp / "cam"),
                "--out_cam_irn",
                str(root / amp / "irn"),
            ]
        )
        wall = time.perf_counter() - started
    finally:
        infer_cam.present_class_cams = timed_cam
    skip = images // 10
    return stamps[0] - started, (images - 1 - skip) / (stamps[-1] - stamps[skip]), wall


def make_dataset(model, root: Path, images: int, size: tuple[int, int]) -> None:
    """Synthetic JPEGs of size (height, width) with two classes each, their labels, list and random weights."""
    names, labels = make_images(root / "VOC2012", images, size=size)
    for index, name in enumerate(names):
        labels[name][(index + 7) % 20] = 1.0
    np.save(root / "cls_labels.npy", labels)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    torch.save(model.state_dict(), root / "random.pth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="image size (default 375 500 on the GPU, 94 125 on the CPU)",
    )
    parser.add_argument("--images", type=int, default=None, help="timed images per setting (default 30 GPU, 2 CPU)")
    parser.add_argument(
        "--e2e_images",
        type=int,
        default=None,
        help="images of the end-to-end run, at --size (default 300 on the GPU, 0 = skip, on the CPU)",
    )
    args = parser.parse_args()
    if args.e2e_images == 1:
        parser.error("--e2e_images needs 2 or more (its rate is timed from the first image to the last) or 0")
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    height, width = args.size or ((375, 500) if on_gpu else (94, 125))
    images = args.images or (30 if on_gpu else 2)
    warmup = 3 if on_gpu else 1
    e2e_images = args.e2e_images if args.e2e_images is not None else (300 if on_gpu else 0)
    device_name = (
        torch.cuda.get_device_name(device) if on_gpu else f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    )

    torch.manual_seed(0)
    model = build_network("network.resnet38_CPN").eval().to(device, memory_format=memory_format_for(device))
    sample = make_sample(height, width, INFER_SCALES, pin=on_gpu)
    settings = [("fp32", None)]
    amp_dtype = resolve_amp("auto", device)
    if amp_dtype is not None:
        settings.append((f"AMP {str(amp_dtype).split('.')[-1]}", amp_dtype))
    rows = []
    for setting, dtype in settings:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        latencies = np.array(time_present_class_cams(model, sample, device, dtype, images, warmup))
        peak_gib = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if on_gpu else "–"
        rows.append(
            (
                setting,
                latencies.mean() * 1e3,
                np.median(latencies) * 1e3,
                1 / latencies.mean(),
                latencies.mean() * VOC_TRAIN_IMAGES / 60,
                peak_gib,
            )
        )

    table = (
        f"\n### infer — {device_name} — {datetime.date.today()}\n\n"
        f"present_class_cams of one {width}×{height} image: scales {INFER_SCALES}, each flip pair one forward "
        f"(8 inputs), random-init CPN, {CLASSES_PER_IMAGE} classes copied back; {images} timed images after "
        f"{warmup} warm-up; torch {torch.__version__}\n\n"
        "| precision | ms/image (mean) | ms/image (median) | images/s | 1,464 images at this size, min "
        "| peak GPU GiB |\n"
        "|---|---|---|---|---|---|\n"
    )
    table += "".join(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} |\n" for r in rows)
    if e2e_images:
        amp_settings = ["off"] + ([{torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]] if amp_dtype else [])
        table += (
            f"\nend to end, `infer_cam.py` with its default workers, --out_cam and --out_cam_irn, {e2e_images} "
            f"synthetic {width}×{height} JPEGs (start-up: to the first image; rate: after the first tenth):\n\n"
            "| --amp | start-up s | images/s | wall s | VOC train (1,464), min |\n|---|---|---|---|---|\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            make_dataset(model, Path(tmp), e2e_images, (height, width))
            for amp in amp_settings:
                startup, rate, wall = time_end_to_end(device, e2e_images, amp, Path(tmp))
                table += (
                    f"| {amp} | {startup:.1f} | {rate:.2f} | {wall:.1f} "
                    f"| {(startup + VOC_TRAIN_IMAGES / rate) / 60:.2f} |\n"
                )
    publish(table)


if __name__ == "__main__":
    run_main(main)
