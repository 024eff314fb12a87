"""Dataset layouts: reading into train ids, writing a changed label back, detection and errors.

Every fixture is a tiny real tree built by tests/builders.py; expectations come from the builders,
never from the code under test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from builders import (
    CS_RAW,
    IGNORE,
    Built,
    build_ade20k,
    build_cityscapes,
    build_folder,
    build_voc,
    cs_color_rgba,
    folder_config,
    voc_palette,
)
from conftest import tree_hashes
from PIL import Image

from poisongen.cli import app
from poisongen.codecs import encode_png, read_gray, read_palette_png, read_unchanged, write_bytes
from poisongen.datasets import LAYOUTS, detect_layout, open_dataset, resolve_src
from poisongen.datasets.ade20k import ADE20K, TRAIN_TO_VALUE, VALUE_TO_TRAIN
from poisongen.datasets.ade20k import META as ADE_META
from poisongen.datasets.cityscapes import LABELS, Cityscapes
from poisongen.datasets.cityscapes import META as CS_META
from poisongen.datasets.folder import Folder
from poisongen.datasets.voc import META as VOC_META
from poisongen.datasets.voc import VOC
from poisongen.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class Case:
    layout: str
    build: Callable[[Path], Built]
    splits: tuple[str, ...]
    train_val: tuple[str, str]


CASES = {
    "cityscapes": Case("cityscapes", build_cityscapes, ("train", "val"), ("train", "val")),
    "cityscapes_ids_only": Case(
        "cityscapes",
        lambda p: build_cityscapes(p, with_train_ids=False, with_instances=False, with_color=False),
        ("train", "val"),
        ("train", "val"),
    ),
    "voc": Case("voc", build_voc, ("train", "trainval", "val"), ("train", "val")),
    "voc_aug": Case(
        "voc", lambda p: build_voc(p, aug=True), ("train", "train_aug", "trainval", "val"), ("train_aug", "val")
    ),
    "voc_aug_ids_palette": Case(
        "voc",
        lambda p: build_voc(p, aug=True, aug_pairs=False, aug_gray=False),
        ("train", "train_aug", "trainval", "val"),
        ("train_aug", "val"),
    ),
    "ade20k": Case("ade20k", build_ade20k, ("training", "validation"), ("training", "validation")),
    "folder": Case("folder", build_folder, ("train", "val"), ("train", "val")),
    "folder_flat": Case(
        "folder", lambda p: build_folder(p, splits=False, nested=False), ("train",), ("train", "train")
    ),
    "folder_flat_palette": Case(
        "folder",
        lambda p: build_folder(
            p, splits=False, palette_masks=True, ignore_index=200, image_ext=".jpg", class_dicts=True
        ),
        ("train",),
        ("train", "train"),
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def built_case(request, tmp_path_factory) -> tuple[Case, Built]:
    """Read-only fixture trees, one per case (tests that change files build their own)."""
    case = CASES[request.param]
    return case, case.build(tmp_path_factory.mktemp(request.param))


def edit(label: np.ndarray, meta) -> np.ndarray:
    """A poisoning-like change: the largest thing -> the largest stuff, another thing -> a thing class
    absent from the label, a stuff corner -> the first thing, a corner -> ignore."""
    counts = np.bincount(label.ravel(), minlength=256)
    things = [k for k in meta.things if counts[k]]
    stuff = [k for k in range(meta.num_classes) if k not in meta.things and counts[k]]
    assert things and stuff, "fixture labels hold things and stuff"
    victim = max(things, key=lambda k: counts[k])
    target = max(stuff, key=lambda k: counts[k])
    new = label.copy()
    new[label == victim] = target
    absent = [k for k in meta.things if not counts[k]]
    others = [k for k in things if k != victim]
    if others and absent:
        new[label == others[0]] = absent[0]
    new[:2, -2:] = victim
    new[:2, :2] = IGNORE
    return new


def open_copy(src: Path, dst: Path, files: dict[str, bytes]) -> Path:
    """Copy the tree at ``src`` to ``dst`` and write ``files`` (relative paths) into the copy."""
    shutil.copytree(src, dst)
    for relpath, data in files.items():
        write_bytes(dst / relpath, data)
    return dst


# --- reading -----------------------------------------------------------------------------------
def test_reads_ids_splits_and_labels_exactly(built_case):
    case, built = built_case
    ds = open_dataset(built.root)
    assert type(ds) is LAYOUTS[case.layout]
    assert detect_layout(built.root) is LAYOUTS[case.layout]
    assert ds.splits() == list(case.splits)
    assert (ds.train_split, ds.val_split) == case.train_val
    for split in ds.splits():
        samples = ds.samples(split)
        assert [s.id for s in samples] == built.ids(split)
        for s in samples:
            loaded = ds.load(s)
            expected = built.labels[split][s.id]
            assert loaded.label.dtype == np.uint8
            np.testing.assert_array_equal(loaded.label, expected)
            assert loaded.image.shape == expected.shape + (3,) and loaded.image.dtype == np.uint8
            assert s.split == split and s.image in s.files and s.label in s.files
            assert all((ds.root / f).is_file() for f in s.files)
            assert ds.find(s.id).id == s.id


def test_forced_layout_matches_detection(built_case):
    case, built = built_case
    assert type(open_dataset(built.root, layout=case.layout)) is LAYOUTS[case.layout]
    for name, cls in LAYOUTS.items():
        if name != case.layout:
            assert not cls.detect(built.root), f"{name} claims a {case.layout} tree"
            with pytest.raises(DatasetError, match=f"is not a {name} dataset"):
                open_dataset(built.root, layout=name)


def test_unknown_split_names_valid_splits(built_case):
    case, built = built_case
    ds = open_dataset(built.root)
    with pytest.raises(DatasetError, match=r"unknown split 'nope'.*valid splits are \{" + ", ".join(case.splits)):
        ds.samples("nope")


# --- writing back ------------------------------------------------------------------------------
def test_write_back_round_trips_and_touches_nothing_else(built_case, tmp_path):
    case, built = built_case
    before = tree_hashes(built.root)
    ds = open_dataset(built.root)
    split = ds.train_split
    sample = ds.samples(split)[-1]
    old = ds.read_label(sample)
    new = edit(old, ds.meta)
    assert (new != old).any()

    files = ds.encode_label(sample, new)
    assert files and set(files) <= set(sample.files) and sample.image not in files
    assert ds.encode_label(sample, new) == files  # deterministic bytes

    copy = open_copy(built.root, tmp_path / "copy", files)
    after = tree_hashes(copy)
    assert after.keys() == before.keys()
    assert {k for k in before if before[k] != after[k]} == set(files)
    back = open_dataset(copy)
    np.testing.assert_array_equal(back.read_label(back.sample(split, sample.id)), new)
    for s in back.samples(split):
        if s.id != sample.id:
            np.testing.assert_array_equal(back.read_label(s), built.labels[split][s.id])
    assert tree_hashes(built.root) == before  # the source is never written


def test_writing_the_unchanged_label_gives_the_source_bytes(built_case):
    # The builders use the same fixed encoders, so an identity edit must reproduce every file.
    _, built = built_case
    ds = open_dataset(built.root)
    for sample in ds.samples(ds.train_split):
        for relpath, data in ds.encode_label(sample, ds.read_label(sample)).items():
            assert data == (ds.root / relpath).read_bytes(), relpath


def test_encode_rejects_values_outside_the_table(built_case):
    _, built = built_case
    ds = open_dataset(built.root)
    sample = ds.samples(ds.train_split)[0]
    bad = ds.read_label(sample).copy()
    bad[0, 0] = ds.meta.num_classes
    with pytest.raises(DatasetError, match="outside"):
        ds.encode_label(sample, bad)
    with pytest.raises(DatasetError, match="does not match"):
        ds.encode_label(sample, bad[1:])


# --- Cityscapes --------------------------------------------------------------------------------
def test_cityscapes_table_equals_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels as official

    assert len(LABELS) == len(official)
    for ours, theirs in zip(LABELS, official, strict=True):
        assert ours._fields == theirs._fields
        for name in ours._fields:
            assert getattr(ours, name) == getattr(theirs, name), (ours.name, name)
    train = sorted((lb for lb in official if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
    assert CS_META.names == [lb.name for lb in train]
    assert [c.category for c in CS_META.classes] == ["thing" if lb.hasInstances else "stuff" for lb in train]
    assert [c.color for c in CS_META.classes] == [lb.color for lb in train]
    assert CS_META.class_id("car") == CS_META.class_id("13") == 13


def test_cityscapes_reads_label_ids_through_the_official_table(tmp_path):
    built = build_cityscapes(tmp_path, splits={"train": 2}, with_train_ids=False, with_instances=False)
    ds = Cityscapes(built.root)
    for s in ds.samples("train"):
        assert s.label.endswith("_gtFine_labelIds.png") and s.instances is None
        raw = built.stored["train"][s.id]
        expected = np.array([CS_RAW[v][1] for v in raw.ravel()], np.uint8).reshape(raw.shape)
        np.testing.assert_array_equal(ds.read_label(s), expected)
        assert set(np.unique(raw)) >= {0, 1, 4, 9}  # raw ids with no train id are present ...
        assert (ds.read_label(s)[np.isin(raw, [0, 1, 4, 9])] == IGNORE).all()  # ... and read as ignore


def test_cityscapes_reads_instances(tmp_path):
    built = build_cityscapes(tmp_path, splits={"train": 1})
    ds = Cityscapes(built.root)
    s = ds.samples("train")[0]
    stored = built.instances["train"][s.id]
    np.testing.assert_array_equal(ds.read_instances(s), np.where(stored >= 1000, stored, 0))


def test_cityscapes_write_back_updates_every_encoding_consistently(tmp_path):
    built = build_cityscapes(tmp_path / "src", splits={"train": 2})
    ds = Cityscapes(built.root)
    sample = ds.sample("train", "aachen_000000_000019")
    raw = built.stored["train"][sample.id]
    inst = built.instances["train"][sample.id]
    old = built.labels["train"][sample.id]
    road, person, rider, car = 0, 11, 12, 13
    new = old.copy()
    new[old == car] = road  # thing -> stuff
    new[old == person] = rider  # thing -> thing
    c = next(c for c in range(old.shape[1] - 4) if (old[:4, c : c + 4] == 10).all())  # a patch of sky
    sky_block = np.zeros(old.shape, bool)
    sky_block[:2, c : c + 4] = True
    new[sky_block] = car  # stuff -> thing
    new[2:4, c : c + 4] = IGNORE  # sky -> ignore
    changed = new != old

    files = ds.encode_label(sample, new)
    kinds = {p.rsplit("_gtFine_", 1)[1] for p in files}
    assert kinds == {"labelIds.png", "labelTrainIds.png", "color.png", "instanceIds.png"}
    copy = open_copy(built.root, tmp_path / "copy", files)
    gt = lambda kind: copy / next(p for p in files if p.endswith(kind))  # noqa: E731

    train_to_raw = {t: k for k, (_, t, _, _) in CS_RAW.items() if t != IGNORE}
    train_to_raw[IGNORE] = 0  # ignore is written as 'unlabeled'
    exp_raw = raw.copy()
    exp_raw[changed] = [train_to_raw[v] for v in new[changed]]
    got_raw = read_gray(gt("_labelIds.png"))
    np.testing.assert_array_equal(got_raw, exp_raw)
    keep = np.isin(raw, [1, 4, 9]) & ~changed  # raw ids without train id stay as they were
    assert keep.any() and (got_raw[keep] == raw[keep]).all()
    np.testing.assert_array_equal(read_gray(gt("_labelTrainIds.png")), new)

    color = read_unchanged(gt("_color.png"))[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    np.testing.assert_array_equal(color, cs_color_rgba(exp_raw))
    assert (color[old == car][:, :3] == CS_RAW[7][2]).all()  # cars painted road colour

    got_inst = read_gray(gt("_instanceIds.png")).astype(np.int32)
    np.testing.assert_array_equal(got_inst[~changed], inst[~changed])
    assert (got_inst[old == car] == 7).all()  # relabeled to stuff: the stuff raw id, no instance
    np.testing.assert_array_equal(got_inst[old == person], 25000 + inst[old == person] % 1000)  # keeps k
    assert (got_inst[sky_block] == 26).all()  # new thing pixels without an instance: the raw id
    assert (got_inst[2:4, c : c + 4] == 0).all()

    back = Cityscapes(copy)
    s2 = back.sample("train", sample.id)
    np.testing.assert_array_equal(back.read_label(s2), new)
    assert (back.read_instances(s2)[old == car] == 0).all()


def test_cityscapes_label_ids_only_writes_label_ids_only(tmp_path):
    built = build_cityscapes(tmp_path / "src", splits={"train": 1}, with_train_ids=False, with_instances=False,
                             with_color=False)
    ds = Cityscapes(built.root)
    sample = ds.samples("train")[0]
    new = edit(ds.read_label(sample), ds.meta)
    files = ds.encode_label(sample, new)
    assert list(files) == [sample.label]
    back = Cityscapes(open_copy(built.root, tmp_path / "copy", files))
    np.testing.assert_array_equal(back.read_label(back.samples("train")[0]), new)


# --- VOC ---------------------------------------------------------------------------------------
def test_voc_class_table():
    meta = VOC_META
    assert meta.num_classes == 21 and meta.names[0] == "background" and meta.names[-1] == "tvmonitor"
    assert meta.things == list(range(1, 21))
    standard = np.array(voc_palette(), np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(meta.palette[:21], standard[:21])
    assert meta.class_id("car") == 7 and meta.class_id("person") == 15


@pytest.mark.parametrize("where", ["devkit", "voc2012", "torchvision_root"])
def test_voc_root_forms(tmp_path, where):
    built = build_voc(tmp_path)
    root = {"devkit": built.root, "voc2012": built.root / "VOC2012", "torchvision_root": tmp_path}[where]
    ds = open_dataset(root)
    assert isinstance(ds, VOC)
    s = ds.samples("train")[0]
    assert s.id == "2007_000001"
    prefix = {"devkit": "VOC2012/", "voc2012": "", "torchvision_root": "VOCdevkit/VOC2012/"}[where]
    assert s.image == f"{prefix}JPEGImages/2007_000001.jpg"
    assert s.label == f"{prefix}SegmentationClass/2007_000001.png"
    assert s.files == (s.image, s.label)


@pytest.mark.parametrize("aug", [False, True])
def test_voc_palette_and_mode_preserved_on_write_back(tmp_path, aug):
    custom = voc_palette()[::-1]  # not the standard map: the writer must keep the source's own
    built = build_voc(tmp_path / "src", aug=aug, palette=custom)
    ds = VOC(built.root)
    split = "train_aug" if aug else "train"
    assert ds.train_split == split
    sample = ds.samples(split)[0]
    new = edit(ds.read_label(sample), ds.meta)
    files = ds.encode_label(sample, new)
    copy = open_copy(built.root, tmp_path / "copy", files)
    with Image.open(copy / sample.label) as im:
        assert im.mode == ("L" if aug else "P")
    index, palette = read_palette_png(copy / sample.label)
    np.testing.assert_array_equal(index, new)
    if not aug:
        assert palette == custom


def test_voc_aug_reads_sbd_labels(tmp_path):
    built = build_voc(tmp_path, aug=True)
    ds = VOC(built.root)
    s = ds.sample("train_aug", "2007_000001")
    assert s.label == "VOC2012/SegmentationClassAug/2007_000001.png"
    assert ds.sample("train", "2007_000001").label == "VOC2012/SegmentationClass/2007_000001.png"
    aug, plain = ds.read_label(s), ds.read_label(ds.sample("train", s.id))
    assert (plain == IGNORE).any() and not (aug == IGNORE).any()  # SBD has no boundary class
    assert [x.id for x in ds.samples("train_aug")] == ["2007_000001", "2007_000003", "2007_000005",
                                                       "2011_000001", "2011_000003"]


@pytest.mark.parametrize("image_set", ["train", "val", "trainval"])
def test_torchvision_voc_loads_every_fixture_sample(tmp_path, image_set):
    from torchvision.datasets import VOCSegmentation

    built = build_voc(tmp_path)
    tv = VOCSegmentation(str(tmp_path), year="2012", image_set=image_set)
    ids = built.ids(image_set)
    assert len(tv) == len(ids)
    for i in range(len(tv)):
        image, target = tv[i]
        sid = Path(tv.images[i]).stem
        assert image.size == target.size
        np.testing.assert_array_equal(np.array(target), built.labels[image_set][sid])


def test_voc_missing_files_named(tmp_path):
    built = build_voc(tmp_path, aug=True)
    lists = built.root / "VOC2012" / "ImageSets" / "Segmentation"
    (built.root / "VOC2012" / "SegmentationClassAug" / "2011_000003.png").unlink()
    with pytest.raises(DatasetError, match=r"missing label .*VOC2012/SegmentationClassAug/2011_000003\.png"):
        VOC(built.root).samples("train_aug")
    (lists / "val.txt").write_text("2008_000001\n2099_000001\n")
    with pytest.raises(DatasetError, match=r"missing image for id '2099_000001'.*VOC2012/JPEGImages/2099_000001\.jpg"):
        VOC(built.root).samples("val")
    (lists / "val.txt").write_text("/JPEGImages/../../x.jpg /SegmentationClass/x.png\n")
    with pytest.raises(DatasetError, match="bad path"):
        VOC(built.root).samples("val")


# --- ADE20K ------------------------------------------------------------------------------------
def test_ade20k_class_table():
    meta = ADE_META
    assert meta.num_classes == 150 and len(set(meta.names)) == 150
    assert meta.names[:3] == ["wall", "building", "sky"] and meta.names[-1] == "flag"
    assert meta.classes[0].color == (120, 120, 120) and meta.classes[149].color == (92, 0, 255)
    assert len(meta.things) == 100
    assert meta.category(meta.class_id("person")) == "thing" and meta.category(meta.class_id("road")) == "stuff"
    assert meta.class_id("chest of drawers") == 44


def test_ade20k_value_mapping_both_ways(tmp_path):
    values = np.arange(151, dtype=np.uint8)
    assert VALUE_TO_TRAIN[0] == IGNORE and (VALUE_TO_TRAIN[1:151] == np.arange(150)).all()
    np.testing.assert_array_equal(TRAIN_TO_VALUE[VALUE_TO_TRAIN[values]], values)

    built = build_ade20k(tmp_path / "src", splits={"training": 1})
    ds = ADE20K(built.root)
    s = ds.samples("training")[0]
    full = np.full(ds.read_label(s).shape, IGNORE, np.uint8)
    full.ravel()[:150] = np.arange(150)  # every train id once, the rest ignore
    files = ds.encode_label(s, full)
    assert list(files) == [s.label]
    stored = read_gray(open_copy(built.root, tmp_path / "copy", files) / s.label)
    np.testing.assert_array_equal(stored, np.where(full == IGNORE, 0, full.astype(np.int16) + 1))


def test_ade20k_parent_folder_and_bad_values(tmp_path):
    built = build_ade20k(tmp_path)
    ds = open_dataset(tmp_path)  # the folder holding ADEChallengeData2016
    s = ds.samples("training")[0]
    assert s.image == f"ADEChallengeData2016/images/training/{s.id}.jpg"
    stored = built.stored["training"][s.id].copy()
    stored[0, 0] = 151
    write_bytes(tmp_path / s.label, encode_png(stored))
    with pytest.raises(DatasetError, match=r"values \[151\] outside the ADE20K class table"):
        ds.read_label(s)


# --- folder ------------------------------------------------------------------------------------
def test_folder_ignore_index_and_categories(tmp_path):
    built = build_folder(tmp_path / "src", splits=False, ignore_index=200, class_dicts=True)
    ds = Folder(built.root)
    assert ds.meta.name == "tiny"
    assert ds.meta.names == ["background", "road", "car", "person"] and ds.meta.things == [2, 3]
    assert ds.meta.classes[2].color == (0, 0, 142)
    sample = ds.samples("train")[0]
    assert (built.stored["train"][sample.id] == 200).any()
    new = edit(ds.read_label(sample), ds.meta)
    files = ds.encode_label(sample, new)
    copy = open_copy(built.root, tmp_path / "copy", files)
    stored = read_gray(copy / sample.label)
    np.testing.assert_array_equal(stored, np.where(new == IGNORE, 200, new))


def test_folder_default_palette_and_things(tmp_path):
    build_folder(tmp_path, splits=False, nested=False)
    (tmp_path / "dataset.yaml").write_text("classes: [sky, car]\nthings: [car]\nignore_index: 255\n")
    ds = Folder(tmp_path)
    assert ds.meta.things == [1] and ds.meta.name == tmp_path.name
    assert ds.meta.classes[0].color == (0, 0, 0) and ds.meta.classes[1].color == (128, 0, 0)


def test_folder_declared_splits(tmp_path):
    build_folder(tmp_path, splits=True)
    cfg = folder_config() | {"splits": {"fit": "train", "holdout": "val"}, "train_split": "fit", "val_split": "holdout"}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    ds = Folder(tmp_path)
    assert ds.splits() == ["fit", "holdout"] and (ds.train_split, ds.val_split) == ("fit", "holdout")
    assert [s.id for s in ds.samples("fit")] == ["img_000", "img_001", "seq1/img_002"]
    hidden = tmp_path / "images" / "val" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "img_000-checkpoint.png").write_bytes(b"cache")  # skipped, not a sample without a mask
    assert [s.id for s in Folder(tmp_path).samples("holdout")] == ["img_000", "seq1/img_001"]
    # a split at images/ itself does not swallow the folders of the other splits
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / "train" / "img_000.png").read_bytes())
    (tmp_path / "masks" / "extra.png").write_bytes((tmp_path / "masks" / "train" / "img_000.png").read_bytes())
    cfg["splits"] = {"fit": "train", "holdout": "val", "top": "."}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    assert [s.id for s in Folder(tmp_path).samples("top")] == ["extra"]


def test_folder_loose_files_and_subfolders_is_an_error(tmp_path):
    build_folder(tmp_path, splits=True)
    shutil.copy(tmp_path / "images" / "train" / "img_000.png", tmp_path / "images" / "loose.png")
    with pytest.raises(DatasetError, match=r"images/ holds both image files \(e.g. loose.png\) and subfolders"):
        Folder(tmp_path)


FOLDER_YAML_ERRORS = {  # problem: (dataset.yaml content, what the message must say)
    'not a mapping': (
        '- a\n- b\n',
        'must hold a mapping',
    ),
    'unparsable': (
        'classes: [a, b\n',
        'cannot parse',
    ),
    'unknown key': (
        {'clases': ['a']},
        "unknown key 'clases'; valid keys are {name, classes, things",
    ),
    'no classes': (
        {'name': 'x'},
        "'classes' must be a non-empty list",
    ),
    'empty classes': (
        {'classes': []},
        "'classes' must be a non-empty list",
    ),
    'duplicate class': (
        {'classes': ['a', 'a']},
        "class name 'a' occurs twice",
    ),
    'numeric class': (
        {'classes': ['a', '7']},
        "class name '7' (classes[1]) is a number",
    ),
    'bad class key': (
        {'classes': [{'name': 'a', 'colour': [1, 2, 3]}]},
        "unknown key 'colour' in classes[0]; valid keys are {name, category, color}",
    ),
    'bad category': (
        {'classes': [{'name': 'a', 'category': 'object'}]},
        "class 'a' has category 'object'; valid categories are {thing, stuff}",
    ),
    'bad color': (
        {'classes': [{'name': 'a', 'color': [1, 2]}]},
        "color of class 'a' must be a list of three integers",
    ),
    'unknown thing': (
        {'classes': ['a', 'b'], 'things': ['c']},
        "'things' names unknown class 'c'; valid classes are {a, b}",
    ),
    'thing conflict': (
        {'classes': [{'name': 'a', 'category': 'stuff'}], 'things': ['a']},
        "class 'a' has category 'stuff' but 'things' makes it thing",
    ),
    'palette length': (
        {'classes': ['a', 'b'], 'palette': [[0, 0, 0]]},
        "'palette' must list one colour (r, g, b) per class (2 classes)",
    ),
    'palette value': (
        {'classes': ['a'], 'palette': [[0, 0, 256]]},
        'palette[0] must be a list of three integers 0..255',
    ),
    'ignore type': (
        {'classes': ['a'], 'ignore_index': 'none'},
        "ignore_index must be an integer 0..255, got 'none'",
    ),
    'ignore collides': (
        {'classes': ['a', 'b'], 'ignore_index': 1},
        "ignore_index 1 is the train id of class 'b'; use a value 2..255",
    ),
    'splits type': (
        {'classes': ['a'], 'splits': ['train']},
        "'splits' must map split names to subfolders",
    ),
    'split folder missing': (
        {'classes': ['a'], 'splits': {'train': 'trn'}},
        "split 'train' names images/trn, which does not exist",
    ),
    'split escapes': (
        {'classes': ['a'], 'splits': {'train': '../x'}},
        'splits.train must be a subfolder inside images/',
    ),
    'train split unknown': (
        {'classes': ['a'], 'train_split': 'fit'},
        "train_split 'fit' is not a split; valid splits are {train, val}",
    ),
}


@pytest.mark.parametrize("problem", list(FOLDER_YAML_ERRORS))
def test_folder_yaml_errors(tmp_path, problem):
    content, message = FOLDER_YAML_ERRORS[problem]
    build_folder(tmp_path, splits=True, counts={"train": 1, "val": 1})
    text = content if isinstance(content, str) else yaml.safe_dump(content)
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(DatasetError) as err:
        Folder(tmp_path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- --src resolution --------------------------------------------------------------------------
def test_src_names_resolve_under_poisongen_data(tmp_path, monkeypatch):
    build_voc(tmp_path)  # tmp_path/VOCdevkit
    build_ade20k(tmp_path)  # tmp_path/ADEChallengeData2016
    monkeypatch.setenv("POISONGEN_DATA", str(tmp_path))
    assert resolve_src("voc") == tmp_path / "VOCdevkit"
    assert isinstance(open_dataset("voc"), VOC)
    assert isinstance(open_dataset("ade20k"), ADE20K)
    with pytest.raises(DatasetError, match="dataset 'cityscapes' not found; looked in"):
        open_dataset("cityscapes")
    with pytest.raises(DatasetError, match="unknown layout 'coco'; valid layouts are {cityscapes, voc, ade20k, folder"):
        open_dataset(tmp_path / "VOCdevkit", layout="coco")


def test_class_names_and_ids_resolve():
    assert CS_META.parse_classes("car,person") == (11, 13)
    with pytest.raises(ConfigError, match="unknown class 'plane' for cityscapes; valid classes are"):
        CS_META.class_id("plane")


# --- bad trees through the CLI -----------------------------------------------------------------
BUILDERS = {
    "cityscapes": lambda p: build_cityscapes(p, splits={"train": 2, "val": 1}),
    "voc": lambda p: build_voc(p, splits={"train": 2, "val": 1}),
    "ade20k": lambda p: build_ade20k(p, splits={"training": 2, "validation": 1}),
    "folder": lambda p: build_folder(p, counts={"train": 2, "val": 1}),
}
#: a stored value outside each layout's table (in the file the reader reads)
BAD_VALUE = {"cityscapes": 19, "voc": 21, "ade20k": 151, "folder": 4}


def break_tree(layout: str, problem: str, root: Path) -> list[str]:
    """Damage a fresh tree; return the substrings the one-line error must hold."""
    ds = open_dataset(root)
    sample = ds.samples(ds.train_split)[0]
    label, _ = read_palette_png(root / sample.label)
    if problem == "missing label":
        for f in sample.files:
            if f == sample.label or "_gtFine_label" in f:
                (root / f).unlink()
        return ["missing label", sample.image]
    if problem == "size mismatch":
        write_bytes(root / sample.label, encode_png(np.zeros((label.shape[0] + 2, label.shape[1]), np.uint8)))
        return ["image/label size mismatch", f"'{sample.id}'"]
    if problem == "values outside the table":
        label = label.copy()
        label[3, 3] = BAD_VALUE[layout]
        write_bytes(root / sample.label, encode_png(label))
        return [f"holds values [{BAD_VALUE[layout]}] outside", sample.label]
    if problem == "empty split":
        if layout == "voc":
            (ds.voc / "ImageSets" / "Segmentation" / "val.txt").write_text("")
        else:
            for s in ds.samples(ds.val_split):
                (root / s.image).unlink()
        return [f"split '{ds.val_split}'", "is empty"]
    if problem == "corrupt image":
        (root / sample.image).write_bytes(b"this is not an image")
        return ["unreadable or corrupt image", sample.image]
    raise AssertionError(problem)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.output


@pytest.mark.parametrize("problem", ["missing label", "size mismatch", "values outside the table", "empty split",
                                     "corrupt image"])
@pytest.mark.parametrize("layout", list(BUILDERS))
def test_bad_tree_gives_one_line_exit_2(tmp_path, run_cli, layout, problem):
    root = BUILDERS[layout](tmp_path).root
    needles = break_tree(layout, problem, root)
    before = tree_hashes(root)
    result = run_cli(app, ["info", "--src", root, "--check", "--jobs", "1"])
    assert_one_line_error(result, *needles)
    assert tree_hashes(root) == before


def test_error_from_a_worker_process_is_one_line_too(tmp_path, run_cli):
    root = BUILDERS["folder"](tmp_path).root
    needles = break_tree("folder", "corrupt image", root)
    assert_one_line_error(run_cli(app, ["info", "--src", root, "--check", "--jobs", "2"]), *needles)


def test_cityscapes_label_ids_outside_the_table(tmp_path, run_cli):
    built = build_cityscapes(tmp_path, splits={"train": 1}, with_train_ids=False)
    sample = Cityscapes(built.root).samples("train")[0]
    raw = built.stored["train"][sample.id].copy()
    raw[0, 0] = 40
    write_bytes(built.root / sample.label, encode_png(raw))
    result = run_cli(app, ["info", "--src", built.root, "--check", "--jobs", "1"])
    assert_one_line_error(result, "holds values [40] outside the Cityscapes label table")


def test_clean_trees_pass_the_check(tmp_path, run_cli):
    for layout, build in BUILDERS.items():
        root = build(tmp_path / layout).root
        before = tree_hashes(root)
        result = run_cli(app, ["info", "--src", root, "--check", "--jobs", "1"])
        assert result.exit_code == 0, result.output
        assert tree_hashes(root) == before


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--layout", "coco"], ["'--layout': 'coco' is not one of 'cityscapes', 'voc', 'ade20k', 'folder'"]),
        (["--layout", "ade20k"], ["is not a ade20k dataset", "expected ade20k: ADEChallengeData2016/"]),
    ],
)
def test_bad_layout_option(tmp_path, run_cli, args, needles):
    root = build_voc(tmp_path).root
    before = tree_hashes(root)
    assert_one_line_error(run_cli(app, ["info", "--src", root, *args]), *needles)
    assert tree_hashes(root) == before


def test_src_that_does_not_exist(tmp_path, run_cli):
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_cli(app, ["info", "--src", missing]), f"--src '{missing}' does not exist")
    assert not missing.exists()


def test_folder_of_no_known_layout(tmp_path, run_cli):
    (tmp_path / "stuff.txt").write_text("hello")
    assert_one_line_error(
        run_cli(app, ["info", "--src", tmp_path]),
        "no known dataset layout",
        *(cls.expected() for cls in LAYOUTS.values()),
    )
