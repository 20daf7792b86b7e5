"""``ExportReport``: what an export wrote, how big it is, and how to load it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


@dataclass
class ExportReport:
    """The result of ``compress.io.exports.export``.

    ``sizes`` maps every file written to its bytes.  ``bits_per_weight`` is
    8 x (bytes of all tensors) / (weights they stand for, embeddings and
    norms included); ``layer_bits_per_weight`` counts only the linear
    layers inside the decoder blocks (with their scales and zero points),
    the part quantisation shrinks.  ``check`` says how the export was
    verified when ``export(..., verify=True)`` ran a loader that is not
    compress-lm's.
    """

    format: str
    path: Path
    sizes: dict[str, int]
    parameters: int
    bits_per_weight: float
    layer_bits_per_weight: Optional[float]
    load: str
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    check: Optional[str] = None

    @property
    def files(self) -> list[str]:
        return sorted(self.sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def summary(self) -> str:
        """A few lines: what was written, its size and bits per weight, how to load it."""
        layer = f" (decoder-layer linears {self.layer_bits_per_weight:.2f})" if self.layer_bits_per_weight else ""
        lines = [
            f"{self.format} export written to {self.path}: {len(self.sizes)} files, {human_bytes(self.total_bytes)}, "
            f"{self.bits_per_weight:.2f} bits per weight{layer} over {self.parameters:,} weights.",
        ]
        if self.check:
            lines.append(f"check: {self.check}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"load it with: {self.load}")
        return "\n".join(lines)

    def table(self) -> str:
        """Every file with its size, then the summary."""
        width = max([len(f) for f in self.sizes] + [4])
        rows = [f"{'file':<{width}}  {'size':>12}"]
        rows += [f"{f:<{width}}  {human_bytes(self.sizes[f]):>12}" for f in self.files]
        rows.append(f"{'total':<{width}}  {human_bytes(self.total_bytes):>12}")
        return "\n".join(rows) + "\n" + self.summary()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["total_bytes"] = self.total_bytes
        return d

    def __str__(self) -> str:
        return self.table()
