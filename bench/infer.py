"""CAM inference throughput (SPEC §5): the 8-input multi-scale CAM of one image, fp32 against AMP,
and the whole infer_cam.py run (loader workers, output writers) on synthetic VOC-sized images.

    python bench/infer.py                        # GPU: 500×375, 30 images per setting, e2e on 300 images
    python bench/infer.py --device cpu           # CPU: 125×94 (a quarter of VOC's sides), 2 images, no e2e

Prints one table and appends it, with the device name, to bench/RESULTS.md. A random-init CPN
stands in for trained weights (the cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infer_cam  # noqa: E402
from bench.results import cpu_name, publish  # noqa: E402
from bench.train_step import make_images  # noqa: E402
from network import build_network  # noqa: E402
from tool.constants import INFER_SCALES, VOC_TRAIN_IMAGES  # noqa: E402
from tool.imutils import Normalize, scale_image  # noqa: E402
from tool.runtime import memory_format_for, resolve_amp, resolve_device  # noqa: E402

CLASSES_PER_IMAGE = 2  # maps copied back per image (VOC averages about 1.5 classes)


def make_inputs(height: int, width: int, scales, pin: bool) -> list[torch.Tensor]:
    """The loader's inputs for one random image: per scale the image and its flip, 2×3×h×w."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    normalize = Normalize()
    inputs = []
    for scale in scales:
        scaled = normalize(np.asarray(scale_image(image, scale)))
        chw = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))
        pair = torch.stack([chw, chw.flip(-1)])
        inputs.append(pair.pin_memory() if pin else pair)
    return inputs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_multiscale_cam(model, inputs, size, device, amp_dtype, images: int, warmup: int) -> list[float]:
    """Seconds per image, inputs copied in and the present classes' maps copied out each time."""
    label = torch.zeros(20)
    label[:CLASSES_PER_IMAGE] = 1
    keys = torch.arange(CLASSES_PER_IMAGE, device=device)
    memory_format = memory_format_for(device)
    latencies = []
    with torch.inference_mode():
        for index in range(warmup + images):
            synchronize(device)
            started = time.perf_counter()
            (cams,) = infer_cam.multiscale_cam(
                model, inputs, label, [size], amp_dtype=amp_dtype, memory_format=memory_format
            )
            cams[keys].cpu()
            if index >= warmup:
                latencies.append(time.perf_counter() - started)
    return latencies


def time_end_to_end(device: torch.device, images: int, amp: str, root: Path) -> tuple[float, float, float]:
    """infer_cam.main (defaults, --out_cam and --out_cam_irn) on `images` images: (seconds to the
    first image, steady images/s after the first tenth, wall seconds), the CAM calls timestamped."""
    stamps = []
    timed_cam = infer_cam.multiscale_cam

    def stamped(*args, **kwargs):
        stamps.append(time.perf_counter())
        return timed_cam(*args, **kwargs)

    infer_cam.multiscale_cam = stamped
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
        infer_cam.multiscale_cam = timed_cam
    skip = images // 10
    return stamps[0] - started, (images - 1 - skip) / (stamps[-1] - stamps[skip]), wall


def make_dataset(model, root: Path, images: int) -> None:
    """Synthetic 500×375 JPEGs with two classes each, their labels, list and random weights."""
    names, labels = make_images(root / "VOC2012", images)
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
        help="images of the end-to-end run (default 300 on the GPU, 0 = skip, on the CPU)",
    )
    args = parser.parse_args()
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
    inputs = make_inputs(height, width, INFER_SCALES, pin=on_gpu)
    settings = [("fp32", None)]
    amp_dtype = resolve_amp("auto", device)
    if amp_dtype is not None:
        settings.append((f"AMP {str(amp_dtype).split('.')[-1]}", amp_dtype))
    rows = []
    for setting, dtype in settings:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        latencies = np.array(time_multiscale_cam(model, inputs, (height, width), device, dtype, images, warmup))
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
        f"multiscale_cam of one {width}×{height} image: scales {INFER_SCALES}, each flip pair one forward "
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
            "synthetic 500×375 JPEGs (start-up: to the first image; rate: after the first tenth):\n\n"
            "| --amp | start-up s | images/s | wall s | VOC train (1,464), min |\n|---|---|---|---|---|\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            make_dataset(model, Path(tmp), e2e_images)
            for amp in amp_settings:
                startup, rate, wall = time_end_to_end(device, e2e_images, amp, Path(tmp))
                table += (
                    f"| {amp} | {startup:.1f} | {rate:.2f} | {wall:.1f} "
                    f"| {(startup + VOC_TRAIN_IMAGES / rate) / 60:.2f} |\n"
                )
    publish(table)


if __name__ == "__main__":
    main()
