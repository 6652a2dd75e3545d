"""Pictures of CAMs for people: heat maps over the image, label maps in the VOC palette,
and a side-by-side panel of both. Pure functions of arrays returning arrays or PIL
images; nothing here opens a window (matplotlib is used for its colour map only)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.datasets import PALETTE

HEATMAP_OPACITY = 0.5  # the reference's color_pro blends image and colour map half and half
TITLE_HEIGHT = 16  # pixels of the strip that holds a tile's title
TILE_GAP = 4  # pixels between tiles
_JET = (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, opacity: float = HEATMAP_OPACITY) -> np.ndarray:
    """A CAM as a 'jet' heat map blended over the image.

    image: uint8 H×W×3; cam: H×W scores, 0 = blue and 1 = red (clipped to 0..1);
    opacity: weight of the heat map. Returns uint8 H×W×3."""
    assert image.shape[:2] == cam.shape and image.dtype == np.uint8, (image.shape, cam.shape, image.dtype)
    levels = np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)
    colour = _JET[levels].astype(np.float32)
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colour
    return np.round(blended).astype(np.uint8)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """A label map (class indices, 255 = ignore) in VOC palette colours, uint8 H×W×3."""
    return PALETTE[label]


def _class_name(label: int, class_names: tuple[str, ...]) -> str:
    return class_names[label] if label < len(class_names) else "ignore"


def _titled_tile(picture: np.ndarray, title: str, font: ImageFont.ImageFont) -> Image.Image:
    height, width = picture.shape[:2]
    tile = Image.new("RGB", (width, height + TITLE_HEIGHT), "white")
    tile.paste(Image.fromarray(picture), (0, TITLE_HEIGHT))
    ImageDraw.Draw(tile).text((2, 2), title, fill="black", font=font)
    return tile


def _legend(labels: list[int], class_names: tuple[str, ...], font: ImageFont.ImageFont) -> Image.Image:
    """One strip: a colour swatch and the class name for each label."""
    names = [_class_name(label, class_names) for label in labels]
    name_widths = [int(np.ceil(font.getlength(name))) for name in names]
    strip = Image.new("RGB", (sum(name_widths) + 24 * len(labels) + 2, TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    left = 2
    for label, name, name_width in zip(labels, names, name_widths):
        draw.rectangle((left, 3, left + 10, 13), fill=tuple(int(v) for v in PALETTE[label]), outline="black")
        draw.text((left + 14, 2), name, fill="black", font=font)
        left += 24 + name_width
    return strip


def picture_panel(
    pictures: Sequence[tuple[str, np.ndarray]], labels: Iterable[int], class_names: tuple[str, ...]
) -> Image.Image:
    """Side by side: each (title, uint8 H×W×3 picture, all of one height) titled, with a colour legend of
    `labels` (class indices) underneath. Returns a PIL RGB image."""
    font = ImageFont.load_default()
    tiles = [_titled_tile(picture, title, font) for title, picture in pictures]
    legend = _legend([int(value) for value in labels], class_names, font)

    tiles_width = sum(tile.width for tile in tiles) + TILE_GAP * (len(tiles) - 1)
    height = tiles[0].height
    panel = Image.new("RGB", (max(tiles_width, legend.width), height + legend.height), "white")
    left = 0
    for tile in tiles:
        panel.paste(tile, (left, 0))
        left += tile.width + TILE_GAP
    panel.paste(legend, (0, height))
    return panel


def cam_panel(
    image: np.ndarray,
    cams: dict[int, np.ndarray],
    label: np.ndarray,
    class_names: tuple[str, ...],
    label_title: str = "prediction",
) -> Image.Image:
    """Side by side: the image, each class's CAM over it, and the label map in the VOC
    palette, each tile titled, with a colour legend of the label map underneath.

    image: uint8 H×W×3; cams: {foreground class index: H×W map in 0..1}; label: uint8 H×W class
    indices (0 = background); class_names: the data set's, background first. Returns a PIL RGB image."""
    pictures = [("image", image)]
    pictures += [
        (_class_name(fg_class + 1, class_names), heatmap_overlay(image, cam)) for fg_class, cam in sorted(cams.items())
    ]
    pictures.append((label_title, colorize_label(label)))
    return picture_panel(pictures, np.unique(label), class_names)
