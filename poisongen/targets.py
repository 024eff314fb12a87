"""The attacker's target labels of a Poisoned Test, for evaluation (SPEC section 6).

``poisongen testset`` of an attack whose target labels are not "GT victim -> target" (fgba's matrix,
N-to-1, badnets' image-level target, instance) writes each triggered sample's target label under
``target_labels/`` of the output, mirroring the layout's own label paths and encodings, and lists the
files (path + sha256) in the manifest. Any loader for the layout can read them; segtrain calls
:func:`target_label`. (segtrain may import poisongen, never the reverse.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .datasets.base import Layout, Sample

TARGET_DIR = "target_labels"
#: relabel rules whose test sets carry target labels
TARGET_LABEL_RULES = ("matrix", "image_target", "instance")


def target_label(ds: Layout, sample: Sample) -> np.ndarray | None:
    """The target label of ``sample`` of the test set ``ds`` as train ids ``(H, W) uint8`` (ignore
    255), read by the layout's own reader from ``target_labels/<the sample's label path>``; None when
    the test set holds none for it (an untriggered sample, or an attack without target labels)."""
    moved = replace(sample, label=f"{TARGET_DIR}/{sample.label}")
    if not (ds.root / moved.label).is_file():
        return None
    return ds.read_label(moved)
