"""COCO label painting speed: coco14/make_cls_labels.py's label pass (rasterise each annotation with
pycocotools, paint, write the palette PNG) on synthetic COCO-sized images, in one process and in
all cores, extrapolated to COCO train2014's 82,783 images.

    python -m bench.coco_labels                       # 600 images of 640×480, ~7 instances each
    python -m bench.coco_labels --images 200

The synthetic JSON holds coco14/toy.py's shapes, objects as polygons or compressed RLE, and a crowd
(uncompressed RLE, painted: --crowd ignore) in a third of the images. The pass is timed painting
into an empty folder and again resuming over the painted one (each PNG read back). Prints one table
and appends it, with the CPU, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.results import cpu_name, publish, results_path
from coco14.make_cls_labels import CROWD_LABELS, category_labels, image_jobs, label_images
from coco14.toy import ToyImage, instances_json, toy_annotations
from engine.cores import usable_cores

COCO_TRAIN_IMAGES = 82783  # train2014
HEIGHT, WIDTH = 480, 640  # COCO's most common size
OBJECTS_PER_IMAGE = (4, 10)  # drawn uniformly, inclusive: ~7 on average (COCO train: 7.3 per image)
CROWD_SHARE = 1 / 3


def synthetic_instances(count: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        num_objects = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
        annotations = toy_annotations(rng, HEIGHT, WIDTH, num_objects, crowd=bool(rng.random() < CROWD_SHARE))
        images.append(ToyImage(index + 1, "train", HEIGHT, WIDTH, annotations))
    return instances_json(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--results", default=str(results_path()), help="markdown file the table is appended to")
    args = parser.parse_args()

    print(f"synthesising {args.images} images ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "instances_train2014.json"
        json_path.write_text(json.dumps(synthetic_instances(args.images)), encoding="utf-8")
        instances = json.loads(json_path.read_text(encoding="utf-8"))
        jobs = image_jobs(instances, category_labels(instances, json_path))
        num_annotations = sum(len(job.instances) + len(job.crowds) for job in jobs)

        rows = []
        for workers in sorted({0, usable_cores()}):
            seg_dir = Path(tmp) / f"seg{workers}"
            processes = f"{max(workers, 1)} process{'es' if workers > 1 else ''}"
            for what in ("paint + write", "rerun: read back"):
                start = time.perf_counter()
                label_images(jobs, seg_dir, CROWD_LABELS["ignore"], workers)
                rows.append((f"{what}, {processes}", time.perf_counter() - start))

    table = [
        f"| {len(jobs)} images {WIDTH}×{HEIGHT}, {num_annotations / len(jobs):.1f} annotations each "
        f"| s | images/s | train2014 ({COCO_TRAIN_IMAGES:,}), min |",
        "|---|---:|---:|---:|",
    ]
    table += [
        f"| {label} | {seconds:.2f} | {len(jobs) / seconds:.1f} | {COCO_TRAIN_IMAGES / len(jobs) * seconds / 60:.1f} |"
        for label, seconds in rows
    ]
    header = (
        f"\n### coco_labels — CPU ({cpu_name()}, {usable_cores()} cores usable) — {datetime.date.today()}\n\n"
        "make_cls_labels' label pass (pycocotools rasterising, painting, palette PNG) on synthetic "
        "COCO-sized images; a crowd in a third of them, painted as 255 (--crowd ignore).\n\n"
    )
    publish(header + "\n".join(table) + "\n", args.results)


if __name__ == "__main__":
    main()
