#!/usr/bin/env python
"""Render docs/img/synthetic_preview.png: three scenes of the default synthetic set, image | colour
label side by side.

The scenes are training samples of ``poisongen synth`` with its defaults (seed 0, 256x512), rendered
through the public ``render_scene`` with the same per-sample seeds as ``generate``. The grid is
quantised to 256 colours (median cut, no dithering) only to keep the README image small.

    .venv/bin/python scripts/make_synthetic_preview.py [--indices 3,7,10] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisongen.datasets.cityscapes import ID_COLOR  # noqa: E402
from poisongen.datasets.synthetic import render_scene  # noqa: E402


def preview(indices: list[int], size: tuple[int, int] = (256, 512), seed: int = 0) -> np.ndarray:
    """Rows of image | colour label for training samples ``indices`` of the set made with ``seed``."""
    rows = []
    for i in indices:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, i]))  # split 0 = train, as generate()
        rgb, raw, _ = render_scene(rng, size)
        gap = np.full((size[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([rgb, gap, ID_COLOR[raw]], axis=1))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--indices", default="3,7,10", help="training sample indices to show")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "synthetic_preview.png")
    args = ap.parse_args()
    grid = preview([int(v) for v in args.indices.split(",")])
    image = Image.fromarray(grid).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
