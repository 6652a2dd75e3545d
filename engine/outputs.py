"""A stage's per-image outputs as a table: each row (`OutputFormat`) is a flag naming a folder, the
file it writes there per image and the function that writes it. From the rows whose flag was given,
`Outputs` derives the run's folders, each image's files (an image whose files all exist is done, so
an interrupted run resumes), the folders' manifests (engine/manifest.py) and one image's writes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.fileio import check_writable_dir
from engine.manifest import FolderManifest, git_commit, weights_sha256


@dataclass(frozen=True)
class OutputFolder:
    """One folder a run writes: its format, its path, the settings that change its files besides the
    stage's own (its manifest's format settings, read by the format's writer) and one image's files
    in it, <name><suffix>."""

    output: OutputFormat
    path: Path
    settings: dict
    suffixes: tuple[str, ...]

    def file(self, name: str, suffix: str | None = None) -> Path:
        """The image's file of `suffix`, by default the format's main one."""
        return self.path / f"{name}{suffix or self.suffixes[0]}"


@dataclass(frozen=True)
class OutputFormat:
    """A row of a stage's table: the flag that names its folder (and its manifest's "output"), one
    image's file there, `write(result, folder)` that builds and writes it from one image's result,
    the flags whose values go in the folder's manifest, and the flag's help."""

    flag: str
    suffix: str
    write: Callable[[object, OutputFolder], None]
    help: str
    setting_flags: tuple[str, ...] = ()

    def folders(self, args: argparse.Namespace) -> list[OutputFolder]:
        """Its folder, when its flag was given."""
        root = getattr(args, self.flag)
        if root is None:
            return []
        settings = {flag: getattr(args, flag) for flag in self.setting_flags}
        return [OutputFolder(self, Path(root), settings, (self.suffix,))]


def add_output_arguments(parser: argparse.ArgumentParser, formats: Sequence[OutputFormat]) -> None:
    """A `--<flag> DIR` argument per row, None when not given."""
    for output in formats:
        parser.add_argument(f"--{output.flag}", default=None, metavar="DIR", help=output.help)


@dataclass(frozen=True)
class Outputs:
    """The folders of one run: those of the table's rows whose flag was given."""

    formats: tuple[OutputFormat, ...]
    folders: tuple[OutputFolder, ...]

    @classmethod
    def from_args(cls, formats: Sequence[OutputFormat], args: argparse.Namespace) -> Outputs:
        return cls(tuple(formats), tuple(folder for output in formats for folder in output.folders(args)))

    def check(self) -> None:
        """Before any work: something to write, one output per folder (a folder's manifest
        describes one format), every folder writable."""
        if not self.folders:
            flags = ", ".join(f"--{output.flag}" for output in self.formats)
            raise UserError(f"nothing to write: pass at least one of {flags}")
        flags_by_folder: dict[Path, str] = {}
        for folder in self.folders:
            other = flags_by_folder.setdefault(folder.path.resolve(), folder.output.flag)
            if other != folder.output.flag:
                raise UserError(
                    f"--{other} and --{folder.output.flag} both write to {folder.path}; give each output its own folder"
                )
        for folder in self.folders:
            check_writable_dir(folder.path)

    def writes(self, flag: str) -> bool:
        return any(folder.output.flag == flag for folder in self.folders)

    def paths(self, name: str) -> list[Path]:
        """Every file this run writes for one image."""
        return [folder.file(name, suffix) for folder in self.folders for suffix in folder.suffixes]

    def done(self, name: str) -> bool:
        return all(path.is_file() for path in self.paths(name))

    def manifests(
        self,
        weights: str | os.PathLike,
        run_settings: dict,
        input_list: str | os.PathLike,
        checksum: str | None = None,
        provenance: dict | None = None,
    ) -> list[FolderManifest]:
        """Each folder's manifest: the weights' checksum (hashed once, unless given: a stage that runs no
        network records the weights that made its inputs, from their manifest) and every setting that
        changes the folder's files, the run's and its format's. The list, the weights' path, the code
        version and `provenance` (what made the weights, where known) are recorded, not compared."""
        if checksum is None:
            checksum = weights_sha256(weights)
        version = git_commit()
        return [
            FolderManifest(
                folder.path,
                weights=weights,
                weights_sha256=checksum,
                settings={"output": folder.output.flag, **run_settings, **folder.settings},
                input_list=input_list,
                version=version,
                provenance=provenance,
            )
            for folder in self.folders
        ]

    def write(self, result) -> None:
        """Build and atomically write every requested output of one image's result."""
        for folder in self.folders:
            folder.output.write(result, folder)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """`--overwrite`, the way out that a manifest's refusal names (every stage that writes per-image files)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite the listed images' outputs and each folder's manifest, even when a folder was written "
        "with other weights, inputs or settings",
    )
