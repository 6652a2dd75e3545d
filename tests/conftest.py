"""Shared fixtures. The toy VOC set is generated once per test session."""

from pathlib import Path

import pytest
import torch

from voc12.make_cls_labels import make_cls_labels
from voc12.toy import make_toy_voc

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_voc(tmp_path_factory) -> Path:
    """The toy VOC2012 root (default size of voc12.toy)."""
    return make_toy_voc(tmp_path_factory.mktemp("toy") / "VOC2012")


@pytest.fixture(scope="session")
def toy_lists(toy_voc, tmp_path_factory) -> dict[str, Path]:
    """make_cls_labels on the toy set: paths keyed "cls_labels", "train", "val", "train_aug"."""
    return make_cls_labels(toy_voc, tmp_path_factory.mktemp("lists")).paths
