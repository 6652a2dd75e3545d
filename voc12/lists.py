"""Image lists (VOC's and COCO's), without torch: evaluation_cam.py (a numpy job) reads lists from
here, voc12/data.py builds its datasets on them (STYLE: imports only go down)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from engine.errors import UserError

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
