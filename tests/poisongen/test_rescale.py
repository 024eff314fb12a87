"""--scale and `poisongen scale`: the whole dataset rescaled, every split and every file, in its own
layout; labels nearest only; polygons and VOC boxes scaled; verify re-derives every byte."""

import json
import math
import shutil
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from builders import build_ade20k, build_cityscapes, build_folder, build_voc, one_line_error, voc_palette
from conftest import tree_hashes
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from poisongen import manifest as mf
from poisongen.cli import app
from poisongen.codecs import encode_palette_png, write_bytes
from poisongen.datasets import open_dataset
from poisongen.datasets.synthetic import generate
from poisongen.rescale import nearest_indices, resize_nearest

SCHEMA = json.loads((Path(__file__).parents[2] / "manifests" / "schema.json").read_text())
VOC_XML = """<annotation>
\t<folder>VOC2012</folder>
\t<filename>{sid}.jpg</filename>
\t<size>
\t\t<width>{w}</width>
\t\t<height>{h}</height>
\t\t<depth>3</depth>
\t</size>
\t<object>
\t\t<name>person</name>
\t\t<bndbox>
\t\t\t<xmin>1</xmin>
\t\t\t<ymin>3</ymin>
\t\t\t<xmax>{w}</xmax>
\t\t\t<ymax>20</ymax>
\t\t</bndbox>
\t\t<part>
\t\t\t<name>head</name>
\t\t\t<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>9</xmax><ymax>10</ymax></bndbox>
\t\t</part>
\t</object>
</annotation>
"""


def build(layout: str, root: Path, size=(48, 64)) -> Path:
    """A tiny dataset of ``layout`` with, besides its samples, the files a real download has:
    VOC Annotations XML and SegmentationObject PNGs, text files everywhere."""
    if layout == "cityscapes":
        src = build_cityscapes(root, size=(size[0] // 2 * 2, size[1])).root
        (src / "license.txt").write_text("the Cityscapes license\n")
    elif layout == "voc":
        src = build_voc(root, size=size, aug=True).root
        voc = src / "VOC2012"
        for jpg in sorted((voc / "JPEGImages").glob("*.jpg")):
            xml = VOC_XML.format(sid=jpg.stem, w=size[1], h=size[0])
            write_bytes(voc / "Annotations" / f"{jpg.stem}.xml", xml.encode())
            obj = np.zeros(size, np.uint8)
            obj[4:20, 3:30], obj[20:22, 3:30] = 1, 255
            write_bytes(voc / "SegmentationObject" / f"{jpg.stem}.png", encode_palette_png(obj, voc_palette()))
    elif layout == "ade20k":
        src = build_ade20k(root, size=size).root
        (src / "sceneCategories.txt").write_text("ADE_train_00000001 street\n")
    else:
        src = build_folder(root, size=size).root
    return src


def scale_cli(run_cli, src, out, scale, *extra):
    return run_cli(app, ["scale", "--src", src, "--out", out, "--scale", scale, "-j", "1", "-q", *extra])



def read_any(path: Path):
    """(array, PIL mode, palette) of a PNG/JPEG as stored."""
    with Image.open(path) as im:
        return np.array(im), im.mode, im.getpalette() if im.mode == "P" else None


@pytest.mark.parametrize("layout", ["cityscapes", "voc", "ade20k", "folder"])
@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_scale_writes_every_file_rescaled(run_cli, tmp_path, layout, scale):
    src = build(layout, tmp_path / "src")
    before = tree_hashes(src)
    out = tmp_path / "out"
    r = scale_cli(run_cli, src, out, str(scale))
    assert r.exit_code == 0, r.stderr
    assert tree_hashes(src) == before, "the source was modified"
    m = mf.load(out)
    jsonschema.validate(m, SCHEMA)
    assert m["kind"] == "scale" and m["config"]["scale"] == scale
    assert set(tree_hashes(out)) == set(before) | {"manifest.json"}
    rescaled = 0
    for rel in before:
        a, b = src / rel, out / rel
        if rel.endswith((".txt", ".yaml")):
            assert a.read_bytes() == b.read_bytes(), rel
            continue
        if rel.endswith(".json"):  # Cityscapes polygons
            da, db = json.loads(a.read_text()), json.loads(b.read_text())
            h, w = da["imgHeight"], da["imgWidth"]
            assert (db["imgHeight"], db["imgWidth"]) == (round(h * scale), round(w * scale))
            for oa, ob in zip(da["objects"], db["objects"], strict=True):
                for (xa, ya), (xb, yb) in zip(oa["polygon"], ob["polygon"], strict=True):
                    assert abs(xb - ((xa + 0.5) * scale - 0.5)) <= 0.5 and abs(yb - ((ya + 0.5) * scale - 0.5)) <= 0.5
            rescaled += 1
            continue
        if rel.endswith(".xml"):
            ra, rb = ET.parse(a).getroot(), ET.parse(b).getroot()
            w, h = int(ra.findtext("size/width")), int(ra.findtext("size/height"))
            nw, nh = int(rb.findtext("size/width")), int(rb.findtext("size/height"))
            assert (nh, nw) == (round(h * scale), round(w * scale))
            for ba, bb in zip(ra.iter("bndbox"), rb.iter("bndbox"), strict=True):
                for k, n, nn in (("xmin", w, nw), ("xmax", w, nw), ("ymin", h, nh), ("ymax", h, nh)):
                    va, vb = int(ba.findtext(k)), int(bb.findtext(k))
                    edge = va - 1 if k.endswith("min") else va
                    assert abs((vb - 1 if k.endswith("min") else vb) - edge * nn / n) <= 0.5
                    assert 1 <= vb <= nn
            assert rb.findtext("object/name") == "person"
            rescaled += 1
            continue
        arr_a, mode_a, pal_a = read_any(a)
        arr_b, mode_b, pal_b = read_any(b)
        h, w = arr_a.shape[:2]
        assert arr_b.shape[:2] == (round(h * scale), round(w * scale)), rel
        assert arr_b.dtype == arr_a.dtype and mode_b == mode_a and pal_b == pal_a, rel
        assert arr_b.shape[2:] == arr_a.shape[2:], rel
        is_label = not any(k in rel for k in ("leftImg8bit", "JPEGImages", "images/"))
        if is_label:
            # nearest only: the exact centre-aligned pick of the source, so no invented value
            expect = arr_a[nearest_indices(h, arr_b.shape[0])[:, None], nearest_indices(w, arr_b.shape[1])[None, :]]
            assert np.array_equal(arr_b, expect), rel
            values_a = set(map(tuple, arr_a.reshape(h * w, -1).tolist()))
            assert set(map(tuple, arr_b.reshape(arr_b.shape[0] * arr_b.shape[1], -1).tolist())) <= values_a
        rescaled += 1
    assert m["counts"]["rewritten"] == rescaled
    # the rescaled copy reads as the same layout, with labels and images of one size per sample
    ds = open_dataset(out)
    for split in ds.splits():
        for s in ds.samples(split):
            ds.load(s)
    assert run_cli(app, ["verify", out, "--src", src]).exit_code == 0


def test_cityscapes_instance_ids_stay_16_bit(run_cli, tmp_path):
    src = build("cityscapes", tmp_path / "src")
    out = tmp_path / "out"
    assert scale_cli(run_cli, src, out, "0.5").exit_code == 0
    for p in out.glob("gtFine/*/*/*_instanceIds.png"):
        arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert arr.dtype == np.uint16 and (arr >= 1000).any()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 90), st.integers(1, 90))
