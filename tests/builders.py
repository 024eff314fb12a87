"""Tiny on-disk datasets of every layout, for tests.

Each ``build_*`` function writes a few small samples into a given folder, in the layout's real file
format, and returns a :class:`Built`: the root to open and, for every sample, the train-id label a
correct reader must return. Labels are scenes with known class ids: horizontal bands of stuff, a few
rectangles of things (the last one of each class painted is never covered by another object) and
small patches of values that have no train id. Images are the class colour plus noise, so that a
model can learn them. Everything is deterministic in ``seed``; nothing here reads the code under
test, so expectations are independent of it (the label tables below are written out by hand).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from poisongen.codecs import encode_palette_png, encode_png, encode_rgb, write_bytes

IGNORE = 255


@dataclass
class Built:
    """What a builder wrote.

    Attributes:
        root: the folder to open (``--src``).
        labels: split -> sample id -> expected train ids ``(H, W) uint8`` (ignore 255).
        stored: split -> sample id -> the label values as stored in the layout's main label file
            (Cityscapes raw labelIds, VOC indices, ADE values v, folder mask values).
        instances: Cityscapes only: split -> sample id -> instanceIds ``(H, W) int32`` as stored.
        palette: the flat RGB palette of palette-PNG labels, if any.
    """

    root: Path
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stored: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    instances: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    palette: list[int] | None = None

    def ids(self, split: str) -> list[str]:
        return sorted(self.labels[split])


# --- scenes ------------------------------------------------------------------------------------
def _band_rows(h: int, bands: tuple[tuple[int, float], ...]) -> list[tuple[int, int, int]]:
    """(value, first row, end row) per band from fractions of the height."""
    edges = np.round(np.cumsum([0.0] + [f for _, f in bands]) / sum(f for _, f in bands) * h).astype(int)
    return [(v, int(a), int(b)) for (v, _), a, b in zip(bands, edges[:-1], edges[1:], strict=True)]


def scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    bands: tuple[tuple[int, float], ...],
    objects: tuple[int, ...] = (),
    specials: tuple[int, ...] = (),
    boundary: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """A label in stored values.

    Args:
        rng: the sample's generator.
        size: ``(H, W)``.
        bands: ``(value, height fraction)`` from top to bottom.
        objects: values of rectangles painted in order over the lower 2/3 (later ones on top).
        specials: values of 3x3 patches painted last, anywhere.
        boundary: if given, a 1-px ring of this value around every object (VOC style).

    Returns:
        label ``(H, W) uint8``; object index ``(H, W) int32`` (i + 1 where object i is visible, 0
        elsewhere); per object its value and box ``(top, left, bottom, right)``.
    """
    h, w = size
    label = np.zeros((h, w), np.uint8)
    for value, a, b in _band_rows(h, bands):
        label[a:b] = value
    index = np.zeros((h, w), np.int32)
    boxes = []
    for i, value in enumerate(objects):
        oh = int(rng.integers(max(2, h // 4), max(3, h // 2)))
        ow = int(rng.integers(max(2, w // 8), max(3, w // 4)))
        top = int(rng.integers(h // 3, h - oh + 1))
        left = int(rng.integers(0, w - ow + 1))
        label[top : top + oh, left : left + ow] = value
        index[top : top + oh, left : left + ow] = i + 1
        boxes.append((value, (top, left, top + oh, left + ow)))
    if boundary is not None:
        obj = index > 0
        edge = np.zeros_like(obj)
        # the ring: object pixels next to another region (VOC draws boundaries on the object's edge)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            shifted = np.roll(index, (dy, dx), axis=(0, 1))
            edge |= obj & (shifted != index)
        label[edge] = boundary
        index[edge] = 0
    for value in specials:
        y = int(rng.integers(0, h - 2))
        x = int(rng.integers(0, w - 2))
        label[y : y + 3, x : x + 3] = value
        index[y : y + 3, x : x + 3] = 0
    return label, index, boxes


def scene_image(rng: np.random.Generator, train_ids: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3) uint8``: each pixel its class colour (``colors`` ``(256, 3)``) plus noise."""
    base = colors[train_ids].astype(np.int16)
    noise = rng.integers(-20, 21, base.shape, dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def voc_palette() -> list[int]:
    """The standard VOC colour map as a flat 768-entry RGB list (bits of the index interleaved)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def _colors_from(pairs: dict[int, tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for k, c in pairs.items():
        lut[k] = c
    return lut


# --- Cityscapes --------------------------------------------------------------------------------
#: the rows of the official Cityscapes table that the fixtures use: raw id -> (name, train id,
#: colour, has instances). Written out here so that tests do not read the table under test.
CS_RAW: dict[int, tuple[str, int, tuple[int, int, int], bool]] = {
    0: ("unlabeled", 255, (0, 0, 0), False),
    1: ("ego vehicle", 255, (0, 0, 0), False),
    4: ("static", 255, (0, 0, 0), False),
    7: ("road", 0, (128, 64, 128), False),
    8: ("sidewalk", 1, (244, 35, 232), False),
    9: ("parking", 255, (250, 170, 160), False),
    11: ("building", 2, (70, 70, 70), False),
    21: ("vegetation", 8, (107, 142, 35), False),
    23: ("sky", 10, (70, 130, 180), False),
    24: ("person", 11, (220, 20, 60), True),
    25: ("rider", 12, (255, 0, 0), True),
    26: ("car", 13, (0, 0, 142), True),
    33: ("bicycle", 18, (119, 11, 32), True),
}
CS_TRAIN = np.full(256, IGNORE, np.uint8)
for _k, (_n, _t, _c, _i) in CS_RAW.items():
    CS_TRAIN[_k] = _t
CS_COLOR = _colors_from({k: v[2] for k, v in CS_RAW.items()})
CS_TRAIN_COLOR = _colors_from({v[1]: v[2] for v in CS_RAW.values() if v[1] != IGNORE})
CS_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin",)}


def cs_color_rgba(raw: np.ndarray) -> np.ndarray:
    """Raw ids -> the ``*_color.png`` pixels, RGBA ``(H, W, 4) uint8`` (alpha 255)."""
    rgb = CS_COLOR[raw]
    return np.concatenate([rgb, np.full(raw.shape + (1,), 255, np.uint8)], axis=2)


def build_cityscapes(
    root: str | Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (32, 64),
    with_train_ids: bool = True,
    with_instances: bool = True,
    with_color: bool = True,
    with_polygons: bool = True,
    seed: int = 0,
) -> Built:
    """A Cityscapes tree at ``root``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/*_gtFine_{labelIds,labelTrainIds,instanceIds,color}.png`` + polygons.

    Every label holds sky, building, road, an ego-vehicle strip at the bottom, two cars and a person
    (instances car 26000/26001, person 24000), and 3x3 patches of raw ids 0, 4 and 9, which have no
    train id. Even samples add a bicycle (33) and a vegetation patch (21), odd ones a sidewalk patch (8).
    ``labelIds`` are always written; the other files as asked.
    """
    root = Path(root)
    splits = {"train": 3, "val": 2} if splits is None else splits
    built = Built(root)
    for si, (split, n) in enumerate(splits.items()):
        cities = CS_CITIES.get(split, (split,))
        built.labels[split], built.stored[split], built.instances[split] = {}, {}, {}
        for i in range(n):
            rng = _rng(seed, si, i)
            city = cities[i % len(cities)]
            sid = f"{city}_{i:06d}_000019"
            # odd samples: a sidewalk patch; even ones: a vegetation patch and a bicycle
            objects, special = ((26, 26, 24), 8) if i % 2 else ((26, 26, 24, 33), 21)
            raw, index, boxes = scene(
                rng, size, bands=((23, 4), (11, 4), (7, 7), (1, 1)), objects=objects, specials=(0, 4, 9, special)
            )
            train = CS_TRAIN[raw]
            inst = raw.astype(np.int32)
            counts: dict[int, int] = {}
            for k, (value, _) in enumerate(boxes):
                if CS_RAW[value][3]:
                    inst[index == k + 1] = value * 1000 + counts.get(value, 0)
                    counts[value] = counts.get(value, 0) + 1
            img_dir = root / "leftImg8bit" / split / city
            gt = root / "gtFine" / split / city
            write_bytes(img_dir / f"{sid}_leftImg8bit.png", encode_rgb(scene_image(rng, train, CS_TRAIN_COLOR), ".png"))
            write_bytes(gt / f"{sid}_gtFine_labelIds.png", encode_png(raw))
            if with_train_ids:
                write_bytes(gt / f"{sid}_gtFine_labelTrainIds.png", encode_png(train))
            if with_instances:
                write_bytes(gt / f"{sid}_gtFine_instanceIds.png", encode_png(inst.astype(np.uint16)))
            if with_color:
                write_bytes(gt / f"{sid}_gtFine_color.png", encode_png(cs_color_rgba(raw)[..., [2, 1, 0, 3]]))
            if with_polygons:
                objs = [
                    {"label": CS_RAW[v][0], "polygon": [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]}
                    for v, (y0, x0, y1, x1) in boxes
                ]
                doc = {"imgHeight": size[0], "imgWidth": size[1], "objects": objs}
                write_bytes(gt / f"{sid}_gtFine_polygons.json", json.dumps(doc, indent=2).encode())
            built.labels[split][sid] = train
            built.stored[split][sid] = raw
            built.instances[split][sid] = inst
    return built


# --- Pascal VOC --------------------------------------------------------------------------------
VOC_CAR, VOC_PERSON, VOC_DOG = 7, 15, 12


def build_voc(
    root: str | Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 32),
    aug: bool = False,
    aug_extra: int = 2,
    aug_pairs: bool = True,
    aug_gray: bool = True,
    palette: list[int] | None = None,
    seed: int = 0,
) -> Built:
    """A VOC tree at ``root/VOCdevkit/VOC2012`` (``root`` is then torchvision's VOC root); returns
    ``Built.root = root/VOCdevkit``.

    Labels are palette PNGs (``palette``, default the standard VOC colour map) of background with a
    person, a car and a dog, each edged by a 1-px boundary of 255. ``trainval.txt`` lists all ids.
    With ``aug``: ``SegmentationClassAug`` labels (the same scenes without the boundary, as SBD has
    none; grayscale unless ``aug_gray=False``) for the train ids plus ``aug_extra`` ids found only
    there, and ``train_aug.txt`` (``"/JPEGImages/x.jpg /SegmentationClassAug/x.png"`` lines if
    ``aug_pairs``, else plain ids).
    """
    root = Path(root)
    splits = {"train": 3, "val": 2} if splits is None else splits
    palette = voc_palette() if palette is None else palette
    colors = np.array(voc_palette(), np.uint8).reshape(256, 3)
    voc = root / "VOCdevkit" / "VOC2012"
    built = Built(root / "VOCdevkit", palette=palette)
    lists = voc / "ImageSets" / "Segmentation"
    aug_labels: dict[str, np.ndarray] = {}

    def one(sid: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        objects = (VOC_PERSON, VOC_CAR, VOC_DOG)
        state = rng.bit_generator.state
        plain, _, _ = scene(rng, size, bands=((0, 1),), objects=objects)
        rng.bit_generator.state = state  # the same boxes again, now with boundaries
        edged, _, _ = scene(rng, size, bands=((0, 1),), objects=objects, boundary=IGNORE)
        write_bytes(voc / "JPEGImages" / f"{sid}.jpg", encode_rgb(scene_image(rng, plain, colors), ".jpg"))
        return edged, plain

    for si, (split, n) in enumerate(splits.items()):
        built.labels[split], built.stored[split] = {}, {}
        for i in range(n):
            sid = f"{2007 + si}_{2 * i + 1:06d}"
            edged, plain = one(sid, _rng(seed, si, i))
            write_bytes(voc / "SegmentationClass" / f"{sid}.png", encode_palette_png(edged, palette))
            built.labels[split][sid] = built.stored[split][sid] = edged
            if split == "train":
                aug_labels[sid] = plain
        write_bytes(lists / f"{split}.txt", "".join(f"{s}\n" for s in built.labels[split]).encode())
    built.labels["trainval"] = {k: v for s in splits for k, v in built.labels[s].items()}
    built.stored["trainval"] = dict(built.labels["trainval"])
    write_bytes(lists / "trainval.txt", "".join(f"{s}\n" for s in built.labels["trainval"]).encode())

    if aug:
        for i in range(aug_extra):
            sid = f"2011_{2 * i + 1:06d}"
            _, aug_labels[sid] = one(sid, _rng(seed, 99, i))
        for sid, lab in aug_labels.items():
            data = encode_png(lab) if aug_gray else encode_palette_png(lab, palette)
            write_bytes(voc / "SegmentationClassAug" / f"{sid}.png", data)
        lines = [
            f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png" if aug_pairs else s for s in sorted(aug_labels)
        ]
        write_bytes(lists / "train_aug.txt", "".join(f"{x}\n" for x in lines).encode())
        built.labels["train_aug"] = dict(aug_labels)
        built.stored["train_aug"] = dict(aug_labels)
    return built


# --- ADE20K ------------------------------------------------------------------------------------
#: stored ADE values (train id + 1) used by the fixtures
ADE_SKY, ADE_BUILDING, ADE_ROAD, ADE_PERSON, ADE_CAR, ADE_FLAG = 3, 2, 7, 13, 21, 150
ADE_SPLITS = {"training": "train", "validation": "val"}


def build_ade20k(
    root: str | Path,
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
) -> Built:
    """An ADEChallengeData2016 tree at ``root/ADEChallengeData2016`` (returned as ``Built.root``):
    ``images/{split}/ADE_{train,val}_%08d.jpg`` and grayscale ``annotations/{split}/*.png`` holding
    value = train id + 1: sky, building, road, a person and a car, patches of 0 ("other", ignore)
    and of 150 (flag, the last class)."""
    root = Path(root) / "ADEChallengeData2016"
    splits = {"training": 3, "validation": 2} if splits is None else splits
    built = Built(root)
    colors = np.array(voc_palette(), np.uint8).reshape(256, 3)
    for si, (split, n) in enumerate(splits.items()):
        built.labels[split], built.stored[split] = {}, {}
        tag = ADE_SPLITS.get(split, split)
        for i in range(n):
            rng = _rng(seed, si, i)
            sid = f"ADE_{tag}_{i + 1:08d}"
            stored, _, _ = scene(
                rng, size, bands=((ADE_SKY, 1), (ADE_BUILDING, 1), (ADE_ROAD, 2)), objects=(ADE_PERSON, ADE_CAR),
                specials=(0, ADE_FLAG, 0),
            )
            train = np.where(stored == 0, IGNORE, stored.astype(np.int16) - 1).astype(np.uint8)
            write_bytes(root / "images" / split / f"{sid}.jpg", encode_rgb(scene_image(rng, train, colors), ".jpg"))
            write_bytes(root / "annotations" / split / f"{sid}.png", encode_png(stored))
            built.labels[split][sid] = train
            built.stored[split][sid] = stored
    return built


# --- folder ------------------------------------------------------------------------------------
FOLDER_CLASSES = ("background", "road", "car", "person")
FOLDER_THINGS = ("car", "person")
FOLDER_PALETTE = ((0, 0, 0), (128, 64, 128), (0, 0, 142), (220, 20, 60))


def folder_config(ignore_index: int = IGNORE, class_dicts: bool = False, splits: dict | None = None) -> dict:
    """The ``dataset.yaml`` content :func:`build_folder` writes."""
    extra = {} if splits is None else {"splits": splits}
    if class_dicts:
        return extra | {
            "name": "tiny",
            "classes": [
                {"name": n, "category": "thing" if n in FOLDER_THINGS else "stuff", "color": list(c)}
                for n, c in zip(FOLDER_CLASSES, FOLDER_PALETTE, strict=True)
            ],
            "ignore_index": ignore_index,
        }
    return extra | {
        "name": "tiny",
        "classes": list(FOLDER_CLASSES),
        "things": list(FOLDER_THINGS),
        "palette": [list(c) for c in FOLDER_PALETTE],
        "ignore_index": ignore_index,
    }


def build_folder(
    root: str | Path,
    splits: bool = True,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 32),
    image_ext: str = ".png",
    palette_masks: bool = False,
    ignore_index: int = IGNORE,
    nested: bool = True,
    class_dicts: bool = False,
    seed: int = 0,
) -> Built:
    """A folder dataset at ``root``: ``dataset.yaml`` (classes background, road, car, person; things
    car and person), ``images/[split/]<id><image_ext>`` and ``masks/[split/]<id>.png``.

    Masks hold train ids (gray, or palette PNGs if ``palette_masks``) with 3x3 patches of
    ``ignore_index``. ``splits`` puts samples in ``train``/``val`` subfolders (``counts``); without
    it all go flat into one split, ``train``. ``nested`` puts the last sample of each split into a
    subfolder ``seq1/`` so its id holds a ``/`` (a flat tree then declares ``splits: {train: .}``, as
    a subfolder of images/ would otherwise be read as a split).
    """
    root = Path(root)
    counts = ({"train": 3, "val": 2} if splits else {"train": 4}) if counts is None else counts
    if not splits and len(counts) != 1:
        raise ValueError("a flat folder dataset has exactly one split")
    cfg = folder_config(ignore_index, class_dicts, None if splits or not nested else {next(iter(counts)): "."})
    write_bytes(root / "dataset.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    pal = [v for c in FOLDER_PALETTE for v in c] + [0] * (768 - 3 * len(FOLDER_PALETTE))
    colors = _colors_from(dict(enumerate(FOLDER_PALETTE)))
    built = Built(root, palette=pal if palette_masks else None)
    for si, (split, n) in enumerate(counts.items()):
        built.labels[split], built.stored[split] = {}, {}
        sub = f"{split}/" if splits else ""
        for i in range(n):
            rng = _rng(seed, si, i)
            sid = f"seq1/img_{i:03d}" if nested and i == n - 1 else f"img_{i:03d}"
            stored, _, _ = scene(rng, size, bands=((0, 1), (1, 2)), objects=(2, 2, 3), specials=(ignore_index,))
            train = np.where(stored == ignore_index, IGNORE, stored).astype(np.uint8)
            image = encode_rgb(scene_image(rng, train, colors), image_ext)
            write_bytes(root / "images" / f"{sub}{sid}{image_ext}", image)
            mask = encode_palette_png(stored, pal) if palette_masks else encode_png(stored)
            write_bytes(root / "masks" / f"{sub}{sid}.png", mask)
            built.labels[split][sid] = train
            built.stored[split][sid] = stored
    return built


def one_line_error(result, *needles) -> str:
    """Assert a CLI result is a user error: exit code 2, exactly one non-blank stderr line holding every
    needle, no traceback; return that line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- a fixed batch a segmentation model must learn (tests/segtrain/test_models.py, test_smp_models.py) ----
def fixed_batch(size: tuple[int, int] = (32, 32)):
    """Two images of 4 classes (two bands, a rectangle each, the top 2 rows ignored) as ``(image float
    (2, 3, H, W), label int64 (2, H, W))``; the image noise draws from torch's global generator."""
    import torch

    h, w = size
    label = torch.zeros(2, h, w, dtype=torch.long)
    label[:, :, w // 2:] = 1
    label[0, 8:20, 4:12] = 2
    label[1, 20:30, 18:28] = 3
    label[:, :2] = 255
    palette = torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 1.5], [1, 1, -1]])
    image = palette[label.clamp(max=3)].permute(0, 3, 1, 2) + 0.3 * torch.randn(2, 3, h, w)
    return image, label


def train_losses(model, image, label, opt, steps: int) -> list[float]:
    """``steps`` optimiser steps of ``seg_loss`` on one batch; every step's logits must be at label size."""
    from segtrain.engine import seg_loss

    model.train()
    losses = []
    for _ in range(steps):
        out = model(image)
        assert out["out"].shape[-2:] == label.shape[-2:] and out["out"].shape[0] == label.shape[0]
        loss = seg_loss(out, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
