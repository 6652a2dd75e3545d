"""tool/visualization.py: heat-map colours and blending, VOC palette colouring, palette
PNGs read back as class indices, and the panel's layout."""

from __future__ import annotations

import numpy as np

from engine.datasets import VOC12
from tool.visualization import TILE_GAP, TITLE_HEIGHT, cam_panel, colorize_label, heatmap_overlay


def test_heatmap_ends_of_the_jet_map():
    image = np.zeros((2, 3, 3), np.uint8)
    cam = np.array([[0.0, 1.0, 2.0], [-1.0, 0.5, 1.0]])
    pure = heatmap_overlay(image, cam, opacity=1.0)
    # jet runs from dark blue (0, 0, 0.5) to dark red (0.5, 0, 0); values outside 0..1 clip.
    np.testing.assert_array_equal(pure[0, 0], [0, 0, 128])
    np.testing.assert_array_equal(pure[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(pure[0, 2], pure[0, 1])
    np.testing.assert_array_equal(pure[1, 0], pure[0, 0])
    assert pure[1, 1, 1] > 200  # the middle of jet is green-ish


def test_heatmap_blends_with_the_image():
    image = np.full((4, 4, 3), 200, np.uint8)
    cam = np.zeros((4, 4))
    np.testing.assert_array_equal(heatmap_overlay(image, cam, opacity=0.0), image)
    half = heatmap_overlay(image, cam, opacity=0.5)
    np.testing.assert_array_equal(half[0, 0], [100, 100, 164])  # (200 + (0, 0, 128)) / 2


def test_colorize_label_uses_the_voc_palette():
    label = np.array([[0, 1, 15], [20, 255, 2]], np.uint8)
    colours = colorize_label(label)
    np.testing.assert_array_equal(colours[0], [[0, 0, 0], [128, 0, 0], [192, 128, 128]])
    np.testing.assert_array_equal(colours[1], [[0, 64, 128], [224, 224, 192], [0, 128, 0]])


def test_cam_panel_layout():
    rng = np.random.default_rng(0)
    height, width = 30, 40
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    cams = {14: rng.random((height, width)), 0: rng.random((height, width))}
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2 :] = 15
    panel = np.asarray(cam_panel(image, cams, label, VOC12.class_names))
    tiles = 1 + len(cams) + 1
    assert panel.shape[0] == height + 2 * TITLE_HEIGHT
    assert panel.shape[1] >= tiles * width + (tiles - 1) * TILE_GAP
    step = width + TILE_GAP
    rows = slice(TITLE_HEIGHT, TITLE_HEIGHT + height)
    np.testing.assert_array_equal(panel[rows, 0:width], image)
    # Heat maps in class order: aeroplane (0) before person (14).
    np.testing.assert_array_equal(panel[rows, step : step + width], heatmap_overlay(image, cams[0]))
    np.testing.assert_array_equal(panel[rows, 2 * step : 2 * step + width], heatmap_overlay(image, cams[14]))
    np.testing.assert_array_equal(panel[rows, 3 * step : 3 * step + width], colorize_label(label))
