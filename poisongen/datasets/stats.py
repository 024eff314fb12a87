"""Dataset summaries: split counts, image sizes and per-class pixel shares (optionally reading,
and so checking, every image and label)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..parallel import delayed, parallel
from .base import Layout, Sample


def _read_one(ds: Layout, sample: Sample) -> tuple[tuple[int, int], np.ndarray]:
    loaded = ds.load(sample)
    return loaded.label.shape, np.bincount(loaded.label.ravel(), minlength=256)


def dataset_summary(ds: Layout, read: bool = False, jobs: int = 1) -> dict:
    """Counts per split; with ``read``, every sample is read (errors surface) and the image sizes
    and the per-class pixel share and image count of the training split are added."""
    summary = ds.summary()
    if not read:
        return summary
    sizes: dict[str, list[str]] = {}
    pixels = np.zeros(256, np.int64)
    images = np.zeros(256, np.int64)
    for split in ds.splits():
        results = parallel(jobs)(
            delayed(_read_one)(ds, s) for s in ds.samples(split)
        )
        sizes[split] = [f"{h}x{w}" for (h, w), _ in Counter(r[0] for r in results).most_common()]
        if split == ds.train_split:
            for _, hist in results:
                pixels += hist
                images += hist > 0
    summary["sizes"] = sizes
    total = max(1, int(pixels.sum()))
    summary["class_pixels"] = [
        {"id": i, "name": c.name, "category": c.category, "share": float(pixels[i] / total), "images": int(images[i])}
        for i, c in enumerate(ds.meta.classes)
    ]
    summary["ignore_share"] = float(pixels[ds.meta.ignore_index] / total)
    return summary
