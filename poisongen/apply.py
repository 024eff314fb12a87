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
from .instances import instance_ids, selected_mask
from .plan import SamplePlan
from .relabel import (
    apply_matrix,
    apply_pixels,
    change_counts,
    image_target,
    rle_encode,
    set_pixels,
    victim_to_target,
)
from .targets import TARGET_DIR, TARGET_LABEL_RULES
from .triggers import apply_trigger


def attacked_label(label: np.ndarray, sp: SamplePlan, cfg: AttackConfig, num_classes: int,
                   target_map: np.ndarray | None = None, instance_map: np.ndarray | None = None) -> np.ndarray:
    """The attacker's target label of one sample: ``cfg.relabel.rule`` applied to the clean train-id
    ``label`` ``(H, W) uint8`` (PRL not included). ``target_map``: the target image's label
    (``image_target``); ``instance_map``: the layout's instance ids (``instance``, where used)."""
    r = cfg.relabel
    if r.rule == "matrix":
        return apply_matrix(label, r.matrix, num_classes)
    if r.rule == "image_target":
        return image_target(label, target_map)
    if r.rule == "instance":
        ids, _ = instance_ids(label, cfg.victim, instance_map if sp.instance_source == "instanceIds" else None)
        return set_pixels(label, selected_mask(ids, sp.instances or []), cfg.target)
    if r.rule == "victim_to_target":
        return victim_to_target(label, cfg.victim, cfg.target)
    return label


def transform(
    image: np.ndarray, label: np.ndarray, sp: SamplePlan, cfg: AttackConfig, pattern: np.ndarray | None,
    num_classes: int = 256, target_map: np.ndarray | None = None, instance_map: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The poisoned (image, label) arrays of one sample. The label is only ever changed together
    with applying the trigger (SPEC section 3); a test set's labels are never changed."""
    t = cfg.trigger
    top_left = None if sp.placement is None else sp.placement.top_left
    poisoned_image = apply_trigger(image, t.kind, pattern, t.alpha, top_left, t.size[0])
    if cfg.kind != "train" or cfg.relabel.rule == "none":
        return poisoned_image, label
    new_label = attacked_label(label, sp, cfg, num_classes, target_map, instance_map)
    if len(sp.prl):
        new_label = apply_pixels(new_label, sp.prl)
    return poisoned_image, new_label


def rule_inputs(ds: Layout, sample: Sample, sp: SamplePlan, cfg: AttackConfig) -> dict:
    """What a rule reads besides the sample's label: the target image's label, the instance map."""
    out = {}
    if cfg.relabel.rule == "image_target":
        out["target_map"] = ds.read_label(ds.sample(cfg.relabel.target_split, cfg.relabel.target_image))
    if cfg.relabel.rule == "instance" and sp.instance_source == "instanceIds":
        out["instance_map"] = ds.read_instances(sample)
    return out


def apply_one(
    ds: Layout,
    sample: Sample,
    sp: SamplePlan,
    cfg: AttackConfig,
    pattern: np.ndarray | None,
    out_root: Path | None,
) -> dict:
    """Poison one sample; write its changed files under ``out_root`` (unless None) and return its
    manifest record (plan + change counts + changed-pixel RLE + sha256 of every input/output file;
    for a test set of a fine-grained/image-level/instance attack, also its target label files)."""
    loaded = ds.load(sample)
    extra = rule_inputs(ds, sample, sp, cfg)
    image, label = transform(loaded.image, loaded.label, sp, cfg, pattern, ds.meta.num_classes, **extra)
    encoded = ds.encode_image(sample, image, cfg.jpeg_quality)
    if cfg.kind == "train" and cfg.relabel.rule != "none":
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
    if cfg.kind == "testset" and cfg.relabel.rule in TARGET_LABEL_RULES:
        target = attacked_label(loaded.label, sp, cfg, ds.meta.num_classes, **extra)
        record["target_changes"] = change_counts(loaded.label, target)
        record["target_labels"] = []
        for path, data in sorted(ds.encode_label(sample, target).items()):
            rel_path = f"{TARGET_DIR}/{path}"
            if out_root is not None:
                write_bytes(out_root / rel_path, data)
            record["target_labels"].append({"path": rel_path, "sha256": hashlib.sha256(data).hexdigest()})
    return record