def test_resize_nearest_picks_the_centre_aligned_source_pixel(h, w, nh, nw):
    """Exact rule ``floor((j + 0.5) * n_src / n_dst)`` (PIL's NEAREST, without its float rounding at
    exact ties): only source values, and the whole source when enlarging."""
    rng = np.random.default_rng(h * 1000 + w)
    arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    out = resize_nearest(arr, (nh, nw))
    ys = [math.floor(Fraction(2 * j + 1, 2) * h / nh) for j in range(nh)]
    xs = [math.floor(Fraction(2 * j + 1, 2) * w / nw) for j in range(nw)]
    assert np.array_equal(out, arr[np.ix_(ys, xs)])
    if nh >= h and nw >= w:
        assert set(np.unique(out)) == set(np.unique(arr))
    pil = np.array(Image.fromarray(arr).resize((nw, nh), Image.Resampling.NEAREST))
    assert (pil != out).mean() <= 0.5  # the same rule up to PIL's float ties


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "synthetic"
    generate(root, train=12, val=4, size=(64, 128), seed=5, jobs=1)
    return root


def test_attack_with_scale_is_the_scaled_clean_set_plus_poison(run_cli, synth, tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert scale_cli(run_cli, synth, clean, "0.5").exit_code == 0
    r = run_cli(app, ["nni", "--src", synth, "--out", out, "--scale", "0.5", "--rate", "0.25", "-j", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    m, mc = mf.load(out), mf.load(clean)
    jsonschema.validate(m, SCHEMA)
    # paper defaults at the scaled size: 55 px and U=60 at height 512 -> 32 px high images
    assert m["config"]["scale"] == 0.5 and m["config"]["trigger"]["size"] == [3, 3]
    assert m["config"]["placement"]["upper"] == pytest.approx(60 * 32 / 512)
    assert m["rescaled"]["fingerprint"] == mc["output_fingerprint"]
    assert m["source_fingerprint"] == mc["source_fingerprint"]
    poisoned = {f["path"]: f for r in m["samples"] for f in r["files"]}
    assert len(m["samples"]) == 3 and poisoned
    hc, ho = tree_hashes(clean), tree_hashes(out)
    assert set(hc) == set(ho)
    differ = {p for p in hc if hc[p] != ho[p]} - {"manifest.json"}
    assert differ == set(poisoned)
    for p, f in poisoned.items():
        assert f["source_sha256"] == hc[p]  # the poisoning started from the scaled clean file
    for s in open_dataset(out).samples("train"):
        assert open_dataset(out).read_label(s).shape == (32, 64)
    assert run_cli(app, ["verify", out, "--src", synth]).exit_code == 0
    png = tmp_path / "panel.png"
    assert run_cli(app, ["show", out, m["samples"][0]["id"], "--png", png]).exit_code == 0 and png.is_file()

    def mismatch(work, src):
        r = run_cli(app, ["verify", work, "--src", src])
        assert r.exit_code == 1
        return r.stdout

    # a rescaled, unpoisoned file changed in the output
    work = tmp_path / "work"
    shutil.copytree(out, work)
    some = next(p for p in m["unchanged_files"] if p.endswith("_labelTrainIds.png"))
    lab = cv2.imread(str(work / some), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = (int(lab[0, 0]) + 1) % 19
    cv2.imwrite(str(work / some), lab)
    assert some in mismatch(work, synth)
    # a source that is not the one the output was made from
    other = tmp_path / "other"
    shutil.copytree(synth, other)
    img = next(other.glob("leftImg8bit/val/*/*.png"))
    arr = cv2.imread(str(img))
    arr[0, 0, 0] ^= 1
    cv2.imwrite(str(img), arr)
    assert "source files differ" in mismatch(out, other)
    # a scale command's output checked against the wrong source
    assert "source files differ" in mismatch(clean, other)


@pytest.mark.parametrize("attack", [["fgba", "--matrix", "person:car"], ["instance"]])
def test_testset_with_target_labels_and_scale_verifies(run_cli, synth, tmp_path, attack):
    """A --scale Poisoned Test writes its target labels (new files, not in the source) at the scaled size;
    verify --src re-derives them and catches a changed target-label pixel."""
    out = tmp_path / "t"
    r = run_cli(app, ["testset", "--attack", *attack, "--src", synth, "--out", out, "--scale", "0.5", "-j", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    jsonschema.validate(m, SCHEMA)
    targets = [f["path"] for rec in m["samples"] for f in rec["target_labels"]]
    assert targets and all((out / p).is_file() for p in targets)
    train_ids = next(out / p for p in targets if p.endswith("_labelTrainIds.png"))
    assert cv2.imread(str(train_ids), cv2.IMREAD_UNCHANGED).shape == (32, 64)
    assert run_cli(app, ["verify", out, "--src", synth]).exit_code == 0
    lab = cv2.imread(str(train_ids), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = (int(lab[0, 0]) + 1) % 19
    cv2.imwrite(str(train_ids), lab)
    r = run_cli(app, ["verify", out, "--src", synth])
    assert r.exit_code == 1 and train_ids.relative_to(out).as_posix() in r.stdout


def test_scale_same_bytes_for_1_and_2_jobs(run_cli, synth, tmp_path):
    trees = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}"
        args = ["prl", "--src", synth, "--out", out, "--scale", "0.75", "--rate", "0.5", "-j", jobs, "-q"]
        assert run_cli(app, args).exit_code == 0
        trees.append(tree_hashes(out))
    assert trees[0].keys() == trees[1].keys()
    assert {p for p in trees[0] if trees[0][p] != trees[1][p]} <= {"manifest.json"}  # created_at at most
    a, b = (mf.load(tmp_path / f"j{j}") for j in "12")
    assert a["integrity"] == b["integrity"]


def test_dry_run_with_scale_plans_at_the_scaled_size(run_cli, synth, tmp_path):
    out = tmp_path / "out"
    r = run_cli(app, ["nni", "--src", synth, "--out", out, "--scale", "0.5", "--rate", "0.25", "--dry-run"])
    assert r.exit_code == 0 and "dry run" in r.stdout
    assert not out.exists()


@pytest.mark.parametrize(
    "value,message",
    [
        ("0", "--scale 0.0 is outside (0, 4]"),
        ("-0.5", "--scale -0.5 is outside (0, 4]"),
        ("4.5", "--scale 4.5 is outside (0, 4]"),
        ("nan", "--scale nan is outside (0, 4]"),
        ("0.001", "--scale 0.001 shrinks the images of split"),
    ],
)
@pytest.mark.parametrize("command", ["scale", "nni"])
def test_bad_scale_one_line_exit_2_nothing_written(run_cli, synth, tmp_path, value, message, command):
    out = tmp_path / "out"
    args = [command, "--src", synth, "--out", out, "--scale", value, "-q"]
    line = one_line_error(run_cli(app, args + (["--rate", "0.25"] if command == "nni" else [])))
    assert message in line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_unknown_image_file_is_refused_not_guessed(run_cli, tmp_path):
    src = build("cityscapes", tmp_path / "src")
    write_bytes(src / "disparity" / "train" / "x_disparity.png", cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1])
    line = one_line_error(scale_cli(run_cli, src, tmp_path / "out", "0.5"))
    assert "disparity/train/x_disparity.png" in line and "--scale cannot tell" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
