"""A chain of stages, each a few calls of stage scripts' `main(argv)`, run into one work folder, each stage's
files under <work_dir>/<stage name>/ with its record `stage.json`:

    {"name", "key", "calls": [[module, argv], ...], "inputs": {path: [bytes, mtime_ns]}, "complete",
     "run_id", "seconds", "miou", "score_json", "outputs"}

`key` hashes the calls, the external input files' sizes and times and the previous stage's `run_id`, a new
one each time a stage runs. A stage whose record is complete, whose key matches and whose outputs exist is
skipped, reading nothing and writing nothing; a changed setting (or an upstream stage that ran again)
changes the key, so the stage and every later one run afresh in an emptied folder. An interrupted stage
(record incomplete, same key) runs again in place: the trainers resume, the per-image stages skip
finished images. Torch-free: which modules a stage imports is up to its calls."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.fileio import atomic_path

RECORD_NAME = "stage.json"


@dataclass(frozen=True)
class Call:
    """One call of a stage script: `<module>.main(argv)`."""

    module: str
    argv: list[str]


@dataclass(frozen=True)
class Stage:
    """What a stage runs (`calls`, in order), what it must leave behind (`outputs`), the files outside the
    work folder whose change reruns it (`inputs`: data lists, weights) and the JSON its mIoU is read from
    (evaluation_cam.py's `best_miou`), if it is scored."""

    name: str
    calls: list[Call]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    score_json: Path | None = None


def call_main(call: Call) -> None:
    """Import the stage script and run its main on the call's argv (the scripts' own entry point)."""
    importlib.import_module(call.module).main(call.argv)


def file_fingerprint(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file, None when it does not exist."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return [status.st_size, status.st_mtime_ns]


def stage_key(stage: Stage, upstream_run_id: str) -> tuple[str, dict]:
    """(the key, the input fingerprints it hashes)."""
    inputs = {str(path): file_fingerprint(path) for path in stage.inputs}
    calls = [[call.module, call.argv] for call in stage.calls]
    content = json.dumps({"calls": calls, "inputs": inputs, "upstream": upstream_run_id}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest(), inputs


def read_record(folder: Path) -> dict | None:
    path = folder / RECORD_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({error}); delete the stage's folder {folder} to rerun it") from None


def write_record(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / RECORD_NAME) as tmp_path:
        tmp_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def stage_range(names: Sequence[str], first: str | None, last: str | None) -> tuple[int, int]:
    """Indices of --from and --until (inclusive) in the stage names."""
    for flag, name in (("--from", first), ("--until", last)):
        if name is not None and name not in names:
            raise UserError(f"{flag} {name}: no such stage; choose one of {', '.join(names)}")
    start = 0 if first is None else names.index(first)
    stop = len(names) - 1 if last is None else names.index(last)
    if start > stop:
        raise UserError(f"--from {first} comes after --until {last}")
    return start, stop


def run_stages(
    stages: Sequence[Stage],
    work_dir: Path,
    *,
    first: str | None = None,
    last: str | None = None,
    call: Callable[[Call], object] = call_main,
) -> list[dict]:
    """Run or skip each stage up to `last`; `first`: that stage and every later one run even when they
    could be skipped. → the stages' records, in order (a skipped stage's as it was)."""
    start, stop = stage_range([stage.name for stage in stages], first, last)
    records, upstream = [], ""
    for index, stage in enumerate(stages[: stop + 1]):
        folder = work_dir / stage.name
        key, inputs = stage_key(stage, upstream)
        record = read_record(folder)
        same = record is not None and record["key"] == key
        forced = first is not None and index >= start
        if same and record["complete"] and not forced and all(path.exists() for path in stage.outputs):
            print(f"== {stage.name}: done, settings unchanged (skipped; {record['seconds']:.0f} s before)", flush=True)
            records.append(record)
            upstream = record["run_id"]
            continue
        if folder.exists() and not (same and not record["complete"]):  # an interrupted run resumes in place
            shutil.rmtree(folder)
        calls = [[each.module, each.argv] for each in stage.calls]
        write_record(folder, {"key": key, "calls": calls, "inputs": inputs, "complete": False})
        print(f"== {stage.name}", flush=True)
        started = time.perf_counter()
        for each in stage.calls:
            print(f"   {each.module} {' '.join(each.argv)}", flush=True)
            call(each)
        seconds = time.perf_counter() - started
        missing = [str(path) for path in stage.outputs if not path.exists()]
        if missing:
            raise UserError(f"stage {stage.name} finished without {', '.join(missing)}; see its log above")
        record = {
            "name": stage.name,
            "key": key,
            "calls": calls,
            "inputs": inputs,
            "complete": True,
            "run_id": hashlib.sha256(f"{key} {time.time_ns()} {os.getpid()}".encode()).hexdigest(),
            "seconds": seconds,
            "miou": json.loads(stage.score_json.read_text())["best_miou"] if stage.score_json else None,
            "score_json": str(stage.score_json) if stage.score_json else None,
            "outputs": [str(path) for path in stage.outputs],
        }
        write_record(folder, record)
        score = "" if record["miou"] is None else f", mIoU {record['miou']:.2f} %"
        print(f"   {stage.name}: {seconds:.1f} s{score}", flush=True)
        records.append(record)
        upstream = record["run_id"]
    return records


def write_if_changed(path: Path, content: bytes) -> bool:
    """Write `content` atomically unless the file already holds exactly it; → whether it wrote."""
    if path.is_file() and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(content)
    return True
