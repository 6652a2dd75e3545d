"""Settings and helpers shared by the tests: the training scripts' tiny run (a 32-px crop, batch 2, no
loader workers, a random start with BN statistics from the toy images, a log line every step), and
label PNGs written from the toy ground truth."""

from pathlib import Path

from PIL import Image

from engine.fileio import read_label_png

TINY_TRAIN_ARGS = ["--crop_size", "32", "--resize_long", "32", "48", "--batch_size", "2", "--num_workers", "0"]
TINY_TRAIN_ARGS += ["--weights", "none", "--log_every", "1"]


def write_label_pngs(voc_root: Path, names, folder: Path) -> Path:
    """The toy ground truth of `names` as single-channel index PNGs (0–20, 255): the format of
    cam_to_ir_label.py's confident labels and of make_sem_seg_labels.py's pseudo masks."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        label = read_label_png(voc_root / "SegmentationClass" / f"{name}.png")
        Image.fromarray(label, mode="L").save(folder / f"{name}.png")
    return folder
