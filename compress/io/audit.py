"""``compress-lm verify DIR``: check a checkpoint, export or run directory without loading a model.

Every file its manifest lists is hashed and compared, unlisted files that
transformers would read are refused, the shipped modeling file's sha256 is
printed (the code ``trust_remote_code=True`` would run), and temporary
directories left by interrupted writes are listed.
"""
from __future__ import annotations

from pathlib import Path

from compress.io import tempdirs
from compress.io.integrity import check_listed, check_unlisted, read_export_manifest
from compress.io.manifest import MANIFEST, CheckpointError, Manifest
from compress.io.outputs import EXPORT_MANIFEST, kind
from compress.io.remote_code import MODULE


def verify_directory(path: str | Path) -> list[str]:
    """Lines describing what was checked; raises ``CheckpointError`` at the first problem."""
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise CheckpointError(f"'{directory}' is not a directory; give a checkpoint, export or run directory.")
    what = kind(directory)
    if what not in ("checkpoint", "export", "run"):
        raise CheckpointError(f"'{directory}' is not a compress-lm checkpoint, export or run (it has no {MANIFEST}, "
                              f"{EXPORT_MANIFEST} or run.json); give a directory compress-lm wrote.")
    targets = [directory] if what != "run" else sorted(
        d for folder in ("stages", "exports") if (directory / folder).is_dir()
        for d in (directory / folder).iterdir() if d.is_dir() and kind(d) in ("checkpoint", "export"))
    lines = [] if what != "run" else [f"run {directory}: {len(targets)} checkpoint(s) and export(s)"]
    for d in targets:
        lines += _verify_one(d)
    stale = tempdirs.stale(directory)
    if what == "run":
        stale += [p for folder in ("stages", "exports") for p in tempdirs.stale_in(directory / folder)]
    return lines + [_stale_line(p) for p in sorted(set(stale))]


def _verify_one(directory: Path) -> list[str]:
    if kind(directory) == "checkpoint":
        files, manifest = Manifest.read(directory).files, MANIFEST
    else:
        files, manifest = read_export_manifest(directory, CheckpointError)["files"], EXPORT_MANIFEST
    check_listed(directory, files, manifest, True, CheckpointError)
    check_unlisted(directory, files, manifest, CheckpointError)
    lines = [f"ok {directory}: {len(files)} files match the sha256 in {manifest}"]
    modeling = f"{MODULE}.py"
    if modeling in files:
        lines.append(f"   {modeling} sha256 {files[modeling]['sha256']} (the code trust_remote_code=True runs)")
    return lines


def _stale_line(p: Path) -> str:
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return (f"stale {p}: a temporary directory left by an interrupted write ({size / 1e6:.1f} MB); the next write "
            f"to the same directory removes it")
