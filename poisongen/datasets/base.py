"""What every dataset layout shares: the class table, the sample record and the layout interface.

A layout reads samples of one on-disk format into train-id space (``uint8`` class ids ``0..K-1``,
ignore ``255``) and encodes a modified label back into the layout's own files, so that a poisoned
copy is the same layout, file for file.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar, Literal

import numpy as np

from ..errors import ConfigError, DatasetError, choices

IGNORE = 255
Category = Literal["thing", "stuff"]


@dataclass(frozen=True)
class ClassInfo:
    """One train class: its name, ``thing`` (countable object) or ``stuff``, and its RGB colour."""

    name: str
    category: Category
    color: tuple[int, int, int]


@dataclass(frozen=True)
class DatasetMeta:
    """The class table of a dataset in train-id space.

    Train id ``k`` is ``classes[k]``; ``ignore_index`` (255) marks pixels that never count.
    """

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_index: int = IGNORE

    def __post_init__(self):
        if not 0 < len(self.classes) <= 255:
            raise DatasetError(f"class table of {self.name} must hold 1..255 classes, got {len(self.classes)}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise DatasetError(f"class table of {self.name} repeats a class name")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def things(self) -> list[int]:
        return [i for i, c in enumerate(self.classes) if c.category == "thing"]

    @property
    def palette(self) -> np.ndarray:
        """``(256, 3) uint8`` lookup table: train id -> RGB, ignore and unused ids black."""
        lut = np.zeros((256, 3), np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.color
        return lut

    def category(self, class_id: int) -> Category:
        return self.classes[class_id].category

    def class_id(self, token: str | int) -> int:
        """Resolve a class given by name (``car``, case-insensitive) or by train id (``13``)."""
        text = str(token).strip()
        if text.lstrip("-").isdigit():
            k = int(text)
            if 0 <= k < self.num_classes:
                return k
            raise ConfigError(
                f"class id {k} is outside the {self.name} class table; valid ids are 0..{self.num_classes - 1}"
            )
        lowered = {n.lower(): i for i, n in enumerate(self.names)}
        key = text.lower().replace("_", " ")
        for cand in (text.lower(), key):
            if cand in lowered:
                return lowered[cand]
        raise ConfigError(f"unknown class '{text}' for {self.name}; valid classes are {choices(self.names)}")

    def parse_classes(self, spec: str | int | list | tuple) -> tuple[int, ...]:
        """Resolve ``"car,person"`` (names or ids) into sorted unique train ids."""
        if isinstance(spec, (list, tuple)):
            tokens = [str(t) for t in spec]
        else:
            tokens = [t for t in str(spec).split(",") if t.strip()]
        if not tokens:
            raise ConfigError(f"empty class list; valid classes are {choices(self.names)}")
        return tuple(sorted({self.class_id(t) for t in tokens}))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "classes": [
                {"id": i, "name": c.name, "category": c.category, "color": list(c.color)}
                for i, c in enumerate(self.classes)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetMeta:
        return cls(
            name=d["name"],
            ignore_index=int(d.get("ignore_index", IGNORE)),
            classes=tuple(
                ClassInfo(c["name"], c["category"], tuple(int(v) for v in c["color"])) for c in d["classes"]
            ),
        )


@dataclass(frozen=True)
class Sample:
    """One sample of one split. Paths are POSIX paths relative to the dataset root.

    ``files`` lists every file that belongs to the sample (image, every label encoding, instance
    map, polygons, ...): the files a poisoned copy may have to rewrite or must copy unchanged.
    """

    id: str
    split: str
    image: str
    label: str
    instances: str | None = None
    files: tuple[str, ...] = field(default=())


@dataclass
class LoadedSample:
    """A sample read into memory: RGB ``(H, W, 3) uint8``, train ids ``(H, W) uint8``, and where the
    layout has them, instance ids ``(H, W) int32`` (0 = no instance)."""

    sample: Sample
    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray | None = None


#: file kinds (what ``--scale`` does to a file of that kind: poisongen.rescale.rescale_bytes)
IMAGE, LABEL, POLYGONS, VOC_XML, COPY = "image", "label", "polygons", "voc_xml", "copy"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image(path: PurePosixPath) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


class Layout(ABC):
    """A dataset layout on disk. Subclasses set ``name``, ``train_split``, ``val_split``, and say
    what kind each of their files is (:meth:`_file_kind`, :attr:`kinds_known`)."""

    #: the files of this layout that have a kind other than ``copy``, in words (for error messages)
    kinds_known: ClassVar[str] = ""

    name: ClassVar[str]
    # plain attributes: layouts whose split names depend on the data (VOC, folder) set them per instance
    train_split: str = "train"
    val_split: str = "val"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root does not exist: {self.root}")
        self._samples: dict[str, list[Sample]] = {}

    # --- detection ------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this layout."""

    @classmethod
    @abstractmethod
    def expected(cls) -> str:
        """What :meth:`detect` looks for, for error messages."""

    # --- listing --------------------------------------------------------------------------
    @property
    @abstractmethod
    def meta(self) -> DatasetMeta: ...

    @abstractmethod
    def splits(self) -> list[str]:
        """The split names present on disk."""

    @abstractmethod
    def _scan(self, split: str) -> list[Sample]:
        """List the samples of ``split``; raise :class:`DatasetError` for missing labels."""

    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` sorted by id. Raises on an unknown or empty split."""
        if split not in self._samples:
            valid = self.splits()
            if split not in valid:
                raise DatasetError(
                    f"unknown split '{split}' for {self.name} dataset at {self.root}; valid splits are "
                    f"{choices(valid)}"
                )
            found = sorted(self._scan(split), key=lambda s: s.id)
            if not found:
                raise DatasetError(f"split '{split}' of {self.name} dataset at {self.root} is empty")
            ids = [s.id for s in found]
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise DatasetError(f"sample id '{dup}' occurs twice in split '{split}' at {self.root}")
            self._samples[split] = found
        return self._samples[split]

    def sample(self, split: str, sample_id: str) -> Sample:
        for s in self.samples(split):
            if s.id == sample_id:
                return s
        raise DatasetError(f"no sample '{sample_id}' in split '{split}' of {self.root}")

    def find(self, sample_id: str) -> Sample:
        """Find a sample by id in any split."""
        for split in self.splits():
            for s in self.samples(split):
                if s.id == sample_id:
                    return s
        raise DatasetError(f"no sample '{sample_id}' in any split of {self.root}")

    # --- reading --------------------------------------------------------------------------
    @abstractmethod
    def read_image(self, sample: Sample) -> np.ndarray:
        """RGB ``(H, W, 3) uint8``."""

    @abstractmethod
    def read_label(self, sample: Sample) -> np.ndarray:
        """Train ids ``(H, W) uint8``, ignore 255; raises on values outside the class table."""

    def read_instances(self, sample: Sample) -> np.ndarray | None:
        """Instance ids ``(H, W) int32`` (0 = none), or None where the layout has no instance map."""
        return None

    def load(self, sample: Sample, instances: bool = False) -> LoadedSample:
        """Read image and label (and instances) and check that their sizes agree."""
        image = self.read_image(sample)
        label = self.read_label(sample)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"image/label size mismatch for sample '{sample.id}': image {image.shape[1]}x{image.shape[0]}, "
                f"label {label.shape[1]}x{label.shape[0]} (WxH)"
            )
        inst = self.read_instances(sample) if instances else None
        return LoadedSample(sample, image, label, inst)

    def check_label_values(self, label: np.ndarray, sample: Sample) -> np.ndarray:
        """Raise unless every value is a train id or ignore."""
        k, ignore = self.meta.num_classes, self.meta.ignore_index
        if not np.count_nonzero((label >= k) & (label != ignore)):  # the common case, without a histogram
            return label
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        bad = [int(v) for v in present if v >= self.meta.num_classes and v != self.meta.ignore_index]
        if bad:
            raise DatasetError(
                f"label of sample '{sample.id}' ({sample.label}) holds values {bad[:5]} outside the "
                f"{self.meta.name} class table (0..{self.meta.num_classes - 1} and {self.meta.ignore_index})"
            )
        return label

    # --- writing back -----------------------------------------------------------------------
    @abstractmethod
    def encode_label(self, sample: Sample, label: np.ndarray) -> dict[str, bytes]:
        """Encode a modified train-id label in the layout's own encoding.

        Returns ``{relative path: file bytes}`` for every label file of the sample that the change
        touches (e.g. Cityscapes labelIds, labelTrainIds, color and instanceIds together). Pixels
        whose source value has no train id are kept as they are in the source.
        """

    def encode_image(self, sample: Sample, image: np.ndarray, jpeg_quality: int) -> dict[str, bytes]:
        """Encode a modified RGB image under the sample's own image path and format."""
        from ..codecs import encode_rgb

        return {sample.image: encode_rgb(image, Path(sample.image).suffix, jpeg_quality)}

    # --- what each file is ------------------------------------------------------------------
    @classmethod
    def _file_kind(cls, path: PurePosixPath) -> str | None:
        """The kind of a file of this layout (relative path), or None for "not one of its kinds"; each
        layout overrides it (a layout that does not cannot be rescaled: its images are refused)."""
        return None

    @classmethod
    def file_kind(cls, rel_path: str) -> str:
        """The kind of a file (relative POSIX path): image, label, polygons, voc_xml, or copy for a
        file that is no image. An image file the layout does not know raises, since it could be a
        label that must never be interpolated."""
        p = PurePosixPath(rel_path)
        kind = cls._file_kind(p)
        if kind is not None:
            return kind
        if is_image(p):
            raise DatasetError(
                f"--scale cannot tell what {rel_path} is (a {cls.name} dataset rescales {cls.kinds_known}); move it "
                f"out of the source or run without --scale"
            )
        return COPY

    # --- whole tree ------------------------------------------------------------------------
    def all_files(self) -> list[str]:
        """Every regular file under the root (relative POSIX paths, sorted), whatever the layout
        knows of it: the poisoned copy holds them all."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            for f in filenames:
                out.append((rel / f).as_posix())
        return sorted(out)

    def summary(self) -> dict:
        """Per split: sample count; the class table; the layout name."""
        return {
            "layout": self.name,
            "root": str(self.root),
            "classes": self.meta.num_classes,
            "splits": {s: len(self.samples(s)) for s in self.splits()},
        }


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()

