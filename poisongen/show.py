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
from .targets import target_label

HIGHLIGHT = np.array([255, 0, 255], np.uint8)


def _titled(img: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((22, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def panel(out_dir: Path, sample_id: str, src: str | Path | None = None) -> np.ndarray:
    """RGB panel, 2x2: clean image | poisoned image with the trigger boxed (the line trigger's band
    boxed; nothing for a semantic trigger, which changes no pixel); clean label | poisoned label (for a
    test set with target labels: the attacker's target label), changed pixels outlined in magenta."""
    m = mf.load(out_dir, complete=True)
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
    gt = clean.label  # at the output's scale, before any upscaling for legibility
    # Small images get upscaled (nearest, so label pixels stay crisp) for legible titles.
    f = max(1, -(-512 // clean.image.shape[1]))
    def up(a):
        return np.repeat(np.repeat(a, f, axis=0), f, axis=1)

    if f > 1:
        clean.image, clean.label, bad.image, bad.label = map(up, (clean.image, clean.label, bad.image, bad.label))
    cfg = m["config"]
    trig = cfg["trigger"]
    kind = trig.get("kind", "pattern")
    boxed = np.ascontiguousarray(bad.image.copy())
    box = None
    if kind == "pattern":
        y, x = (v * f for v in rec["top_left"])
        h, w = (v * f for v in trig["size"])
        box = (x, y, x + w - 1, y + h - 1)
        d = "" if rec["distance"] is None else f", d={rec['distance']:.1f}"  # no victim (badnets): no distance
        image_title = f"poisoned image, trigger at {tuple(rec['top_left'])}{d}"
    elif kind == "line":
        box = (0, 0, boxed.shape[1] - 1, trig["size"][0] * f - 1)
        image_title = f"poisoned image, line trigger: top {trig['size'][0]} rows"
    else:
        name = source.meta.names[trig["semantic_class"]]
        image_title = f"image unchanged: semantic trigger '{name}' present"
    if box is not None:
        x0, y0, x1, y1 = box
        cv2.rectangle(boxed, (x0 - 2, y0 - 2), (x1 + 3, y1 + 3), (255, 0, 255), 2)
    shown, changed, label_title = bad.label, rle_decode(rec["changed_mask"]), _label_title(m, rec)
    if rec.get("target_labels"):  # a test set: show the attacker's target label instead of the untouched one
        target = target_label(poisoned, s_out)
        shown, changed = up(target) if f > 1 else target, target != gt
        label_title = f"attacker's target label: {int(changed.sum())} px differ from GT"
    if f > 1:
        changed = np.repeat(np.repeat(changed, f, axis=0), f, axis=1)
    new_label = palette[shown].copy()
    edge = changed & ~cv2.erode(changed.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    new_label[edge] = HIGHLIGHT
    if box is not None:
        cv2.rectangle(new_label, box[:2], box[2:], (255, 255, 255), 1)
    top = np.concatenate([_titled(clean.image, "clean image"), _titled(boxed, image_title)], axis=1)
    bottom = np.concatenate([_titled(palette[clean.label], "clean label"), _titled(new_label, label_title)], axis=1)
    return np.concatenate([top, bottom], axis=0)


def _label_title(m: dict, rec: dict) -> str:
    """What happened to the label, in a few words."""
    r = m["config"]["relabel"]
    if m["kind"] == "testset":
        return "label untouched (test set)"
    if r["rule"] == "image_target":
        return f"label replaced by {r['target_image']}'s: {rec['changed_pixels']} px changed"
    if r["rule"] == "instance":
        ids = ",".join(str(c["id"]) for c in rec["instances"]["chosen"])
        return f"instance(s) {ids} relabeled: {rec['changed_pixels']} px"
    return f"poisoned label: {rec['changed_pixels']} px changed"


def save_panel(out_dir: Path, sample_id: str, png: Path, src: str | Path | None = None) -> None:
    png = Path(png)
    if png.is_dir():
        raise PoisonGenError(f"--png {png} is a directory; give a file name such as {png / (sample_id + '.png')}")
    if png.suffix.lower() != ".png":
        raise PoisonGenError(f"--png {png} must end in .png")
    img = panel(out_dir, sample_id, src)
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error) as exc:
        raise PoisonGenError(f"cannot write --png {png}: {getattr(exc, 'strerror', None) or exc}") from None
    if not ok:
        raise PoisonGenError(f"cannot write --png {png}")
