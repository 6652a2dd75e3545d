"""README's commands stay runnable: every python/torchrun command in its code blocks names a script
that exists and flags that script's own parser accepts (the full runs need VOC and a GPU; `make demo`
and the script tests run the same scripts on the toy set)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT_MODULES = {
    "train_cpn.py": "train_cpn",
    "infer_cam.py": "infer_cam",
    "evaluation_cam.py": "evaluation_cam",
    "voc12/make_cls_labels.py": "voc12.make_cls_labels",
    "-m network.mxnet_params": "network.mxnet_params",
    "-m voc12.toy": "voc12.toy",
    "coco14/make_cls_labels.py": "coco14.make_cls_labels",
    "-m coco14.toy": "coco14.toy",
    "cam_to_ir_label.py": "cam_to_ir_label",
    "train_irn.py": "train_irn",
    "train_aff.py": "train_aff",
    "make_sem_seg_labels.py": "make_sem_seg_labels",
    "infer_aff.py": "infer_aff",
    "infer_seg.py": "infer_seg",
    "run_pipeline.py": "run_pipeline",
    "train_seg.py": "train_seg",
}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        commands += [line.split("#")[0].strip() for line in joined.splitlines() if line.strip()]
    return commands


def script_and_arguments(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0] == "torchrun":
        words = ["python"] + [word for word in words[1:] if not word.startswith("--nproc")]
    assert words[0] == "python", command
    if words[1] == "-m":
        return f"-m {words[2]}", words[3:]
    return words[1], words[2:]


COMMANDS = [command for command in readme_commands() if not command.startswith("make ")]


def test_readme_has_the_two_quick_start_commands_and_the_workflow():
    assert [c.split()[:2] for c in readme_commands() if c.startswith("make ")] == [["make", "demo"], ["make", "test"]]
    scripts = {script_and_arguments(command)[0] for command in COMMANDS}
    assert {"train_cpn.py", "infer_cam.py", "evaluation_cam.py", "voc12/make_cls_labels.py"} <= scripts


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    script, arguments = script_and_arguments(command)
    assert script in SCRIPT_MODULES, f"README runs an unknown script: {command}"
    if not script.startswith("-m"):
        assert (REPO / script).is_file()
    module = importlib.import_module(SCRIPT_MODULES[script])
    module.parse_args(arguments)
