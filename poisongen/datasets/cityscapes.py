"""Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
``gtFine/{split}/{city}/*_gtFine_{labelIds,labelTrainIds,instanceIds,color}.png``.

Labels are read from ``labelTrainIds`` when present, else from ``labelIds`` through the official
id -> trainId table (ids without a train id -> 255). Writing back updates every label encoding the
source has, consistently; pixels whose raw id has no train id are kept.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from ..codecs import encode_png, read_gray, read_rgb, read_unchanged
from ..errors import DatasetError
from .base import IGNORE, IMAGE, LABEL, POLYGONS, ClassInfo, DatasetMeta, Layout, Sample, is_image, rel


class Label(NamedTuple):
    """One row of the official table (cityscapesscripts/helpers/labels.py), same fields and order."""

    name: str
    id: int
    trainId: int
    category: str
    categoryId: int
    hasInstances: bool
    ignoreInEval: bool
    color: tuple[int, int, int]


# The official Cityscapes label table, as published with cityscapesScripts (a fact, not a choice;
# tests compare it to cityscapesscripts.helpers.labels).
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)

MAX_RAW_ID = 33
TRAIN_LABELS = sorted((lb for lb in LABELS if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)

META = DatasetMeta(
    name="cityscapes",
    classes=tuple(
        ClassInfo(lb.name, "thing" if lb.hasInstances else "stuff", lb.color) for lb in TRAIN_LABELS
    ),
)

#: raw id -> train id (ids with no train id, and values above 33, -> 255)
ID_TO_TRAIN = np.full(256, IGNORE, np.uint8)
for _lb in LABELS:
    if 0 <= _lb.id and 0 <= _lb.trainId < 255:
        ID_TO_TRAIN[_lb.id] = _lb.trainId
#: train id -> raw id (255 -> 0 'unlabeled')
TRAIN_TO_ID = np.zeros(256, np.uint8)
for _lb in TRAIN_LABELS:
    TRAIN_TO_ID[_lb.trainId] = _lb.id
#: raw id -> RGB colour of the *_color.png files
ID_COLOR = np.zeros((256, 3), np.uint8)
for _lb in LABELS:
    if _lb.id >= 0:
        ID_COLOR[_lb.id] = _lb.color
ID_HAS_INSTANCES = np.zeros(256, bool)
for _lb in LABELS:
    if _lb.id >= 0:
        ID_HAS_INSTANCES[_lb.id] = _lb.hasInstances

IMG_SUFFIX = "_leftImg8bit.png"
GT = "gtFine"
KINDS = ("labelIds", "labelTrainIds", "instanceIds", "color")


class Cityscapes(Layout):
    name = "cityscapes"
    kinds_known = "*Img8bit*/ images, gt*/ label PNGs, *_polygons.json"

    @classmethod
    def _file_kind(cls, p: PurePosixPath) -> str | None:
        top = p.parts[0]
        if p.name.endswith("_polygons.json"):
            return POLYGONS
        if top.startswith("gt") and p.suffix.lower() == ".png":  # gtFine, gtCoarse: label encodings
            return LABEL
        if "Img8bit" in top and is_image(p):  # leftImg8bit, rightImg8bit, leftImg8bit_sequence
            return IMAGE
        return None
    train_split = "train"
    val_split = "val"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / GT).is_dir()

    @classmethod
    def expected(cls) -> str:
        return "cityscapes: leftImg8bit/ and gtFine/ folders"

    @property
    def meta(self) -> DatasetMeta:
        return META

    def splits(self) -> list[str]:
        img = self.root / "leftImg8bit"
        return sorted(p.name for p in img.iterdir() if p.is_dir() and (self.root / GT / p.name).is_dir())

    def _gt(self, split: str, city: str, sid: str, kind: str) -> Path:
        return self.root / GT / split / city / f"{sid}_{GT}_{kind}.png"

    def _scan(self, split: str) -> list[Sample]:
        out = []
        for city_dir in sorted(p for p in (self.root / "leftImg8bit" / split).iterdir() if p.is_dir()):
            gt_dir = self.root / GT / split / city_dir.name
            gt_files = sorted(p.name for p in gt_dir.iterdir()) if gt_dir.is_dir() else []
            for img in sorted(city_dir.glob(f"*{IMG_SUFFIX}")):
                sid = img.name[: -len(IMG_SUFFIX)]
                prefix = f"{sid}_{GT}_"
                mine = [f for f in gt_files if f.startswith(prefix)]
                if f"{prefix}labelTrainIds.png" in mine:
                    label = f"{prefix}labelTrainIds.png"
                elif f"{prefix}labelIds.png" in mine:
                    label = f"{prefix}labelIds.png"
                else:
                    raise DatasetError(
                        f"missing label for image {rel(img, self.root)}: looked for "
                        f"{GT}/{split}/{city_dir.name}/{prefix}labelTrainIds.png or ..._labelIds.png"
                    )
                inst = f"{prefix}instanceIds.png" if f"{prefix}instanceIds.png" in mine else None
                gt_rel = f"{GT}/{split}/{city_dir.name}/"
                out.append(
                    Sample(
                        id=sid,
                        split=split,
                        image=rel(img, self.root),
                        label=gt_rel + label,
                        instances=gt_rel + inst if inst else None,
                        files=(rel(img, self.root), *(gt_rel + f for f in mine)),
                    )
                )
        return out

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(self.root / sample.image)

    def read_label(self, sample: Sample) -> np.ndarray:
        raw = read_gray(self.root / sample.label)
        train_ids = sample.label.endswith("_labelTrainIds.png")
        if raw.dtype != np.uint8:  # 16-bit PNG: fine as long as the values fit the table
            if int(raw.max()) > 255:
                bad = sorted({int(v) for v in np.unique(raw) if v > 255})
                raise DatasetError(
                    f"label of sample '{sample.id}' ({sample.label}) holds values {bad[:5]} outside the "
                    f"Cityscapes {'train-id' if train_ids else 'label'} table"
                )
            raw = raw.astype(np.uint8)
        if train_ids:
            return self.check_label_values(raw, sample)
        if raw.max() > MAX_RAW_ID:
            bad = sorted({int(v) for v in np.unique(raw) if v > MAX_RAW_ID})
            raise DatasetError(
                f"label of sample '{sample.id}' ({sample.label}) holds values {bad[:5]} outside the "
                f"Cityscapes label table (raw ids 0..{MAX_RAW_ID})"
            )
        return ID_TO_TRAIN[raw]

    def read_instances(self, sample: Sample) -> np.ndarray | None:
        if sample.instances is None:
            return None
        inst = read_gray(self.root / sample.instances).astype(np.int32)
        inst[inst < 1000] = 0  # values < 1000 are class ids of pixels that belong to no instance
        return inst

    def _file(self, sample: Sample, kind: str) -> str | None:
        name = f"{sample.id}_{GT}_{kind}.png"
        return next((f for f in sample.files if f.endswith("/" + name)), None)

    def encode_label(self, sample: Sample, label: np.ndarray) -> dict[str, bytes]:
        old = self.read_label(sample)
        if old.shape != label.shape:
            raise DatasetError(f"new label {label.shape} does not match sample '{sample.id}' {old.shape}")
        self.check_label_values(label, sample)
        changed = old != label
        new_vals = label[changed]
        new_raw = TRAIN_TO_ID[new_vals]  # train 255 -> raw 0 'unlabeled'
        out: dict[str, bytes] = {}

        ids_path = self._file(sample, "labelIds")
        if ids_path:
            raw = read_gray(self.root / ids_path).copy()
            raw[changed] = new_raw
            out[ids_path] = encode_png(raw)
        else:
            raw = None
        train_path = self._file(sample, "labelTrainIds")
        if train_path:
            out[train_path] = encode_png(np.ascontiguousarray(label, dtype=np.uint8))
        color_path = self._file(sample, "color")
        if color_path:
            color = read_unchanged(self.root / color_path).copy()  # BGR or BGRA
            rgb = ID_COLOR[new_raw]
            color[changed, 0] = rgb[:, 2]
            color[changed, 1] = rgb[:, 1]
            color[changed, 2] = rgb[:, 0]
            if color.ndim == 3 and color.shape[2] == 4:
                color[changed, 3] = 255
            out[color_path] = encode_png(color)
        inst_path = self._file(sample, "instanceIds")
        if inst_path:
            inst_raw = read_gray(self.root / inst_path)
            out[inst_path] = encode_png(relabel_instances(inst_raw, changed, new_raw))
        if not out:
            raise DatasetError(f"sample '{sample.id}' has no label file to write back")
        return out


def colorize(raw_ids: np.ndarray, alpha: bool = True) -> np.ndarray:
    """Raw label ids -> the ``*_color.png`` array in OpenCV channel order (BGRA or BGR)."""
    rgb = ID_COLOR[raw_ids]
    bgr = rgb[..., ::-1]
    if not alpha:
        return np.ascontiguousarray(bgr)
    return np.ascontiguousarray(np.concatenate([bgr, np.full(raw_ids.shape + (1,), 255, np.uint8)], axis=2))


def relabel_instances(inst_raw: np.ndarray, changed: np.ndarray, new_raw: np.ndarray) -> np.ndarray:
    """The ``instanceIds`` map after the pixels ``changed`` got the raw ids ``new_raw``.

    A pixel relabeled to a stuff class (or from a pixel that was no instance) carries the new class
    id, as Cityscapes does for pixels without an instance. An instance relabeled to a thing class
    stays one instance under the new class, with the next index ``k`` free in that class, so it never
    merges with an instance the image already has.
    """
    inst = inst_raw.astype(np.int64)
    old_inst = inst[changed]
    new_ids = new_raw.astype(np.int64)
    stays_instance = ID_HAS_INSTANCES[new_raw] & (old_inst >= 1000)
    result = np.where(stays_instance, 0, new_ids)
    if stays_instance.any():
        unchanged = inst[~changed]
        taken: dict[int, set[int]] = {}
        for v in np.unique(unchanged[unchanged >= 1000]).tolist():
            taken.setdefault(v // 1000, set()).add(v % 1000)
        pairs = np.stack([old_inst[stays_instance], new_ids[stays_instance]], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        assigned = np.empty(len(uniq), np.int64)
        for i, (_, cls) in enumerate(uniq.tolist()):
            used = taken.setdefault(cls, set())
            k = 0
            while k in used:
                k += 1
            used.add(k)
            assigned[i] = cls * 1000 + k
        result[stays_instance] = assigned[inverse.ravel()]
    inst[changed] = result
    if int(inst.max()) > np.iinfo(inst_raw.dtype).max:
        raise DatasetError(f"instance ids exceed the {inst_raw.dtype} instanceIds encoding")
    return inst.astype(inst_raw.dtype)
