"""What a format module returns after writing, shared by every format."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from compress.io.exports.common import Written


@dataclass
class Output:
    """One format's result before it becomes an ``ExportReport``.

    ``expected`` holds, by transformers parameter name, the float32 values the
    file stores where they are not the model's own (a float tensor rounded to
    float16 or Q8_0, scales rounded to the format's dtype): ``verify`` compares
    the outside loader with a model carrying these values.
    """

    written: Written
    load: str
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, torch.Tensor] = field(default_factory=dict)
