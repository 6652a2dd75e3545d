"""voc12/lists.py: image lists and the VOC root check, and that voc12/data.py still offers them."""

import pytest

import voc12.data
from engine.datasets import VOC12
from engine.errors import UserError
from voc12.lists import image_name_from_line, load_image_list

check_voc_root = VOC12.check_root

# ---------- image lists ----------


def test_list_forms_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(
        b"2007_000032\r\n\r\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
        b"JPEGImages/2008_000001.jpg SegmentationClassAug/2008_000001.png\n  \n  2009_000002  \n"
        b"name.with.dots\n"
    )
    assert load_image_list(path) == ["2007_000032", "2007_000039", "2008_000001", "2009_000002", "name.with.dots"]


def test_empty_or_missing_list_is_a_user_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(UserError, match="empty.txt.*empty"):
        load_image_list(empty)
    with pytest.raises(UserError, match="missing.txt"):
        load_image_list(tmp_path / "missing.txt")
    binary = tmp_path / "labels.npy"
    binary.write_bytes(b"\x93NUMPY\xff\xfe")
    with pytest.raises(UserError, match="labels.npy"):
        load_image_list(binary)


# ---------- VOC root ----------


def test_voc_root_checks(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    (devkit / "VOC2012" / "JPEGImages").mkdir(parents=True)
    assert check_voc_root(devkit / "VOC2012") == devkit / "VOC2012"
    with pytest.raises(UserError, match=f"pass {devkit / 'VOC2012'}$"):
        check_voc_root(devkit)
    with pytest.raises(UserError, match=f"pass {devkit / 'VOC2012'}$"):
        check_voc_root(tmp_path)
    with pytest.raises(UserError, match="not found: .*nowhere"):
        check_voc_root(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="other has no JPEGImages"):
        check_voc_root(tmp_path / "other")


@pytest.mark.parametrize(
    "line, name",
    [
        ("2007_000032", "2007_000032"),
        ("/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png", "2007_000039"),
        ("JPEGImages/a.JPEG", "a"),
        ("name.with.dots", "name.with.dots"),
    ],
)
def test_image_name_from_line(line, name):
    assert image_name_from_line(line) == name


def test_voc12_data_still_offers_the_list_readers():
    assert voc12.data.load_image_list is load_image_list
