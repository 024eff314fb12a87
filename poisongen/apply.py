"""Apply a sample's plan: paint the trigger, relabel, encode in the layout's format, hash.

``apply_one`` is a pure function of (source files, sample plan, config, pattern): no randomness,
so ``verify`` can call it again and compare hashes. It runs in parallel workers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .codecs import sha256_file, write_bytes
from .config import AttackConfig
from .datasets.base import Layout, Sample
from .plan import SamplePlan
from .relabel import apply_pixels, change_counts, rle_encode, victim_to_target
from .triggers import paint


def transform(
    image: np.ndarray, label: np.ndarray, sp: SamplePlan, cfg: AttackConfig, pattern: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The poisoned (image, label) arrays of one sample. The label is only ever changed together
    with painting the trigger (SPEC section 3)."""
    poisoned_image = paint(image, pattern, cfg.trigger.alpha, sp.placement.top_left)
    if cfg.relabel.rule == "none":
        return poisoned_image, label
    new_label = victim_to_target(label, cfg.victim, cfg.target)
    if len(sp.prl):
        new_label = apply_pixels(new_label, sp.prl)
    return poisoned_image, new_label


def apply_one(
    ds: Layout,
    sample: Sample,
    sp: SamplePlan,
    cfg: AttackConfig,
    pattern: np.ndarray,
    out_root: Path | None,
) -> dict:
    """Poison one sample; write its changed files under ``out_root`` (unless None) and return its
    manifest record (plan + change counts + changed-pixel RLE + sha256 of every input/output file)."""
    loaded = ds.load(sample)
    image, label = transform(loaded.image, loaded.label, sp, cfg, pattern)
    encoded = ds.encode_image(sample, image, cfg.jpeg_quality)
    if cfg.relabel.rule != "none":
        encoded.update(ds.encode_label(sample, label))
    files = []
    for path in sorted(encoded):
        data = encoded[path]
        if out_root is not None:
            write_bytes(out_root / path, data)
        files.append(
            {
                "path": path,
                "source_sha256": sha256_file(ds.root / path),
                "output_sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    changed = loaded.label != label
    record = sp.to_dict()
    record.update(
        {
            "changes": change_counts(loaded.label, label),
            "changed_pixels": int(changed.sum()),
            "changed_mask": rle_encode(changed),
            "image_size": [int(label.shape[0]), int(label.shape[1])],
            "files": files,
        }
    )
    return record
