"""ADE20K, SceneParsing benchmark release (``ADEChallengeData2016``):
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``.

Annotations are grayscale ``uint8`` PNGs: value ``v`` in 1..150 is class ``v - 1``, 0 is "other"
(not in the 150-class table) and becomes ignore 255. Writing back inverts this exactly
(train id ``k`` -> ``k + 1``, 255 -> 0) into a grayscale PNG.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from ..codecs import encode_png, read_gray, read_rgb
from ..errors import DatasetError
from .base import IGNORE, IMAGE, LABEL, ClassInfo, DatasetMeta, Layout, Sample, is_image, rel

DIR = "ADEChallengeData2016"

#: the 150 classes of objectInfo150 (short names, as mmsegmentation spells them); train id = index
NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: the usual ADE20K palette (mmsegmentation's ADE20KDataset, identical to the colours of
#: Mask2Former's ADE20K_150_CATEGORIES). It is the published one, duplicate included: road (6) and
#: skyscraper (48) share (140, 140, 140).
PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

#: The 50 stuff classes of the ADE20K panoptic benchmark (``isthing: 0`` in the ADE20K_150 table of
#: Mask2Former/detectron2); the other 100 are things. A published split rather than our own
#: judgement, so that results compare with panoptic work; it has surprises (fence, column and pole
#: are things; rug, blanket and crt screen are stuff).
STUFF = frozenset({
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "grass", "sidewalk", "earth",
    "mountain", "plant", "water", "house", "sea", "rug", "field", "rock", "base", "sand", "skyscraper",
    "grandstand", "path", "runway", "stairway", "river", "bridge", "blind", "hill", "bar", "hovel",
    "tower", "dirt track", "land", "escalator", "buffet", "poster", "stage", "conveyer belt", "canopy",
    "swimming pool", "waterfall", "tent", "cradle", "tank", "lake", "blanket", "pier", "crt screen",
    "shower",
})

META = DatasetMeta(
    name="ade20k",
    classes=tuple(
        ClassInfo(n, "stuff" if n in STUFF else "thing", c) for n, c in zip(NAMES, PALETTE, strict=True)
    ),
)

NUM_CLASSES = len(NAMES)
#: stored value -> train id: 0 -> 255, v -> v - 1 (values above 150 are rejected before lookup)
VALUE_TO_TRAIN = np.full(256, IGNORE, np.uint8)
VALUE_TO_TRAIN[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)
#: train id -> stored value: k -> k + 1, 255 -> 0
TRAIN_TO_VALUE = np.zeros(256, np.uint8)
TRAIN_TO_VALUE[:NUM_CLASSES] = np.arange(1, NUM_CLASSES + 1, dtype=np.uint8)


def find_ade_dir(root: Path) -> Path | None:
    """``root`` itself or ``root/ADEChallengeData2016``, whichever holds images/ and annotations/."""
    for cand in (root, root / DIR):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    return None


class ADE20K(Layout):
    name = "ade20k"
    kinds_known = "images/ and annotations/ PNGs"

    @classmethod
    def _file_kind(cls, p: PurePosixPath) -> str | None:
        if "images" in p.parts and is_image(p):
            return IMAGE
        if "annotations" in p.parts and p.suffix.lower() == ".png":
            return LABEL
        return None
    train_split = "training"
    val_split = "validation"

    def __init__(self, root: str | Path):
        super().__init__(root)
        ade = find_ade_dir(self.root)
        if ade is None:
            raise DatasetError(f"{self.root} is not an ADE20K dataset; expected {self.expected()}")
        self.ade = ade

    @classmethod
    def detect(cls, root: Path) -> bool:
        return find_ade_dir(root) is not None

    @classmethod
    def expected(cls) -> str:
        return f"ade20k: {DIR}/ (or that folder itself) with images/ and annotations/"

    @property
    def meta(self) -> DatasetMeta:
        return META

    def splits(self) -> list[str]:
        # every image folder is a split; a missing annotation folder then shows as missing labels
        return sorted(p.name for p in (self.ade / "images").iterdir() if p.is_dir())

    def _scan(self, split: str) -> list[Sample]:
        ann_dir = self.ade / "annotations" / split
        out = []
        for img in sorted((self.ade / "images" / split).glob("*.jpg")):
            label = ann_dir / f"{img.stem}.png"
            if not label.is_file():
                raise DatasetError(
                    f"missing label for image {rel(img, self.root)}: looked for {rel(label, self.root)}"
                )
            img_rel, lab_rel = rel(img, self.root), rel(label, self.root)
            out.append(Sample(id=img.stem, split=split, image=img_rel, label=lab_rel, files=(img_rel, lab_rel)))
        return out

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(self.root / sample.image)

    def read_label(self, sample: Sample) -> np.ndarray:
        raw = read_gray(self.root / sample.label)
        if raw.max(initial=0) > NUM_CLASSES:
            bad = sorted(int(v) for v in np.unique(raw) if v > NUM_CLASSES)
            raise DatasetError(
                f"label of sample '{sample.id}' ({sample.label}) holds values {bad[:5]} outside the "
                f"ADE20K class table (0 = other, 1..{NUM_CLASSES})"
            )
        return VALUE_TO_TRAIN[raw.astype(np.uint8, copy=False)]  # a 16-bit PNG is fine if in range

    def encode_label(self, sample: Sample, label: np.ndarray) -> dict[str, bytes]:
        old = read_gray(self.root / sample.label)
        if old.shape != label.shape:
            raise DatasetError(f"new label {label.shape} does not match sample '{sample.id}' {old.shape}")
        self.check_label_values(np.asarray(label, dtype=np.uint8), sample)
        return {sample.label: encode_png(TRAIN_TO_VALUE[label])}
