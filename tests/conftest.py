"""Shared fixtures, made once per test session: the toy VOC set and its lists, the toy ground truth as
single-channel label PNGs, and a random CPN's weights file."""

from pathlib import Path

import pytest
import torch

from network import build_network
from tests.tiny import write_label_pngs
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


@pytest.fixture(scope="session")
def toy_label_pngs(toy_voc, tmp_path_factory) -> Path:
    """`write_label_pngs` of every toy image."""
    names = [path.stem for path in (toy_voc / "SegmentationClass").glob("*.png")]
    return write_label_pngs(toy_voc, names, tmp_path_factory.mktemp("label_pngs"))


@pytest.fixture(scope="session")
def cpn_weights(tmp_path_factory) -> Path:
    """A random CPN (torch seed 0), saved as train_cpn.py saves its weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_cpn.pth"
    torch.save(build_network("resnet38_CPN").state_dict(), path)
    return path
