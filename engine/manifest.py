"""An output folder's manifest: which weights and settings made its files.

A script that skips finished images would otherwise mix two networks in one folder when
rerun with other weights. Each output folder holds `manifest.json`:

    {"weights_sha256": ..., "settings": {...}, "weights": path, "version": git commit, "lists": [...]}

`weights_sha256` and `settings` (network, scales, precision, the format's own parameters)
determine the files' contents: a run whose differ is refused before any work. `weights` (the
path), `version`, `lists` and a stage's `provenance` (what made its weights, where known) are a
record only, so the same file moved, a newer checkout or another image list (val after train)
resumes; each new list is added to `lists`.

A folder that holds files but no manifest (an older version's, the reference's) is refused:
which weights made them is unknown. `--overwrite` (the scripts' flag) skips every check.
A stage that reads another stage's folder (make_sem_seg_labels.py the CAMs) records what made it
from its manifest (`InputManifest`): a folder without one (IRN's own make_cam) is a warning.

torchrun: every process computes the same content (no times, no ranks) and writes it
atomically before the folder's first file, so concurrent writers agree."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.fileio import atomic_path

MANIFEST_NAME = "manifest.json"
HASH_CHUNK_BYTES = 1 << 20
REMEDY = "use a new folder, or pass --overwrite to rewrite the listed images' outputs and the manifest"


def weights_sha256(path: str | os.PathLike) -> str:
    """The weights file's sha256, read in 1 MiB chunks (a 400 MB checkpoint never sits in memory)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    except OSError as error:
        raise UserError(f"cannot read weights file {path}: {error.strerror}") from None
    return digest.hexdigest()


def git_commit() -> str | None:
    """The checkout's git commit (one `git rev-parse`, a few ms), None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _read_manifest(folder: Path, remedy: str) -> dict | None:
    """The folder's manifest as written by `FolderManifest.write`, None when there is none; an
    unreadable or foreign one is a UserError (one line: the file, why, `remedy`)."""
    path = folder / MANIFEST_NAME
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({error}); {remedy}") from None
    fields = {"weights": str, "weights_sha256": str, "settings": dict}
    if not (isinstance(content, dict) and all(isinstance(content.get(key), kind) for key, kind in fields.items())):
        raise UserError(f"cannot read {path} (not an output manifest); {remedy}")
    return content


@dataclass(frozen=True)
class InputManifest:
    """What made the files of a folder a stage reads (another stage's output): the weights (path and
    sha256) and the settings, from the folder's manifest."""

    weights: str
    weights_sha256: str
    settings: dict

    @classmethod
    def read(cls, folder: str | os.PathLike, remedy: str, warn: bool = True) -> InputManifest | None:
        """None for a folder without a manifest (with a warning on stderr naming it, if `warn`: pass
        False on all but one torchrun process); an unreadable one is a UserError naming `remedy`."""
        folder = Path(folder)
        content = _read_manifest(folder, remedy)
        if content is None:
            if warn:
                print(
                    f"warning: {folder} has no {MANIFEST_NAME} (not written by this repository's scripts), "
                    "so which weights and settings made its files is not recorded",
                    file=sys.stderr,
                )
            return None
        return cls(content["weights"], content["weights_sha256"], content["settings"])


def _shown(value) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)


class FolderManifest:
    """The manifest one run expects in `folder`. `check` before any work (reads, writes nothing),
    then `write` before the run's first file in the folder."""

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        weights: str | os.PathLike,
        weights_sha256: str,
        settings: dict,
        input_list: str | os.PathLike,
        version: str | None,
        provenance: dict | None = None,
    ):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        # Through JSON once, so that it compares equal to what is read back (tuples become lists).
        self.expected = json.loads(json.dumps({"weights_sha256": weights_sha256, "settings": settings}))
        self.record = {"weights": str(Path(weights).resolve()), "version": version}
        if provenance is not None:
            self.record["provenance"] = provenance
        self.input_list = str(Path(input_list).resolve())
        self.existing: dict | None = None

    def check(self, overwrite: bool) -> None:
        """UserError (one line: the file, both values, the two ways out) unless the folder is new or
        empty, or its manifest has the same weights checksum and settings; with `overwrite`, none."""
        self.existing = None
        if overwrite:
            return
        # Files first, then the manifest: it is written before a folder's first file, so a file
        # seen here means its manifest is there to read, even while another process starts the folder.
        holds_files = self._holds_files()
        existing = _read_manifest(self.folder, REMEDY)
        if existing is None:
            if holds_files:
                raise UserError(
                    f"{self.folder} holds outputs but no {MANIFEST_NAME} (an older infer_cam.py's "
                    f"or the reference's), so which weights made them is unknown; {REMEDY}"
                )
            return
        difference = self._difference(existing)
        if difference:
            raise UserError(f"{self.path} was written {difference}; {REMEDY}")
        self.existing = existing

    def write(self) -> None:
        """Atomically write the manifest (the one `check` read, plus this run's list), unless it
        already says exactly that."""
        if self.existing is None:
            content = {**self.expected, **self.record, "lists": [self.input_list]}
        else:
            lists = list(self.existing.get("lists", []))
            if self.input_list in lists:
                return
            content = {**self.existing, "lists": lists + [self.input_list]}
        with atomic_path(self.path) as tmp_path:
            tmp_path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

    def _holds_files(self) -> bool:
        """Whether the folder has files besides the manifest (hidden ones, such as an interrupted
        write's temporary file, aside)."""
        try:
            with os.scandir(self.folder) as entries:
                return any(
                    entry.is_file() and entry.name != MANIFEST_NAME and not entry.name.startswith(".")
                    for entry in entries
                )
        except FileNotFoundError:
            return False

    def _difference(self, existing: dict) -> str | None:
        """The first difference that changes the files' contents, as "by X, this run uses Y"."""
        old_sha, new_sha = existing.get("weights_sha256"), self.expected["weights_sha256"]
        if old_sha != new_sha:
            return (
                f"by weights {existing.get('weights')} (sha256 {str(old_sha)[:12]}…), this run uses "
                f"{self.record['weights']} (sha256 {new_sha[:12]}…)"
            )
        old, new = existing["settings"], self.expected["settings"]
        for key in [*new, *(key for key in old if key not in new)]:
            if old.get(key) != new.get(key):
                return f"with {key} {_shown(old.get(key))}, this run uses {key} {_shown(new.get(key))}"
        return None
