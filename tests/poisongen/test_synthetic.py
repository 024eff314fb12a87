"""The built-in synthetic street scenes: determinism, valid Cityscapes files that agree with each
other, readers (ours and torchvision's), safe writing and the ``synth`` command."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_hashes

from poisongen.cli import app
from poisongen.codecs import read_gray, read_unchanged
from poisongen.datasets import open_dataset
from poisongen.datasets import synthetic as syn
from poisongen.datasets.cityscapes import ID_HAS_INSTANCES, ID_TO_TRAIN, LABELS, Cityscapes, colorize
from poisongen.errors import ConfigError

SIZE = (64, 128)
CAR = 13
RAW_IDS = {lb.id for lb in LABELS if lb.id >= 0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny generated set, shared read-only by the tests of this module."""
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    summary = syn.generate(root, train=10, val=3, size=SIZE, seed=1, jobs=1)
    return root, summary


def gt(root: Path, sample, kind: str) -> Path:
    return root / Path(sample.label).parent / f"{sample.id}_gtFine_{kind}.png"


def test_layout_names_and_manifest(synth):
    root, summary = synth
    assert summary["layout"] == "synthetic (cityscapes layout)"
    assert summary["splits"] == {"train": 10, "val": 3}
    assert summary["sizes"] == {"train": ["64x128"], "val": ["64x128"]}
    ds = open_dataset(root)
    assert isinstance(ds, Cityscapes)
    ids = [s.id for s in ds.samples("train")]
    assert "synthtown_000000_000019" in ids and "gridville_000000_000019" in ids
    assert {s.id.split("_")[0] for s in ds.samples("val")} == {"valcity"}
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["seed"] == 1 and meta["train"] == 10 and meta["val"] == 3 and meta["size"] == [64, 128]
    assert meta["version"] == syn.VERSION
    # no staging folder left beside the output
    assert [p.name for p in root.parent.iterdir()] == ["synthetic"]


