"""Folder: any dataset as ``images/`` and ``masks/`` with the same stems, described by ``dataset.yaml``.

::

    root/dataset.yaml
    root/images/[split/]<id>.{png,jpg,jpeg,bmp,tif,tiff}
    root/masks/[split/]<id>.png        uint8 grayscale or palette PNG holding train ids

Masks hold train ids directly; the value ``ignore_index`` (default 255) is ignore. The sample id is
the image path relative to its split folder without extension (it may contain ``/``). Writing back
keeps the mask's own encoding: the source palette for a palette PNG, 8-bit grayscale otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from ..codecs import encode_palette_png, encode_png, read_palette_png, read_rgb
from ..errors import DatasetError, choices
from .base import IGNORE, IMAGE, LABEL, ClassInfo, DatasetMeta, Layout, Sample, is_image, rel
from .voc import voc_colormap

CONFIG = "dataset.yaml"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXT = ".png"
KEYS = ("name", "classes", "things", "palette", "ignore_index", "splits", "train_split", "val_split")
CLASS_KEYS = ("name", "category", "color")
CATEGORIES = ("thing", "stuff")
#: ``splits`` value meaning "images/ and masks/ themselves"
HERE = "."


@dataclass(frozen=True)
class FolderConfig:
    """``dataset.yaml``, checked: the class table, the stored ignore value, split -> subfolder."""

    meta: DatasetMeta
    ignore_value: int
    splits: dict[str, str]
    train_split: str
    val_split: str


def _color(value, what: str) -> tuple[int, int, int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    )
    if not ok:
        raise DatasetError(f"{CONFIG}: {what} must be a list of three integers 0..255 (r, g, b), got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _parse_classes(cfg: dict) -> list[ClassInfo]:
    raw = cfg.get("classes")
    if not isinstance(raw, list) or not raw:
        raise DatasetError(
            f"{CONFIG}: 'classes' must be a non-empty list of class names or of {{name, category, color}} "
            f"mappings, got {raw!r}"
        )
    names: list[str] = []
    categories: list[str | None] = []
    colors: list[tuple[int, int, int] | None] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise DatasetError(f"{CONFIG}: classes[{i}] must be a name or a mapping, got {entry!r}")
        unknown = [k for k in entry if k not in CLASS_KEYS]
        if unknown:
            raise DatasetError(
                f"{CONFIG}: unknown key '{unknown[0]}' in classes[{i}]; valid keys are {choices(CLASS_KEYS)}"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{CONFIG}: classes[{i}] needs a non-empty 'name', got {name!r}")
        name = name.strip()
        if name.lstrip("-").isdigit():
            # class_id() reads digits as a train id, so such a name could never be used
            raise DatasetError(f"{CONFIG}: class name '{name}' (classes[{i}]) is a number; use a word")
        if name in names:
            raise DatasetError(f"{CONFIG}: class name '{name}' occurs twice in 'classes'")
        cat = entry.get("category")
        if cat is not None and cat not in CATEGORIES:
            raise DatasetError(
                f"{CONFIG}: class '{name}' has category {cat!r}; valid categories are {choices(CATEGORIES)}"
            )
        names.append(name)
        categories.append(cat)
        colors.append(_color(entry["color"], f"color of class '{name}'") if "color" in entry else None)

    things = cfg.get("things")
    if things is not None:
        if not isinstance(things, list) or not all(isinstance(t, str) for t in things):
            raise DatasetError(f"{CONFIG}: 'things' must be a list of class names, got {things!r}")
        for t in things:
            if t not in names:
                raise DatasetError(f"{CONFIG}: 'things' names unknown class '{t}'; valid classes are {choices(names)}")
        for name, cat in zip(names, categories, strict=True):
            implied = "thing" if name in things else "stuff"
            if cat is not None and cat != implied:
                raise DatasetError(
                    f"{CONFIG}: class '{name}' has category '{cat}' but 'things' makes it {implied}"
                )
        categories = ["thing" if n in things else "stuff" for n in names]

    palette = cfg.get("palette")
    if palette is not None:
        if not isinstance(palette, list) or len(palette) != len(names):
            n = len(palette) if isinstance(palette, list) else palette
            raise DatasetError(
                f"{CONFIG}: 'palette' must list one colour (r, g, b) per class ({len(names)} classes), got {n!r}"
            )
        for i, (name, col) in enumerate(zip(names, palette, strict=True)):
            c = _color(col, f"palette[{i}]")
            if colors[i] is not None and colors[i] != c:
                raise DatasetError(
                    f"{CONFIG}: class '{name}' has color {list(colors[i])} but palette[{i}] is {list(c)}"
                )
            colors[i] = c
    default = voc_colormap(len(names))  # deterministic, distinct colours where none are given
    return [
        ClassInfo(n, cat or "stuff", col or tuple(int(v) for v in default[i]))
        for i, (n, cat, col) in enumerate(zip(names, categories, colors, strict=True))
    ]


def _subfolder(root: Path, split: str, sub) -> str:
    if not isinstance(sub, str) or not sub.strip():
        raise DatasetError(f"{CONFIG}: splits.{split} must be a subfolder name of images/, got {sub!r}")
    if sub.strip() == HERE:
        return HERE
    parts = PurePosixPath(sub.strip()).parts
    if not parts or ".." in parts or PurePosixPath(sub).is_absolute():
        raise DatasetError(f"{CONFIG}: splits.{split} must be a subfolder inside images/, got '{sub}'")
    folder = PurePosixPath(*parts).as_posix()
    if not (root / "images" / folder).is_dir():
        raise DatasetError(f"{CONFIG}: split '{split}' names images/{folder}, which does not exist")
    return folder


def _parse_splits(cfg: dict, root: Path) -> dict[str, str]:
    raw = cfg.get("splits")
    if raw is not None:
        if not isinstance(raw, dict) or not raw:
            raise DatasetError(f"{CONFIG}: 'splits' must map split names to subfolders of images/, got {raw!r}")
        return {str(k): _subfolder(root, str(k), v) for k, v in raw.items()}
    images = root / "images"
    subdirs = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        return {"train": HERE}
    loose = sorted(p.name for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if loose:
        # neither reading is safe to guess: the loose files would silently belong to no split
        raise DatasetError(
            f"images/ holds both image files (e.g. {loose[0]}) and subfolders ({', '.join(subdirs)}); "
            f"declare 'splits' in {CONFIG} (use '{HERE}' for images/ itself)"
        )
    return {d: d for d in subdirs}


def _pick_split(cfg: dict, key: str, default: str, splits: dict[str, str]) -> str:
    value = cfg.get(key)
    if value is not None:
        if str(value) not in splits:
            raise DatasetError(f"{CONFIG}: {key} '{value}' is not a split; valid splits are {choices(splits)}")
        return str(value)
    if default in splits:
        return default
    if len(splits) == 1:
        return next(iter(splits))
    return default  # asking for it later fails with the list of valid splits


def load_config(root: Path) -> FolderConfig:
    """Read and check ``root/dataset.yaml``; every problem is a one-line :class:`DatasetError`."""
    path = root / CONFIG
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot parse {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path} must hold a mapping with at least 'classes', got {type(cfg).__name__}")
    unknown = [str(k) for k in cfg if k not in KEYS]
    if unknown:
        raise DatasetError(f"{CONFIG}: unknown key '{unknown[0]}'; valid keys are {choices(KEYS)}")

    classes = _parse_classes(cfg)
    ignore = cfg.get("ignore_index", IGNORE)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise DatasetError(f"{CONFIG}: ignore_index must be an integer 0..255, got {ignore!r}")
    if ignore < len(classes):
        raise DatasetError(
            f"{CONFIG}: ignore_index {ignore} is the train id of class '{classes[ignore].name}'; "
            f"use a value {len(classes)}..255"
        )
    name = cfg.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise DatasetError(f"{CONFIG}: 'name' must be a non-empty string, got {name!r}")
    splits = _parse_splits(cfg, root)
    return FolderConfig(
        meta=DatasetMeta(name=(name or "").strip() or root.resolve().name or "folder", classes=tuple(classes)),
        ignore_value=ignore,
        splits=splits,
        train_split=_pick_split(cfg, "train_split", "train", splits),
        val_split=_pick_split(cfg, "val_split", "val", splits),
    )


class Folder(Layout):
    name = "folder"
    kinds_known = "images/ and masks/ PNGs"

    @classmethod
    def _file_kind(cls, p: PurePosixPath) -> str | None:
        if p.parts[0] == "images" and is_image(p):
            return IMAGE
        if p.parts[0] == "masks" and p.suffix.lower() == ".png":
            return LABEL
        return None

    def __init__(self, root: str | Path):
        super().__init__(root)
        if not self.detect(self.root):
            raise DatasetError(f"{self.root} is not a folder dataset; expected {self.expected()}")
        self.config = load_config(self.root)
        # instance attributes: unlike the fixed layouts, they come from dataset.yaml
        self.train_split = self.config.train_split
        self.val_split = self.config.val_split

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / CONFIG).is_file() and (root / "images").is_dir() and (root / "masks").is_dir()

    @classmethod
    def expected(cls) -> str:
        return f"folder: {CONFIG}, images/ and masks/"

    @property
    def meta(self) -> DatasetMeta:
        return self.config.meta

    def splits(self) -> list[str]:
        return sorted(self.config.splits)

    def _scan(self, split: str) -> list[Sample]:
        sub = self.config.splits[split]
        img_dir = self.root / "images" if sub == HERE else self.root / "images" / sub
        mask_dir = self.root / "masks" if sub == HERE else self.root / "masks" / sub
        # a split at images/ itself must not swallow the folders of the other splits
        others = [self.root / "images" / s for k, s in self.config.splits.items() if k != split and s != HERE]
        out = []
        for img in sorted(img_dir.rglob("*")):
            if not img.is_file() or img.suffix.lower() not in IMAGE_EXTS:
                continue
            if any(part.startswith(".") for part in img.relative_to(img_dir).parts):
                continue  # editor and notebook caches (.ipynb_checkpoints/...) are not samples
            if any(o == img.parent or o in img.parents for o in others):
                continue
            sid = img.relative_to(img_dir).with_suffix("").as_posix()
            mask = mask_dir / f"{sid}{MASK_EXT}"
            if not mask.is_file():
                raise DatasetError(f"missing label for image {rel(img, self.root)}: looked for {rel(mask, self.root)}")
            img_rel, mask_rel = rel(img, self.root), rel(mask, self.root)
            out.append(Sample(id=sid, split=split, image=img_rel, label=mask_rel, files=(img_rel, mask_rel)))
        return out

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(self.root / sample.image)

    def read_label(self, sample: Sample) -> np.ndarray:
        values, _ = read_palette_png(self.root / sample.label)
        k, ignore = self.meta.num_classes, self.config.ignore_value
        present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
        bad = [int(v) for v in present if v >= k and v != ignore]
        if bad:
            raise DatasetError(
                f"label of sample '{sample.id}' ({sample.label}) holds values {bad[:5]} outside the "
                f"{self.meta.name} class table (0..{k - 1} and ignore_index {ignore})"
            )
        if ignore == IGNORE:
            return values
        return np.where(values == ignore, np.uint8(IGNORE), values)

    def encode_label(self, sample: Sample, label: np.ndarray) -> dict[str, bytes]:
        values, palette = read_palette_png(self.root / sample.label)
        if values.shape != label.shape:
            raise DatasetError(f"new label {label.shape} does not match sample '{sample.id}' {values.shape}")
        label = self.check_label_values(np.ascontiguousarray(label, dtype=np.uint8), sample)
        if self.config.ignore_value != IGNORE:
            label = np.where(label == IGNORE, np.uint8(self.config.ignore_value), label)
        data = encode_png(label) if palette is None else encode_palette_png(label, palette)
        return {sample.label: data}
