#!/usr/bin/env python
"""Render docs/img/synthetic_preview.png: three synthetic scenes, image | colour label side by side."""

from pathlib import Path

import cv2
import numpy as np

from poisongen.datasets.cityscapes import ID_COLOR
from poisongen.datasets.synthetic import render_scene


def main(out: Path = Path(__file__).resolve().parents[1] / "docs" / "img" / "synthetic_preview.png") -> None:
    rows = []
    for i in range(3):
        image, raw, _ = render_scene(np.random.default_rng(np.random.SeedSequence([0, 0, i])), (256, 512))
        rows.append(np.concatenate([image, ID_COLOR[raw]], axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = cv2.resize(grid, (grid.shape[1] * 3 // 4, grid.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
