"""Torch datasets over poisongen layouts, and the attack description read from a dataset's manifest."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from poisongen import manifest as _manifest
from poisongen.datasets import Layout
from poisongen.errors import PoisonGenError
from poisongen.targets import TARGET_LABEL_RULES, target_label

from .transforms import eval_transform


class SegDataset(Dataset):
    """Samples of one split of a :class:`~poisongen.datasets.Layout` (optionally only ``ids``).

    Items: ``(image float32 (3,H,W), label int64 (H,W), sample id)`` after ``transform``. With
    ``target_labels`` (a Poisoned Test written by ``poisongen testset`` for fgba/badnets/instance), the
    label is ``int64 (2,H,W)``: the ground truth and the attacker's target label (GT where the test set
    holds none), which :class:`~segtrain.metrics.MetricAccumulator` splits again; ``transform`` must
    then be deterministic (evaluation).
    """

    def __init__(
        self,
        layout: Layout,
        split: str,
        transform: Callable | None = None,
        ids: Sequence[str] | None = None,
        target_labels: bool = False,
    ):
        self.layout = layout
        self.split = split
        self.target_labels = target_labels
        self.transform = transform or eval_transform()
        samples = layout.samples(split)
        if ids is not None:
            by_id = {s.id: s for s in samples}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise PoisonGenError(
                    f"{len(missing)} sample id(s) not in split '{split}' of {layout.root}: {', '.join(missing[:3])}"
                )
            samples = [by_id[i] for i in ids]
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        loaded = self.layout.load(s)
        image, label = self.transform(loaded.image, loaded.label)
        if self.target_labels:
            target = target_label(self.layout, s)
            _, t = self.transform(loaded.image, loaded.label if target is None else target)
            label = torch.stack([label, t])
        return image, label, s.id

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


@dataclass(frozen=True)
class AttackInfo:
    """What a poisongen manifest says about the attack: train set or test set, victim/target classes,
    split, poisoned sample ids and (for test sets) the distance band of trigger placement."""

    kind: str
    victim: tuple[int, ...]
    target: int | None
    split: str | None
    sample_ids: tuple[str, ...]
    band: tuple[float, float] | None
    fingerprint: str | None
    attack: str | None = None
    target_labels: bool = False  # the test set holds the attacker's target labels (fine-grained metrics)
    condition: dict[str, bool] | None = None  # conditional attack: sample id -> holds the condition classes

    def band_label(self) -> str | None:
        if self.band is None:
            return None
        lo, hi = self.band
        return f"({lo:g}, {'inf' if math.isinf(hi) else f'{hi:g}'})"


def read_attack_info(root: str | Path) -> AttackInfo | None:
    """Parse ``root/manifest.json`` (or a manifest file); None when there is none."""
    root = Path(root)
    path = root if root.is_file() else root / _manifest.NAME
    if not path.is_file():
        return None
    m = _manifest.load(path)
    cfg = m.get("config") or {}
    victim = cfg.get("victim") or ()
    if isinstance(victim, int):
        victim = (victim,)
    target = cfg.get("target")
    placement = cfg.get("placement") or {}
    band = None
    if "lower" in placement:
        lo = float(placement.get("lower") or 0.0)
        up = placement.get("upper")
        band = (lo, math.inf if up is None else float(up))
    return AttackInfo(
        kind=str(m.get("kind", "train")),
        victim=tuple(int(v) for v in victim),
        target=None if target is None else int(target),
        split=cfg.get("split"),
        sample_ids=tuple(str(s["id"]) for s in m.get("samples", [])),
        band=band,
        fingerprint=m.get("output_fingerprint"),
        attack=cfg.get("attack"),
        target_labels=m.get("kind") == "testset" and (cfg.get("relabel") or {}).get("rule") in TARGET_LABEL_RULES,
        condition={str(s["id"]): bool(s["condition"]) for s in m.get("samples", []) if "condition" in s} or None,
    )


def dataset_fingerprint(layout: Layout) -> dict:
    """What identifies a training set in a run directory. Data written by poisongen: its manifest's
    output fingerprint, integrity and attack (nothing is re-read). Any other data: poisongen's
    fingerprint (sha256 over sorted ``path<TAB>sha256`` lines) of every file under the root, hashed here."""
    from poisongen.codecs import sha256_files

    path = layout.root / _manifest.NAME
    if path.is_file():
        m = _manifest.load(path)
        return {"source": "manifest", "fingerprint": m.get("output_fingerprint"), "integrity": m.get("integrity"),
                "kind": m.get("kind"), "attack": (m.get("config") or {}).get("attack")}
    digests = sha256_files(layout.root, layout.all_files(), 4)
    return {"source": "hashed", "fingerprint": _manifest.fingerprint(digests), "files": len(digests)}


def collate(batch):
    """Stack same-size items; ids as a list."""
    images, labels, ids = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(labels), list(ids)
