"""VOC2012 image lists and folder names, without torch: evaluation_cam.py (a numpy job) reads
lists from here, voc12/data.py builds its datasets on them (STYLE: imports only go down)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tool.errors import UserError

IMAGE_FOLDER = "JPEGImages"
SEGMENTATION_FOLDER = "SegmentationClass"  # SPEC §6: the ground truth CAMs are scored against
AUG_FOLDER = "SegmentationClassAug"  # SBD's coarser masks, for the train_aug class labels
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_name_from_line(line: str) -> str:
    """The image name of one list line: a plain name ("2007_000032") or the reference's
    "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png" form."""
    file_name = PurePosixPath(line.split()[0]).name
    if file_name.lower().endswith(IMAGE_SUFFIXES):
        return file_name.rsplit(".", 1)[0]
    return file_name


def load_image_list(path: str | os.PathLike) -> list[str]:
    """The image names of a list file, in file order; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image list not found: {path}; check the path")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"image list {path} is not a text file; pass a list with one image name per line") from None
    names = [image_name_from_line(line) for line in lines if line.strip()]
    if not names:
        raise UserError(f"image list {path} is empty; it needs one image name per line")
    return names


def check_voc_root(root: str | os.PathLike) -> Path:
    """The VOC2012 folder (the one holding JPEGImages), or a UserError saying which folder to pass."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"VOC2012 folder not found: {root}; pass --voc12_root .../VOCdevkit/VOC2012")
    if (root / IMAGE_FOLDER).is_dir():
        return root
    for candidate in (root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / IMAGE_FOLDER).is_dir():
            raise UserError(f"{root} is not the VOC2012 folder (it has no {IMAGE_FOLDER}); pass {candidate}")
    raise UserError(f"{root} has no {IMAGE_FOLDER} folder; pass the VOC2012 folder of VOCdevkit")
