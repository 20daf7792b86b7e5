"""``write_file``: the one atomic file writer (reports, logs, override maps, run files)."""
from __future__ import annotations

import json
import os

import pytest

from compress.io.atomic import write_file, write_json, write_text
from compress.reports import Report


def test_write_text_replaces_whole_file_with_umask_mode(tmp_path):
    target = tmp_path / "sub" / "report.md"
    old = os.umask(0o022)
    try:
        write_text(target, "old")
        write_text(target, "new text")
    finally:
        os.umask(old)
    assert target.read_text() == "new text"
    assert target.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]  # no temporary left


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "log.json"
    write_json(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_file(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]


def test_reports_share_save_json(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Tiny(Report):
        x: int

    path = Tiny(3).save_json(tmp_path / "t.json")
    assert json.loads(path.read_text()) == {"x": 3}
    with pytest.raises(NotImplementedError, match="Tiny has no table view"):
        Tiny(3).table()
