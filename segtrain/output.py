"""How segtrain writes and shows its figures, in one place for the CLIs, the defenses, the grid and the report.

- :func:`write_json`: a result file written atomically (a temporary name beside it, then one rename), so a
  killed run never leaves half a ``metrics.json``; NaN is refused rather than written as non-JSON.
- :func:`percent`: a fraction shown as a percentage with two decimals; ``-`` for a figure that does not exist
  (``None``, or NaN: a metric over zero pixels).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["percent", "write_json"]


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def percent(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"
