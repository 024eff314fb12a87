"""``poisongen show``: one panel per poisoned sample for a human to check what was changed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import manifest as mf
from .datasets import open_dataset
from .errors import PoisonGenError
from .relabel import rle_decode
from .rescale import rescale_pair

HIGHLIGHT = np.array([255, 0, 255], np.uint8)


def _titled(img: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def panel(out_dir: Path, sample_id: str, src: str | Path | None = None) -> np.ndarray:
    """RGB panel, 2x2: clean image | poisoned image with the trigger boxed; clean label | poisoned
    label, pixels whose label changed outlined in magenta."""
    m = mf.load(out_dir)
    rec = next((r for r in m["samples"] if r["id"] == sample_id), None)
    if rec is None:
        ids = [r["id"] for r in m["samples"]]
        raise PoisonGenError(f"sample '{sample_id}' is not poisoned in {out_dir}; poisoned are e.g. {ids[:5]}")
    layout = m["dataset"]["layout"]
    source = open_dataset(src or m["dataset"]["root"], layout, generate=False)
    poisoned = open_dataset(out_dir, layout, generate=False)
    s_src, s_out = source.find(sample_id), poisoned.find(sample_id)
    clean, bad = source.load(s_src), poisoned.load(s_out)
    if "rescaled" in m:  # the clean sample as the run rescaled it
        clean.image, clean.label = rescale_pair(clean.image, clean.label, m["rescaled"]["scale"])
    palette = source.meta.palette
    # Small images get upscaled (nearest, so label pixels stay crisp) for legible titles.
    f = max(1, -(-512 // clean.image.shape[1]))
    if f > 1:
        def up(a):
            return np.repeat(np.repeat(a, f, axis=0), f, axis=1)
        clean.image, clean.label, bad.image, bad.label = map(up, (clean.image, clean.label, bad.image, bad.label))
    y, x = (v * f for v in rec["top_left"])
    h, w = (v * f for v in m["config"]["trigger"]["size"])
    boxed = np.ascontiguousarray(bad.image.copy())
    cv2.rectangle(boxed, (x - 2, y - 2), (x + w + 1, y + h + 1), (255, 0, 255), 2)
    changed = rle_decode(rec["changed_mask"])
    if f > 1:
        changed = np.repeat(np.repeat(changed, f, axis=0), f, axis=1)
    new_label = palette[bad.label].copy()
    edge = changed & ~cv2.erode(changed.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    new_label[edge] = HIGHLIGHT
    cv2.rectangle(new_label, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1)
    d = "inf" if rec["distance"] is None else f"{rec['distance']:.1f}"
    top = np.concatenate([_titled(clean.image, "clean image"),
                          _titled(boxed, f"poisoned image, trigger at {tuple(rec['top_left'])}, d={d}")], axis=1)
    bottom = np.concatenate([_titled(palette[clean.label], "clean label"),
                             _titled(new_label, f"poisoned label: {rec['changed_pixels']} px changed")], axis=1)
    return np.concatenate([top, bottom], axis=0)


def save_panel(out_dir: Path, sample_id: str, png: Path, src: str | Path | None = None) -> None:
    img = panel(out_dir, sample_id, src)
    png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
