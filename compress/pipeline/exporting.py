"""The run's bridge to ``compress.io.exports``, imported only when a recipe exports.

Without that module (an older or partial install) only the native format
(``compress.save``) is available, and the pre-flight check says so for any
other format a recipe lists.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from compress.pipeline.stages import NATIVE


def _exports() -> ModuleType | None:
    try:
        from compress.io import exports
    except ImportError:
        return None
    return exports if hasattr(exports, "export") and hasattr(exports, "EXPORT_FORMATS") else None


def available_formats() -> tuple[str, ...]:
    module = _exports()
    if module is None:
        return (NATIVE,)
    formats = tuple(module.EXPORT_FORMATS)
    return formats if NATIVE in formats else (NATIVE, *formats)


def export_problems(model: nn.Module, fmt: str, gguf_type: str | None = None) -> list[str]:
    """Why ``model`` cannot be exported as ``fmt`` (empty when it can, or when the exporter cannot tell)."""
    module = _exports()
    check = getattr(module, "export_problems", None) if module is not None else None
    if check is None:
        return []
    return list(check(model, fmt, gguf_type=gguf_type) if gguf_type else check(model, fmt))


def export_model(model: nn.Module, tokenizer: Any, output_dir: Path, fmt: str, *, verify: bool = False,
                 gguf_type: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Write ``model`` as ``fmt`` into ``output_dir`` (replacing it atomically); a JSON-able summary."""
    module = _exports()
    if module is None:  # only the native checkpoint without compress.io.exports
        from compress.io import save

        path = save(model, output_dir, tokenizer, overwrite=True, dtype=dtype)
        return {"format": fmt, "path": str(path), "bytes": _bytes(path), "summary": f"native checkpoint: {path}"}
    options = {"gguf_type": gguf_type} if gguf_type else {}
    report = module.export(model, tokenizer, output_dir, fmt, overwrite=True, verify=verify, dtype=dtype, **options)
    details = report.to_dict() if hasattr(report, "to_dict") else {}
    summary = report.summary() if hasattr(report, "summary") else str(report)
    return {"format": fmt, "path": str(output_dir), "bytes": _bytes(Path(output_dir)), "summary": summary,
            "check": getattr(report, "check", None), "details": details}


def _bytes(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
