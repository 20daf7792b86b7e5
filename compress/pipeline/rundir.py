"""The run directory: where each stage's checkpoint and record live, and which stages are already done.

    OUTPUT/run.json                  the recipe, the model and text fingerprints
    OUTPUT/stages/01-prune/          compress.save checkpoint of the model after stage 1, plus stage.json
    OUTPUT/train/02-recover/         recovery's training checkpoints (resume), log.json
    OUTPUT/exports/<format>/         the exports
    OUTPUT/report.md, report.json, *.png

A stage is done when its directory holds a ``stage.json`` whose fingerprint
(the model, the text, and the recipe up to and including that stage) is the
current one.  ``stage.json`` is written after the checkpoint directory is
complete, by an atomic rename, so a kill at any moment leaves either a done
stage or one that is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.io.atomic import write_json
from compress.io.manifest import MANIFEST

RUN_FILE = "run.json"
STAGE_FILE = "stage.json"
TRAIN_FINGERPRINT = "fingerprint.txt"
OWNED = ("stages", "train", "exports", RUN_FILE, "original.json", "report.md", "report.json")


class RunDirError(CompressError):
    """An output directory the run cannot use."""


def fingerprint(obj: Any) -> str:
    """A short sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_within(path: Path, directory: Path) -> bool:
    try:
        Path(path).resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class RunDir:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()

    # -- paths -------------------------------------------------------------
    def stage_dir(self, i: int, kind: str) -> Path:
        return self.root / "stages" / f"{i + 1:02d}-{kind}"

    def train_dir(self, i: int, kind: str) -> Path:
        return self.root / "train" / f"{i + 1:02d}-{kind}"

    def export_dir(self, fmt: str) -> Path:
        return self.root / "exports" / fmt

    # -- set-up ------------------------------------------------------------
    def check_location(self) -> None:
        """Before anything loads: the output is not a file, not under one, and can be written."""
        from compress.io.outputs import check_location

        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"Output path '{self.root}' is a file; give a directory for the run.")
        check_location(self.root)

    def prepare(self, base: dict[str, Any], overwrite: bool, protect: tuple[Path, ...] = ()) -> None:
        """Make the directory ready for a run with ``base`` (model and text); refuse another run's without overwrite.

        A directory that is not a run takes one only with ``overwrite`` and only when none of the names a run
        writes are taken there; ``protect`` (the input model) is never inside what a run would remove.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise RunDirError(f"Output path '{root}' is a file; give a directory for the run.")
        previous = read_json(root / RUN_FILE) if root.is_dir() else None
        if root.is_dir() and previous is None and any(root.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"Output directory '{root}' exists and is not a compress-lm run; choose another directory, or pass "
                    f"overwrite=True (--force) to write the run into it beside its files."
                )
            taken = self.owned_entries()
            if taken:
                raise RunDirError(
                    f"Output directory '{root}' is not a compress-lm run but holds {', '.join(p.name for p in taken[:4])}, "
                    f"names a run writes; --force will not replace them, choose another directory."
                )
        if previous is not None and previous.get("base_fingerprint") != base["fingerprint"]:
            if not overwrite:
                raise RunDirError(
                    f"Output directory '{root}' holds a run of another model or text (fingerprint "
                    f"{previous.get('base_fingerprint')}, this one {base['fingerprint']}); choose another directory, "
                    f"or pass overwrite=True (--force) to replace it."
                )
            for p in protect:
                if any(_is_within(p, owned) for owned in self.owned_entries()):
                    raise RunDirError(f"Output directory '{root}' holds the input model '{p}' in a part --force would "
                                      f"replace; write the run to another directory.")
        if overwrite and (previous is None or previous.get("base_fingerprint") != base["fingerprint"]):
            self.clear()
        root.mkdir(parents=True, exist_ok=True)

    def owned_entries(self) -> list[Path]:
        """What of ``OWNED`` (and the charts) exists in the directory."""
        if not self.root.is_dir():
            return []
        return [p for p in (*(self.root / n for n in OWNED), *sorted(self.root.glob("*.png"))) if os.path.lexists(p)]

    def clear(self) -> None:
        """Remove what a run writes (and nothing else a user keeps there)."""
        for name in OWNED:
            p = self.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for png in self.root.glob("*.png") if self.root.is_dir() else []:
            png.unlink()

    # -- stages ------------------------------------------------------------
    def done(self, i: int, kind: str, fp: str) -> dict[str, Any] | None:
        """The record of stage ``i`` if it is done with fingerprint ``fp``."""
        d = self.stage_dir(i, kind)
        record = read_json(d / STAGE_FILE)
        if record is None or record.get("fingerprint") != fp:
            return None
        if kind != "export" and not (d / MANIFEST).is_file():
            return None
        return record

    def write_record(self, i: int, kind: str, record: dict[str, Any]) -> Path:
        return write_json(self.stage_dir(i, kind) / STAGE_FILE, record)

    def remove_stale(self, keep: list[Path]) -> list[str]:
        """Delete stage and training directories that belong to no stage of this recipe; their names."""
        gone = []
        for folder in (self.root / "stages", self.root / "train"):
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.is_dir() and p not in keep:
                    shutil.rmtree(p)
                    gone.append(f"{folder.name}/{p.name}")
        return gone

    def train_state(self, i: int, kind: str, fp: str) -> Path:
        """The training directory of stage ``i``, emptied first when it holds another fingerprint's state."""
        d = self.train_dir(i, kind)
        mark = d / TRAIN_FINGERPRINT
        if d.is_dir() and (not mark.is_file() or mark.read_text().strip() != fp):
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        mark.write_text(fp + "\n")
        return d
