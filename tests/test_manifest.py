"""engine/manifest.py: the streamed checksum, and a folder's manifest rules: a new or matching
folder passes and records each list, other weights or settings, an unreadable manifest and
outputs without a manifest are one-line UserErrors naming the file and both ways out,
--overwrite passes them all, and processes sharing a folder write the same bytes; an input
folder's manifest is read back, its absence a warning, an unreadable one a one-line UserError."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.manifest import MANIFEST_NAME, FolderManifest, InputManifest, weights_sha256

SHA_A, SHA_B = "a" * 64, "b" * 64
SETTINGS = {"output": "out_cam", "network": "network.resnet38_CPN", "scales": (0.5, 1.0), "precision": "fp32"}


def manifest(
    folder: Path, *, sha: str = SHA_A, weights: str = "A.pth", settings: dict = SETTINGS, input_list: str = "train.txt"
) -> FolderManifest:
    """A run's expected manifest; the weights and list are named under the folder's parent."""
    return FolderManifest(
        folder,
        weights=folder.parent / weights,
        weights_sha256=sha,
        settings=settings,
        input_list=folder.parent / input_list,
        version="0123abcd",
    )


def written(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_weights_sha256_streams_the_whole_file(tmp_path):
    data = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB: several chunks and a partial one
    (tmp_path / "w.pth").write_bytes(data)
    assert weights_sha256(tmp_path / "w.pth") == hashlib.sha256(data).hexdigest()
    with pytest.raises(UserError, match="weights file not found"):
        weights_sha256(tmp_path / "missing.pth")


def test_new_folder_writes_nothing_until_the_first_file(tmp_path):
    folder = tmp_path / "cam"
    expected = manifest(folder)
    expected.check(overwrite=False)
    assert not folder.exists()
    expected.write()
    assert written(folder) == {
        "weights_sha256": SHA_A,
        "settings": {**SETTINGS, "scales": [0.5, 1.0]},
        "weights": str(tmp_path / "A.pth"),
        "version": "0123abcd",
        "lists": [str(tmp_path / "train.txt")],
    }


def test_same_weights_and_settings_resume_and_record_each_list(tmp_path):
    folder = tmp_path / "cam"
    first = manifest(folder)
    first.check(overwrite=False)
    first.write()
    (folder / "img.npy").write_bytes(b"")
    # The same weights file moved, another list: resumes; the record keeps the first path.
    val = manifest(folder, weights="moved/A.pth", input_list="val.txt")
    val.check(overwrite=False)
    val.write()
    assert written(folder)["lists"] == [str(tmp_path / "train.txt"), str(tmp_path / "val.txt")]
    assert written(folder)["weights"] == str(tmp_path / "A.pth")
    content = (folder / MANIFEST_NAME).read_bytes()
    again = manifest(folder)
    again.check(overwrite=False)
    again.write()
    assert (folder / MANIFEST_NAME).read_bytes() == content


def test_other_weights_are_refused_naming_both(tmp_path):
    folder = tmp_path / "cam"
    manifest(folder).write()
    with pytest.raises(UserError) as error:
        manifest(folder, sha=SHA_B, weights="B.pth").check(overwrite=False)
    assert str(error.value) == (
        f"{folder / MANIFEST_NAME} was written by weights {tmp_path / 'A.pth'} (sha256 {SHA_A[:12]}…), this run "
        f"uses {tmp_path / 'B.pth'} (sha256 {SHA_B[:12]}…); use a new folder, or pass --overwrite to rewrite "
        "the listed images' outputs and the manifest"
    )


@pytest.mark.parametrize(
    "change, difference",
    [
        ({"scales": (1.0,)}, "scales [0.5, 1.0], this run uses scales [1.0]"),
        ({"precision": "bf16 autocast"}, "precision fp32, this run uses precision bf16 autocast"),
        ({"crf_alpha": 4}, "crf_alpha (none), this run uses crf_alpha 4"),
    ],
)
def test_other_settings_are_refused_naming_the_setting(change, difference, tmp_path):
    folder = tmp_path / "cam"
    manifest(folder).write()
    with pytest.raises(UserError, match=re.escape(f"cam/{MANIFEST_NAME} was written with {difference}; use a new")):
        manifest(folder, settings={**SETTINGS, **change}).check(overwrite=False)


def test_outputs_without_a_manifest_are_refused(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / ".img.npy.x1y2.tmp").write_bytes(b"")  # an interrupted write's leftover: not an output
    manifest(folder).check(overwrite=False)
    (folder / "img.npy").write_bytes(b"")
    with pytest.raises(UserError, match=f"{folder} holds outputs but no {MANIFEST_NAME} .*--overwrite"):
        manifest(folder).check(overwrite=False)


@pytest.mark.parametrize("content", [b'{"weights_sha256": ', b"[]", b'{"settings": 3}', b"\xff\xfe"])
def test_unreadable_manifest_is_one_line(content, tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(UserError) as error:
        manifest(folder).check(overwrite=False)
    message = str(error.value)
    assert message.startswith(f"cannot read {folder / MANIFEST_NAME} (") and "--overwrite" in message
    assert "\n" not in message


@pytest.mark.parametrize("state", ["other weights", "unreadable", "no manifest"])
def test_overwrite_passes_and_writes_a_fresh_manifest(state, tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "img.npy").write_bytes(b"")
    if state == "other weights":
        manifest(folder, sha=SHA_B, input_list="val.txt").write()
    elif state == "unreadable":
        (folder / MANIFEST_NAME).write_text("{")
    run = manifest(folder)
    run.check(overwrite=True)
    run.write()
    assert written(folder)["weights_sha256"] == SHA_A and written(folder)["lists"] == [str(tmp_path / "train.txt")]


def test_processes_sharing_a_folder_write_the_same_bytes(tmp_path):
    """torchrun: both ranks find the folder new, both write; a third starts after the first file."""
    folder = tmp_path / "cam"
    ranks = [manifest(folder), manifest(folder)]
    for rank in ranks:
        rank.check(overwrite=False)
    ranks[0].write()
    content = (folder / MANIFEST_NAME).read_bytes()
    ranks[1].write()
    assert (folder / MANIFEST_NAME).read_bytes() == content
    (folder / "img.npy").write_bytes(b"")
    late = manifest(folder)
    late.check(overwrite=False)
    late.write()
    assert (folder / MANIFEST_NAME).read_bytes() == content


# --- An input folder's manifest: what made another stage's files ----------------------------


def test_input_manifest_reads_what_made_the_folder(tmp_path, capsys):
    folder = tmp_path / "cam"
    manifest(folder).write()
    read = InputManifest.read(folder, "rewrite them")
    assert read == InputManifest(str(tmp_path / "A.pth"), SHA_A, {**SETTINGS, "scales": [0.5, 1.0]})
    assert capsys.readouterr().err == ""


def test_input_folder_without_manifest_is_a_warning_naming_it(tmp_path, capsys):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "img.npy").write_bytes(b"")
    assert InputManifest.read(folder, "rewrite them") is None
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {folder} has no {MANIFEST_NAME}") and warning.count("\n") == 1
    assert InputManifest.read(folder, "rewrite them", warn=False) is None  # the other torchrun processes
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"weights_sha256": "ab", "settings": {}}', b"\xff\xfe"], ids=str)
def test_unreadable_input_manifest_is_one_line_naming_the_remedy(content, tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(UserError) as error:
        InputManifest.read(folder, "rewrite them")
    message = str(error.value)
    assert message.startswith(f"cannot read {folder / MANIFEST_NAME} (") and message.endswith("; rewrite them")
    assert "\n" not in message
