"""File I/O shared by every script: user-facing errors, atomic writes, image reading.

Errors a user can cause are raised as `UserError` with one line that names the file
and the fix; `run_main` turns them into that line on stderr and exit status 1, also
when they were raised inside a DataLoader worker (PyTorch re-raises them in the main
process with the worker's traceback glued in front of the message)."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.datasets import PALETTE
from engine.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only when the
    block finishes, so readers never see a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}; choose a writable output folder") from None
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_writable_dir(path: str | os.PathLike) -> None:
    """Fail now, not at a long run's first output, when folder `path` could not be created or
    written; creates nothing (a run stopped by bad input leaves no empty folders)."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    else:
        return
    raise UserError(f"cannot write {path}: {reason}; choose a writable output folder")


def load_npy_dict(path: str | os.PathLike, what: str, hint: str) -> dict:
    """The dict inside an np.save'd object array (the reference's format for class labels and
    CAMs); an unreadable file or other content is a UserError naming `what` and the file."""
    path = Path(path)
    try:
        content = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise UserError(f"cannot read {what} {path}: {error}; {hint}") from None
    if not (
        isinstance(content, np.ndarray)
        and content.dtype == object
        and content.shape == ()
        and isinstance(content.item(), dict)
    ):
        raise UserError(f"{what} {path} is not a {what} dict; {hint}")
    return content.item()


def save_npy(path: str | os.PathLike, value) -> None:
    """np.save `value` (an array or a pickled dict, as the reference writes CAMs) atomically."""
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as handle:
        np.save(handle, value)


def save_png(path: str | os.PathLike, image: Image.Image) -> None:
    with atomic_path(path) as tmp_path:
        image.save(tmp_path, format="PNG")


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """A label map (uint8 H×W class indices, 255 = ignore) as a palette PNG in the VOC colour map
    (engine.datasets.PALETTE, every data set's): the format of VOC's SegmentationClass, read back as
    class indices by `read_label_png` and any VOC tool. Atomic, like every writer here."""
    assert label.ndim == 2 and label.dtype == np.uint8, (label.shape, label.dtype)
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    image.putpalette(PALETTE.tobytes())
    save_png(path, image)


def save_jpeg(path: str | os.PathLike, image: Image.Image, quality: int = 90) -> None:
    with atomic_path(path) as tmp_path:
        image.save(tmp_path, format="JPEG", quality=quality)


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB (grayscale, palette, RGBA, CMYK and 16-bit files are
    converted); a missing, unreadable or truncated file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # PIL's convert("RGB") clips 16-bit values to 255: rescale to 8 bits first.
                wide = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if wide.max() > 255 else 255.0
                image = Image.fromarray(np.round(wide / peak * 255).astype(np.uint8))
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read image {path}: {error}; the file is corrupt or truncated, "
            "replace it or remove it from the list"
        ) from None


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A VOC segmentation PNG as its palette indices (uint8 H×W, 255 = ignore)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise UserError(
                    f"label image {path} has mode {image.mode}; expected a palette "
                    "(P) or grayscale (L) PNG of class indices"
                )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"cannot read label image {path}: {error}") from None
