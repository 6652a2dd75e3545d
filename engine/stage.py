"""What every per-image stage (infer_cam, cam_to_ir_label, make_sem_seg_labels) does around its
work: this process's share of the image list and what is left of it to do (`Share`), the line that
says so, and the check that an input folder holds a file for each image to do (`require_files`).
An input folder's manifest is read by engine/manifest.py's `InputManifest`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UserError, and_more
from engine.outputs import Outputs

if TYPE_CHECKING:  # engine/runtime.py imports torch; this module does not need it
    from engine.runtime import ProcessGroup

NAMES_SHOWN = 3  # images named when files are missing; the rest are counted


@dataclass(frozen=True)
class Share:
    """This process's images: every `processes`-th of the list's `list_size`, from the process's
    `rank` (torchrun; each process writes its own images' files, so no process group is needed), and
    those of them still to do."""

    list_size: int
    rank: int
    processes: int
    names: list[str]
    todo: list[str]

    @classmethod
    def of(cls, all_names: Sequence[str], group: ProcessGroup, outputs: Outputs, overwrite: bool) -> Share:
        """The to-do list: every image of the share with `overwrite`, else those whose outputs are
        not all there (an interrupted run resumes)."""
        names = list(all_names[group.rank :: group.world_size])
        todo = names if overwrite else [name for name in names if not outputs.done(name)]
        return cls(len(all_names), group.rank, group.world_size, names, todo)

    def report(self, details: str) -> None:
        """On the first process only: "N images (this process's share of M, P processes): D already
        done, T to do; <details>" (the share only under torchrun)."""
        if self.rank != 0:
            return
        share = f" (this process's share of {self.list_size}, {self.processes} processes)" if self.processes > 1 else ""
        done = len(self.names) - len(self.todo)
        print(f"{len(self.names)} images{share}: {done} already done, {len(self.todo)} to do; {details}")


def require_files(folder: str | os.PathLike, names: Sequence[str], suffix: str, what: str, hint: str) -> None:
    """Every image of `names` has <name><suffix> in the input `folder`; else a UserError (one line: the
    folder, the count and the first names, `hint`), also for a folder that does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}; {hint}")
    present = {entry.name for entry in os.scandir(folder)}
    missing = [name for name in names if name + suffix not in present]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(names)} images to do have no {what} file {folder}/<name>{suffix}: "
            f"{and_more(missing, NAMES_SHOWN)}; {hint}"
        )
