"""Pascal VOC 2012 (optionally with the SBD augmented labels):
``VOC2012/JPEGImages/*.jpg``, ``VOC2012/SegmentationClass/*.png`` and the split lists
``VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt``.

Labels are palette PNGs whose index values are the train ids (0..20, 255 = object boundary, which
is ignore). The SBD-augmented variant adds ``SegmentationClassAug/*.png`` (grayscale or palette, same
values) and a list file such as ``train_aug.txt``; a split whose list file name ends with ``_aug``
reads its labels from ``SegmentationClassAug``. Writing back keeps the source's own encoding: the
same palette for a palette PNG, grayscale for a grayscale one.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from ..codecs import encode_palette_png, encode_png, read_palette_png, read_rgb
from ..errors import DatasetError
from .base import IMAGE, LABEL, VOC_XML, ClassInfo, DatasetMeta, Layout, Sample, is_image, rel

NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC colour map, ``(n, 3) uint8``: the bits of the index interleaved into the
    high bits of R, G and B (index 255, the boundary, is (224, 224, 192))."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


COLORMAP = voc_colormap()

META = DatasetMeta(
    name="voc",
    classes=tuple(
        ClassInfo(n, "stuff" if i == 0 else "thing", tuple(int(v) for v in COLORMAP[i]))
        for i, n in enumerate(NAMES)
    ),
)

LISTS = Path("ImageSets") / "Segmentation"
IMAGES = "JPEGImages"
LABELS = "SegmentationClass"
LABELS_AUG = "SegmentationClassAug"
LABEL_DIRS = (LABELS, LABELS_AUG, "SegmentationObject")  # label PNGs (--scale: nearest only)
AUG_SUFFIX = "_aug"


def find_voc_dir(root: Path) -> Path | None:
    """The VOC2012 folder for ``root``: ``root`` itself, ``root/VOC2012`` (a VOCdevkit folder) or
    ``root/VOCdevkit/VOC2012`` (torchvision's root); None when none of them looks like VOC."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / IMAGES).is_dir() and (cand / LISTS).is_dir():
            return cand
    return None


class VOC(Layout):
    name = "voc"
    kinds_known = "JPEGImages/, SegmentationClass[Aug]/ and SegmentationObject/ PNGs, Annotations/*.xml"

    @classmethod
    def _file_kind(cls, p: PurePosixPath) -> str | None:
        if "JPEGImages" in p.parts and is_image(p):
            return IMAGE
        if any(d in p.parts for d in LABEL_DIRS) and p.suffix.lower() == ".png":
            return LABEL
        if "Annotations" in p.parts and p.suffix.lower() == ".xml":
            return VOC_XML
        return None
    train_split = "train"
    val_split = "val"

    def __init__(self, root: str | Path):
        super().__init__(root)
        voc = find_voc_dir(self.root)
        if voc is None:
            raise DatasetError(f"{self.root} is not a VOC dataset; expected {self.expected()}")
        self.voc = voc
        # train_aug when the SBD list is there: that is the split the papers train on
        self.train_split = "train_aug" if (voc / LISTS / "train_aug.txt").is_file() else "train"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return find_voc_dir(root) is not None

    @classmethod
    def expected(cls) -> str:
        return (
            "voc: VOC2012/ (or the VOC2012 folder itself) with JPEGImages/, SegmentationClass/ and "
            "ImageSets/Segmentation/*.txt"
        )

    @property
    def meta(self) -> DatasetMeta:
        return META

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.voc / LISTS).glob("*.txt") if p.is_file())

    def _inside(self, text: str, list_file: Path, lineno: int) -> Path:
        """A path named in a list file, relative to the VOC2012 folder; never outside it."""
        parts = PurePosixPath(text.strip("/")).parts
        if not parts or ".." in parts:
            raise DatasetError(f"{rel(list_file, self.root)} line {lineno}: bad path '{text}'")
        return self.voc.joinpath(*parts)

    def _scan(self, split: str) -> list[Sample]:
        list_file = self.voc / LISTS / f"{split}.txt"
        label_dir = self.voc / (LABELS_AUG if split.endswith(AUG_SUFFIX) else LABELS)
        out = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1:  # a plain id, as in the official lists
                sid = fields[0]
                image = self.voc / IMAGES / f"{sid}.jpg"
                label = label_dir / f"{sid}.png"
            elif len(fields) == 2:  # "/JPEGImages/x.jpg /SegmentationClassAug/x.png", as in SBD lists
                image = self._inside(fields[0], list_file, lineno)
                label = self._inside(fields[1], list_file, lineno)
                sid = image.stem
            else:
                raise DatasetError(
                    f"{rel(list_file, self.root)} line {lineno}: expected an id or an image and a label "
                    f"path, got '{line.strip()}'"
                )
            if not image.is_file():
                raise DatasetError(
                    f"missing image for id '{sid}' listed in {rel(list_file, self.root)}: {rel(image, self.root)}"
                )
            if not label.is_file():
                raise DatasetError(
                    f"missing label for image {rel(image, self.root)} (split '{split}'): looked for "
                    f"{rel(label, self.root)}"
                )
            img_rel, lab_rel = rel(image, self.root), rel(label, self.root)
            out.append(Sample(id=sid, split=split, image=img_rel, label=lab_rel, files=(img_rel, lab_rel)))
        return out

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(self.root / sample.image)

    def read_label(self, sample: Sample) -> np.ndarray:
        index, _ = read_palette_png(self.root / sample.label)
        return self.check_label_values(index, sample)

    def encode_label(self, sample: Sample, label: np.ndarray) -> dict[str, bytes]:
        index, palette = read_palette_png(self.root / sample.label)
        if index.shape != label.shape:
            raise DatasetError(f"new label {label.shape} does not match sample '{sample.id}' {index.shape}")
        label = self.check_label_values(np.ascontiguousarray(label, dtype=np.uint8), sample)
        # The train ids are the stored values; only the container (palette or gray) follows the source.
        data = encode_png(label) if palette is None else encode_palette_png(label, palette)
        return {sample.label: data}
