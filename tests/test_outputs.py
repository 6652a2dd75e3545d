"""engine/outputs.py: a table of two formats gives the run's folders (only the flags given), each
image's files, resume, the manifests' settings (and a checksum given), the writes, and the one-line
errors for nothing to write and two outputs in one folder."""

from __future__ import annotations

import argparse
import json

import pytest

from engine.errors import UserError
from engine.manifest import MANIFEST_NAME
from engine.outputs import OutputFolder, OutputFormat, Outputs, add_output_arguments


def write_text(result: dict, folder: OutputFolder) -> None:
    folder.file(result["name"]).write_text(result["text"])


def write_scaled(result: dict, folder: OutputFolder) -> None:
    folder.file(result["name"]).write_text(str(len(result["text"]) * folder.settings["scale"]))


FORMATS = (
    OutputFormat("out_text", ".txt", write_text, help="the text"),
    OutputFormat("out_length", ".len", write_scaled, help="its length, scaled", setting_flags=("scale",)),
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_output_arguments(parser, FORMATS)
    parser.add_argument("--scale", type=int, default=2)
    return parser.parse_args(argv)


def test_folders_files_writes_and_resume(tmp_path):
    outputs = Outputs.from_args(FORMATS, parse("--out_length", str(tmp_path / "len"), "--scale", "3"))
    assert [(folder.output.flag, folder.path, folder.settings) for folder in outputs.folders] == [
        ("out_length", tmp_path / "len", {"scale": 3})
    ]
    assert outputs.writes("out_length") and not outputs.writes("out_text")
    assert outputs.paths("img") == [tmp_path / "len" / "img.len"]
    outputs.check()
    assert not outputs.done("img")
    (tmp_path / "len").mkdir()
    outputs.write({"name": "img", "text": "abcd"})
    assert (tmp_path / "len" / "img.len").read_text() == "12" and outputs.done("img")


def test_manifests_hold_the_run_and_format_settings(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"weights")
    args = parse("--out_text", str(tmp_path / "text"), "--out_length", str(tmp_path / "len"))
    outputs = Outputs.from_args(FORMATS, args)
    manifests = outputs.manifests(tmp_path / "w.pth", {"network": "n"}, tmp_path / "list.txt")
    for manifest in manifests:
        manifest.check(overwrite=False)
        manifest.write()
    settings = [json.loads((folder.path / MANIFEST_NAME).read_text())["settings"] for folder in outputs.folders]
    assert settings == [{"output": "out_text", "network": "n"}, {"output": "out_length", "network": "n", "scale": 2}]


def test_manifests_take_a_known_checksum_without_reading_the_weights(tmp_path):
    """cam_to_ir_label.py records the CPN weights that made its CAMs, a file it never opens."""
    outputs = Outputs.from_args(FORMATS, parse("--out_text", str(tmp_path / "text")))
    (manifest,) = outputs.manifests(tmp_path / "elsewhere.pth", {}, tmp_path / "list.txt", checksum="ab" * 32)
    manifest.write()
    written = json.loads((tmp_path / "text" / MANIFEST_NAME).read_text())
    assert written["weights_sha256"] == "ab" * 32 and written["weights"] == str(tmp_path / "elsewhere.pth")


def test_nothing_to_write_names_every_flag():
    with pytest.raises(UserError, match="^nothing to write: pass at least one of --out_text, --out_length$"):
        Outputs.from_args(FORMATS, parse()).check()


def test_two_outputs_in_one_folder(tmp_path):
    outputs = Outputs.from_args(FORMATS, parse("--out_text", str(tmp_path), "--out_length", str(tmp_path)))
    with pytest.raises(UserError, match=f"--out_text and --out_length both write to {tmp_path}; give each"):
        outputs.check()
