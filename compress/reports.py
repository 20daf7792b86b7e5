"""The small protocol every report shares: ``to_dict()``, ``table()``, ``save_json(path)``.

Reports are dataclasses; ``to_dict`` defaults to ``dataclasses.asdict`` and
``save_json`` writes it atomically, so a report file is never half written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from compress.io.atomic import write_json


class Report:
    """Mixin for report dataclasses; subclasses define ``table()`` and may extend ``to_dict()``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def table(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} has no table view")

    def save_json(self, path: str | Path) -> Path:
        """The report as JSON at ``path`` (written atomically); the path written."""
        return write_json(path, self.to_dict(), indent=2)
