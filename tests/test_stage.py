"""engine/stage.py: a process's share of the list (every N-th image from its rank), the to-do list
after a resume and with --overwrite, the line that reports both (on the first process only), and
the one-line error for an input folder that lacks files or does not exist."""

from __future__ import annotations

import argparse

import pytest

from engine.errors import UserError
from engine.outputs import OutputFormat, Outputs
from engine.runtime import ProcessGroup
from engine.stage import Share, require_files

NAMES = [f"img_{index}" for index in range(7)]


def text_outputs(folder) -> Outputs:
    output = OutputFormat("out_text", ".txt", lambda name, out: out.file(name).write_text(name), help="text")
    return Outputs.from_args([output], argparse.Namespace(out_text=str(folder)))


def test_processes_share_the_list_without_overlap(tmp_path):
    outputs = text_outputs(tmp_path)
    shares = [Share.of(NAMES, ProcessGroup(rank=rank, world_size=3), outputs, False) for rank in range(3)]
    assert [share.names for share in shares] == [NAMES[0::3], NAMES[1::3], NAMES[2::3]]
    assert sorted(name for share in shares for name in share.names) == sorted(NAMES)
    assert all(share.list_size == 7 and share.processes == 3 for share in shares)
    assert [share.rank for share in shares] == [0, 1, 2]


def test_todo_skips_done_images_unless_overwrite(tmp_path):
    outputs = text_outputs(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    for name in NAMES[:3]:
        outputs.write(name)
    resumed = Share.of(NAMES, ProcessGroup(), outputs, overwrite=False)
    assert resumed.names == NAMES and resumed.todo == NAMES[3:]
    assert Share.of(NAMES, ProcessGroup(), outputs, overwrite=True).todo == NAMES
    # A rank's to-do list is its share's images that are not done.
    assert Share.of(NAMES, ProcessGroup(rank=1, world_size=2), outputs, overwrite=False).todo == ["img_3", "img_5"]


def test_report_names_the_share_only_under_torchrun_and_prints_on_the_first_process(tmp_path, capsys):
    outputs = text_outputs(tmp_path)
    outputs.write(NAMES[1])
    Share.of(NAMES, ProcessGroup(), outputs, False).report("device cpu")
    assert capsys.readouterr().out == "7 images: 1 already done, 6 to do; device cpu\n"
    Share.of(NAMES, ProcessGroup(rank=0, world_size=2), outputs, False).report("fp32")
    assert (
        capsys.readouterr().out == "4 images (this process's share of 7, 2 processes): 0 already done, 4 to do; fp32\n"
    )
    Share.of(NAMES, ProcessGroup(rank=1, world_size=2), outputs, False).report("fp32")
    assert capsys.readouterr().out == ""


def test_missing_input_files_are_one_line_naming_the_folder_and_the_first_names(tmp_path):
    for name in NAMES[:2]:
        (tmp_path / f"{name}.npy").write_bytes(b"")
    (tmp_path / "img_2.png").write_bytes(b"")  # another suffix does not count
    require_files(tmp_path, NAMES[:2], ".npy", "CAM", "make them")
    with pytest.raises(UserError) as error:
        require_files(tmp_path, NAMES, ".npy", "CAM", "make them")
    assert str(error.value) == (
        f"5 of 7 images to do have no CAM file {tmp_path}/<name>.npy: img_2, img_3, img_4 (and 2 more); make them"
    )


def test_a_missing_input_folder_is_refused_even_with_nothing_to_do(tmp_path):
    with pytest.raises(UserError, match=f"^CAM folder not found: {tmp_path / 'absent'}; make them$"):
        require_files(tmp_path / "absent", [], ".npy", "CAM", "make them")
