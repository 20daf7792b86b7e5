"""``QuantReport``: what quantisation changed, what it skipped and why, and what it costs in bits."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from compress.reports import Report


@dataclass
class ModuleRecord:
    """One converted module."""

    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    label: str  # e.g. "int4 g128 sym rtn"
    packed_bytes: int  # packed weight + scales + zero points actually stored (0 while fake-quantised)

    @property
    def weights(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class QuantReport(Report):
    """Modules converted and skipped, bits per weight from stored bytes, size before and after."""

    mode: str  # "packed" or "fake-quant"
    config: str  # the base config's label
    modules: list[ModuleRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def weights_quantised(self) -> int:
        return sum(m.weights for m in self.modules)

    @property
    def packed_bytes(self) -> int:
        return sum(m.packed_bytes for m in self.modules)

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Stored bits per quantised weight (scales and zero points included); None if nothing is packed."""
        if self.mode != "packed" or not self.weights_quantised:
            return None
        return 8.0 * self.packed_bytes / self.weights_quantised

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(weights_quantised=self.weights_quantised, packed_bytes=self.packed_bytes,
                 bits_per_weight=self.bits_per_weight)
        return d

    def table(self) -> str:
        """A plain-text summary: one row per quantiser, the kept modules grouped by reason, sizes."""
        lines = [f"quantisation ({self.mode}): {self.config}, {len(self.modules)} modules in {self.seconds:.1f} s"]
        by_label: dict[str, list[ModuleRecord]] = defaultdict(list)
        for m in self.modules:
            by_label[m.label].append(m)
        rows = [["quantiser", "modules", "weights", "bits/weight"]]
        for label, group in by_label.items():
            rows.append([label, str(len(group)), _count(sum(m.weights for m in group)), _bits(group, self.mode)])
        if len(by_label) > 1:
            rows.append(["total", str(len(self.modules)), _count(self.weights_quantised), _bits(self.modules, self.mode)])
        lines += _columns(rows)
        if self.skipped:
            lines.append(f"kept in full precision: {len(self.skipped)} modules")
            reasons: dict[str, list[str]] = defaultdict(list)
            for name, why in self.skipped:
                reasons[why].append(name)
            for why, names in reasons.items():
                shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
                lines.append(f"  {why}: {shown}")
        ratio = self.bytes_before / self.bytes_after if self.bytes_after else float("nan")
        lines.append(
            f"weights in memory: {_mib(self.bytes_before)} -> {_mib(self.bytes_after)} ({ratio:.2f}x smaller); "
            f"parameters: {self.params_before / 1e6:.2f} M -> {self.params_after / 1e6:.2f} M"
        )
        return "\n".join(lines + self.notes)

    def __str__(self) -> str:
        return self.table()

    def summary(self) -> dict[str, int]:
        """Counts of converted modules per quantiser label."""
        return dict(Counter(m.label for m in self.modules))


def _bits(group: list[ModuleRecord], mode: str) -> str:
    weights = sum(m.weights for m in group)
    if mode != "packed" or not weights:
        return "-"
    return f"{8.0 * sum(m.packed_bytes for m in group) / weights:.3f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(rows[0]), "  " + "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]