def test_label_files_agree(synth):
    root, _ = synth
    ds = open_dataset(root)
    for split in ("train", "val"):
        for s in ds.samples(split):
            raw = read_gray(gt(root, s, "labelIds"))
            assert raw.dtype == np.uint8 and set(np.unique(raw).tolist()) <= RAW_IDS
            train = read_gray(gt(root, s, "labelTrainIds"))
            assert np.array_equal(train, ID_TO_TRAIN[raw])
            assert np.array_equal(read_unchanged(gt(root, s, "color")), colorize(raw))
            inst = read_gray(gt(root, s, "instanceIds"))
            assert inst.dtype == np.uint16
            things = inst >= 1000
            assert np.array_equal(inst[things] // 1000, raw[things])
            assert ID_HAS_INSTANCES[raw[things]].all()
            assert np.array_equal(inst[~things], raw[~things])  # stuff carries its raw id
            assert not ID_HAS_INSTANCES[raw[~things]].any()  # every thing pixel belongs to an instance
            loaded = ds.load(s, instances=True)
            assert loaded.image.shape == SIZE + (3,) and loaded.label.shape == SIZE
            assert np.array_equal(loaded.label, train)


def test_scene_content(synth):
    root, _ = synth
    ds = open_dataset(root)
    labels = [ds.read_label(s) for s in ds.samples("train")]
    with_car = sum(int((lab == CAR).sum() >= 20) for lab in labels)
    assert with_car >= 0.8 * len(labels)  # the default victim class is nearly always there
    pixels = np.concatenate([lab.ravel() for lab in labels])
    share = np.bincount(pixels, minlength=256) / pixels.size
    assert share[0] > 0.15  # road: a large class
    assert 0.02 < share[CAR] < 0.2
    assert (share[:19] > 0).sum() >= 10  # many classes, not a toy two-class scene


def test_render_scene_is_a_pure_function():
    def render(size):
        return syn.render_scene(np.random.default_rng(np.random.SeedSequence([0, 0, 0])), size)

    rgb, raw, inst = render((128, 256))
    assert rgb.shape == (128, 256, 3) and rgb.dtype == np.uint8
    assert raw.shape == inst.shape == (128, 256) and raw.dtype == np.uint8 and inst.dtype == np.uint16
    for a, b in zip((rgb, raw, inst), render((128, 256)), strict=True):
        assert np.array_equal(a, b)
    _, raw_odd, _ = syn.render_scene(np.random.default_rng(7), (37, 91))  # odd sizes work too
    assert raw_odd.shape == (37, 91)


@pytest.mark.parametrize("seed", [3, 4])
def test_every_shape_agrees_pixel_for_pixel(seed):
    """Each object and each plane, drawn alone on an empty canvas, changes exactly the same pixels
    in the image as in the label (no anti-aliasing, no shape drawn in one and not the other)."""
    rng = np.random.default_rng(seed)
    cam = syn.Camera(128, 256, f=280.0, cx=128.0, hz=56.0, hc=1.4)
    light = syn.Light(np.array([0.36, 0.8, 0.48]), 0.6, 0.5, np.array([190, 200, 210], np.float32), 400.0, True)
    st = syn._plan_street(rng)
    drawers = [lambda cv, side=side: syn._side_facade(cv, side.sign, side.facade, st.zmax, side.segs, 0.9)
               for side in st.sides]
    drawers += [lambda cv, obj=obj: syn._DRAW[type(obj)](cv, obj) for _, obj in syn._plan_objects(rng, cam, st)]
    drawn = 0
    for draw in drawers:
        cv = syn.Canvas(cam, light)
        draw(cv)
        # every colour is > 0 (haze is added to all of them) and cast shadows darken a black image
        # to black: so the image is non-zero exactly where something was drawn
        assert np.array_equal(cv.img.max(2) > 0, cv.ids > 0)
        drawn += int((cv.ids > 0).any())
    assert drawn > 10


def test_deterministic_whatever_jobs(tmp_path):
    kw = dict(train=4, val=2, size=SIZE, seed=5)
    syn.generate(tmp_path / "a", jobs=1, **kw)
    syn.generate(tmp_path / "b", jobs=2, **kw)
    syn.generate(tmp_path / "c", jobs=1, **{**kw, "seed": 6})
    a, b, c = (tree_hashes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.startswith("leftImg8bit/")]
    assert len(images) == 6 and all(a[k] != c[k] for k in images)


def test_torchvision_loads_every_sample(synth):
    tv = pytest.importorskip("torchvision.datasets")
    root, _ = synth
    ds = tv.Cityscapes(str(root), split="train", mode="fine", target_type=["semantic", "instance"])
    assert len(ds) == 10
    for i in range(len(ds)):
        image, (semantic, instance) = ds[i]
        assert image.size == (SIZE[1], SIZE[0])
        assert np.asarray(semantic).shape == SIZE and np.asarray(instance).shape == SIZE
        assert np.asarray(semantic).max() <= 33


def test_refuses_non_empty_out(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree_hashes(out)
    with pytest.raises(ConfigError, match="not empty"):
        syn.generate(out, train=2, val=1, size=SIZE)
    assert tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    syn.generate(out, train=2, val=1, size=SIZE, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "synthetic.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    calls = []

    def broken(rng, size):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(rng, size)

    real = syn.render_scene
    monkeypatch.setattr(syn, "render_scene", broken)
    with pytest.raises(RuntimeError, match="boom"):
        syn.generate(out, train=4, val=1, size=SIZE, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # temp folder removed
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # old output kept


def test_generate_default_notes_and_uses_defaults(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(syn, "generate", lambda out, **kw: seen.update(out=out, **kw) or {})
    root = syn.generate_default(tmp_path / "synthetic")
    assert root == tmp_path / "synthetic" and seen["out"] == root
    assert set(seen) <= {"out", "jobs"}  # sizes, counts and seed are the documented defaults
    err = capsys.readouterr().err
    assert "generating" in err and str(root) in err and "poisongen synth" in err and len(err.splitlines()) == 1
    assert re.search(r"first use of --src synthetic: generating 500 .* about \d+ s on \d+ core", err), err


def test_cli_synth(run_cli, tmp_path):
    out = tmp_path / "cli"
    r = run_cli(app, ["synth", "--out", out, "--train", "3", "--val", "2", "--size", "64x128", "--jobs", "1"])
    assert r.exit_code == 0, r.stderr
    assert "synthetic (cityscapes layout)" in r.stdout and "car" in r.stdout and "64x128" in r.stdout
    assert len(list((out / "leftImg8bit" / "train").rglob("*.png"))) == 3
    assert len(list((out / "gtFine" / "val").rglob("*_gtFine_instanceIds.png"))) == 2
    r = run_cli(app, ["synth", "--out", out, "--train", "3", "--val", "2", "--size", "64x128", "--jobs", "1"])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert os.listdir(tmp_path) == ["cli"]


def test_no_validation_split(tmp_path):
    summary = syn.generate(tmp_path / "d", train=1, val=0, size=SIZE)
    assert summary["splits"] == {"train": 1}
    assert not (tmp_path / "d" / "leftImg8bit" / "val").exists()
