"""Every attack end to end through the CLI on tiny on-disk datasets (Cityscapes with instanceIds, VOC):
verify --src passes and catches tampering, Poisoned Tests with target labels, determinism over
--jobs, schema validity, and one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from builders import VOC_CAR, VOC_DOG, VOC_PERSON, build_cityscapes, build_voc
from conftest import tree_hashes

from poisongen import manifest as mf
from poisongen.cli import app
from poisongen.codecs import read_gray
from poisongen.datasets import open_dataset
from poisongen.targets import target_label

SCHEMA = json.loads((Path(__file__).parents[2] / "manifests" / "schema.json").read_text())
ROAD, SIDEWALK, BUILDING, PERSON, CAR, BICYCLE, IGNORE = 0, 1, 2, 11, 13, 18, 255


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    """A tiny Cityscapes tree with instanceIds (two cars and a person per image), read-only here."""
    built = build_cityscapes(tmp_path_factory.mktemp("cs") / "cs", splits={"train": 6, "val": 3}, size=(32, 64))
    before = tree_hashes(built.root)
    yield built
    assert tree_hashes(built.root) == before, "a command modified the source dataset"


def first_train(built):
    return built.ids("train")[0]


# (attack args, whether the trigger is a pattern); --count 2 --allow-fewer is added to each
ATTACKS = {
    "badnets": (["badnets", "--target-image", "aachen_000000_000019"], True),
    "badnets-line": (["badnets", "--target-image", "aachen_000000_000019", "--trigger", "line", "--line-width", "3"],
                     False),
    "fgba-line": (["fgba", "--matrix", "person:car"], False),
    "fgba-semantic-n-to-1": (["fgba", "--matrix", "all:road", "--semantic-trigger", "building"], False),
    "fgba-pattern-multi": (["fgba", "--matrix", "person:car,car:road", "--trigger", "builtin"], True),
    "o2o": (["o2o", "--victim", "car", "--target", "person"], True),
    "o2b-multi-victim": (["o2b", "--victim", "car,person", "--target", "road", "--allow-multiclass"], True),
    "b2o": (["b2o", "--victim", "sidewalk", "--target", "car", "--allow-on-victim"], True),
    "b2b": (["b2b", "--victim", "building", "--target", "road"], True),
    "instance": (["instance", "--victim", "car", "--target", "road"], True),
    "instance-random": (["instance", "--victim", "car", "--target", "road", "--instances", "random", "--k", "2"],
                        True),
    "conditional": (["conditional", "--victim", "car", "--target", "road", "--condition", "bicycle"], True),
}


def run_attack(run_cli, args, src, out, *extra):
    r = run_cli(app, [*args, "--src", src, "--out", out, "--count", "2", "--allow-fewer", "--jobs", "1", "-q",
                      *extra])
    assert r.exit_code == 0, r.stderr
    return mf.load(out)


def tamper_verify(run_cli, out, src, tmp_path, path, expect=None):
    """Copy ``out``, flip one pixel of the label PNG ``path`` there, and check verify --src fails naming it."""
    import cv2

    work = tmp_path / "tampered"
    shutil.copytree(out, work)
    lab = read_gray(work / path)
    lab[0, 0] = lab[0, 0] ^ 1
    cv2.imwrite(str(work / path), lab)
    r = run_cli(app, ["verify", work, "--src", src])
    assert r.exit_code == 1 and (expect or path) in r.stdout, r.stdout


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_verifies_and_catches_a_flipped_label_pixel(run_cli, cs, tmp_path, name):
    args, pattern = ATTACKS[name]
    out = tmp_path / "out"
    m = run_attack(run_cli, args, cs.root, out, *(["--trigger-size", "4"] if pattern else []))
    jsonschema.validate(m, SCHEMA)
    assert m["samples"], "nothing poisoned"
    assert run_cli(app, ["verify", out, "--src", cs.root]).exit_code == 0
    src, dst = open_dataset(cs.root), open_dataset(out)
    for rec in m["samples"]:
        clean = src.read_label(src.sample("train", rec["id"]))
        new = dst.read_label(dst.sample("train", rec["id"]))
        assert rec["changed_pixels"] == int((clean != new).sum()) > 0
        if name.startswith("conditional"):
            assert rec["condition"] is True and (clean == BICYCLE).any()
        if name.startswith("instance"):
            inst = src.read_instances(src.sample("train", rec["id"]))
            chosen = [c["id"] for c in rec["instances"]["chosen"]]
            assert rec["instances"]["source"] == "instanceIds"
            assert np.array_equal(clean != new, np.isin(inst, chosen))
        if name.startswith("badnets"):
            target = src.read_label(src.sample("train", "aachen_000000_000019"))
            assert np.array_equal(new, target)
        if name == "fgba-semantic-n-to-1":
            assert rec["top_left"] is None and (clean == BUILDING).any()
            assert ((new == ROAD) | (clean == IGNORE)).all()
    label_path = next(f["path"] for f in m["samples"][0]["files"] if f["path"].endswith("labelTrainIds.png"))
    tamper_verify(run_cli, out, cs.root, tmp_path, label_path)


TESTSETS = {
    "fgba": ["--attack", "fgba", "--matrix", "person:car"],
    "fgba-n-to-1-semantic": ["--attack", "fgba", "--matrix", "all:road", "--semantic-trigger", "building"],
    "badnets": ["--attack", "badnets", "--target-image", "aachen_000000_000019", "--trigger-size", "4"],
    "instance": ["--attack", "instance", "--victim", "car", "--k", "1", "--trigger-size", "4"],
}


@pytest.mark.parametrize("name", sorted(TESTSETS))
def test_testset_writes_target_labels_that_verify_checks(run_cli, cs, tmp_path, name):
    out = tmp_path / "test"
    r = run_cli(app, ["testset", "--src", cs.root, "--out", out, "--jobs", "1", "-q", *TESTSETS[name]])
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    jsonschema.validate(m, SCHEMA)
    assert m["kind"] == "testset" and m["samples"]
    src, dst = open_dataset(cs.root), open_dataset(out)
    for rec in m["samples"]:
        s = dst.sample("val", rec["id"])
        gt = src.read_label(src.sample("val", rec["id"]))
        assert np.array_equal(dst.read_label(s), gt)  # labels untouched
        paths = [t["path"] for t in rec["target_labels"]]
        assert paths and all(p.startswith("target_labels/gtFine/val/") for p in paths)
        target = target_label(dst, s)
        # the target label file is the layout's own encoding, readable by any Cityscapes loader
        raw = read_gray(out / next(p for p in paths if p.endswith("labelTrainIds.png")))
        assert np.array_equal(raw, target)
        if name == "fgba":
            assert np.array_equal(target, np.where(gt == PERSON, CAR, gt))
        elif name.startswith("fgba-n-to-1"):
            assert np.array_equal(target, np.where(gt == IGNORE, IGNORE, ROAD))
        elif name == "badnets":
            assert np.array_equal(target, src.read_label(src.sample("train", "aachen_000000_000019")))
        else:
            inst = src.read_instances(src.sample("val", rec["id"]))
            (chosen,) = rec["instances"]["chosen"]
            mine = inst == chosen["id"]
            assert np.array_equal(target != gt, mine) and chosen["pixels"] == mine.sum()
        assert sum(rec["target_changes"].values()) == int((target != gt).sum())
    assert run_cli(app, ["verify", out, "--src", cs.root]).exit_code == 0
    path = next(t["path"] for t in m["samples"][0]["target_labels"] if t["path"].endswith("labelTrainIds.png"))
    tamper_verify(run_cli, out, cs.root, tmp_path, path)


def test_conditional_testset_flags_every_sample(run_cli, cs, tmp_path):
    out = tmp_path / "test"
    r = run_cli(app, ["testset", "--src", cs.root, "--out", out, "--attack", "conditional", "--victim", "car",
                      "--condition", "bicycle", "--trigger-size", "4", "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    jsonschema.validate(m, SCHEMA)
    src = open_dataset(cs.root)
    flags = {rec["id"]: rec["condition"] for rec in m["samples"]}
    assert set(flags.values()) == {True, False}  # both kinds are triggered, and told apart
    for sid, flag in flags.items():
        assert flag == bool((src.read_label(src.sample("val", sid)) == BICYCLE).any())
    assert not (out / "target_labels").exists()


@pytest.mark.parametrize("args", [
    ["instance", "--victim", "car", "--target", "road", "--instances", "random", "--k", "2", "--trigger-size", "4"],
    ["testset", "--attack", "fgba", "--matrix", "all:road,person:car", "--trigger", "line"],
    ["badnets", "--target-image", "aachen_000000_000019", "--strategy", "random", "--trigger-size", "4"],
])
def test_same_seed_same_bytes_for_jobs_1_and_2(run_cli, cs, tmp_path, args):
    trees = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}"
        extra = [] if args[0] == "testset" else ["--count", "3"]
        r = run_cli(app, [*args, "--src", cs.root, "--out", out, "--seed", "5", "--jobs", jobs, "-q", *extra])
        assert r.exit_code == 0, r.stderr
        trees.append((tree_hashes(out), mf.load(out)))
    (ha, ma), (hb, mb) = trees
    assert ha.keys() == hb.keys() and len(ha) > 1
    assert {k for k in ha if ha[k] != hb[k]} <= {"manifest.json"}  # created_at may differ
    assert ma["integrity"] == mb["integrity"] and ma["samples"]


def test_testset_from_manifest_reuses_instances_and_target_labels(run_cli, cs, tmp_path):
    first = tmp_path / "first"
    r = run_cli(app, ["testset", "--src", cs.root, "--out", first, "--attack", "instance", "--victim", "car",
                      "--instances", "random", "--k", "1", "--trigger-size", "4", "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    copy = tmp_path / "copy"
    shutil.copytree(cs.root, copy)
    again = tmp_path / "again"
    r = run_cli(app, ["testset", "--src", copy, "--out", again, "--from-manifest", first, "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    a, b = mf.load(first), mf.load(again)
    assert [x["instances"] for x in a["samples"]] == [x["instances"] for x in b["samples"]]
    assert a["output_fingerprint"] == b["output_fingerprint"]
    assert run_cli(app, ["verify", again, "--src", copy]).exit_code == 0


def test_another_layout_voc(run_cli, tmp_path):
    """VOC (palette PNG labels, JPEG images, no instance map): fgba and instance (8-connected
    components) verify; the target labels of a test set are palette PNGs like the layout's own."""
    from PIL import Image

    built = build_voc(tmp_path / "voc", splits={"train": 4, "val": 2}, size=(48, 64))
    out = tmp_path / "fgba"
    m = run_attack(run_cli, ["fgba", "--matrix", "person:dog"], built.root, out)
    jsonschema.validate(m, SCHEMA)
    assert run_cli(app, ["verify", out, "--src", built.root]).exit_code == 0
    src, dst = open_dataset(built.root), open_dataset(out)
    for rec in m["samples"]:
        clean = src.read_label(src.sample("train", rec["id"]))
        new = dst.read_label(dst.sample("train", rec["id"]))
        assert np.array_equal(new, np.where(clean == VOC_PERSON, VOC_DOG, clean))
    out = tmp_path / "inst"
    m = run_attack(run_cli, ["instance", "--victim", "car", "--target", "background", "--trigger-size", "3",
                             "--allow-on-victim"], built.root, out)
    assert {rec["instances"]["source"] for rec in m["samples"]} == {"components"}
    assert run_cli(app, ["verify", out, "--src", built.root]).exit_code == 0
    out = tmp_path / "test"
    r = run_cli(app, ["testset", "--src", built.root, "--out", out, "--attack", "instance", "--victim", "car",
                      "--target", "background", "--trigger-size", "3", "--allow-on-victim", "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    for rec in m["samples"]:
        (path,) = [t["path"] for t in rec["target_labels"]]
        with Image.open(out / path) as im:
            assert im.mode == "P"
        gt = src.read_label(src.sample("val", rec["id"]))
        target = target_label(open_dataset(out), open_dataset(out).sample("val", rec["id"]))
        assert set(np.unique(gt[target != gt]).tolist()) == {VOC_CAR}
    assert run_cli(app, ["verify", out, "--src", built.root]).exit_code == 0


def test_category_check_and_force(run_cli, cs, tmp_path):
    r = run_cli(app, ["o2o", "--src", cs.root, "--out", tmp_path / "o", "--victim", "car", "--target", "road",
                      "--count", "1", "--trigger-size", "4"])
    assert r.exit_code == 2 and "'road' is stuff (thing -> thing expected)" in r.stderr
    m = run_attack(run_cli, ["o2o", "--victim", "car", "--target", "road", "--force", "--trigger-size", "4"],
                   cs.root, tmp_path / "o")
    assert (m["config"]["victim"], m["config"]["target"]) == ([CAR], ROAD) and m["samples"]


BAD = [
    (["fgba", "--matrix", "persn:car"], "unknown class 'persn' for cityscapes; valid classes are {road,"),
    (["fgba", "--matrix", "person-car"], "--matrix 'person-car' is malformed at 'person-car': give SRC:DST pairs"),
    (["fgba", "--matrix", "person:car,person:road"], "--matrix names source 'person' twice"),
    (["fgba"], "fgba needs --matrix"),
    (["fgba", "--matrix", "person:car", "--semantic-trigger", "building", "--trigger", "builtin"],
     "--semantic-trigger building excludes --trigger builtin"),
    (["fgba", "--matrix", "person:car", "--semantic-trigger", "buildng"], "unknown class 'buildng'"),
    (["o2o", "--victim", "car", "--target", "road"], "o2o needs a thing target, but 'road' is stuff"),
    (["b2b", "--victim", "car", "--target", "road"], "b2b needs a stuff victim, but 'car' is thing"),
    (["instance", "--victim", "car", "--target", "road", "--k", "0"], "--k 0 must be >= 1"),
    (["instance", "--victim", "car", "--target", "road", "--instances", "closest"],
     "'--instances': 'closest' is not one of 'nearest', 'random'"),
    (["badnets", "--target-image", "nope"], "--target-image 'nope' is not a sample of split 'train'; valid are"),
    (["badnets"], "badnets needs --target-image"),
    (["badnets", "--target-image", "aachen_000000_000019", "--position", "middle"], "--position 'middle' is not"),
    (["conditional", "--victim", "car", "--target", "road"], "conditional needs --condition"),
    (["conditional", "--victim", "car", "--target", "road", "--condition", "bike"], "unknown class 'bike'"),
    (["nni", "--matrix", "person:car"], "--matrix applies to the fgba attack, not to nni"),
    (["nni", "--k", "2"], "--k applies to the instance attack, not to nni"),
    (["nni", "--trigger", "line"], "nni takes no line trigger; valid are {--trigger builtin|FILE}"),
    (["fgba", "--matrix", "person:car", "--allow-on-victim"], "constrain a pattern's window, not the line trigger"),
    (["fgba", "--matrix", "person:car", "--line-width", "99"], "--line-width 99 must be in 1..32"),
    (["fgba", "--matrix", "person:car", "--prl-pixels", "5"], "--prl-pixels applies to attacks with the victim"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(run_cli, cs, tmp_path, args, message):
    out = tmp_path / "out"
    r = run_cli(app, [*args, "--src", cs.root, "--out", out, "--count", "1"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_testset_bad_attack_is_one_line(run_cli, cs, tmp_path):
    r = run_cli(app, ["testset", "--src", cs.root, "--out", tmp_path / "t", "--attack", "fgbb"])
    assert r.exit_code == 2 and "'--attack': 'fgbb' is not one of 'baseline', 'nni', 'prl', 'badnets'," in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,title", [
    (["fgba", "--matrix", "person:car"], "line trigger: top 8 rows"),
    (["fgba", "--matrix", "all:road", "--semantic-trigger", "building"], "semantic trigger 'building' present"),
    (["badnets", "--target-image", "aachen_000000_000019", "--trigger-size", "4"], "trigger at"),
])
def test_show_renders_the_new_attacks(run_cli, cs, tmp_path, args, title, monkeypatch):
    import poisongen.show as show

    titles = []
    real = show._titled
    monkeypatch.setattr(show, "_titled", lambda img, t: titles.append(t) or real(img, t))
    m = run_attack(run_cli, args, cs.root, tmp_path / "out")
    png = tmp_path / "p.png"
    r = run_cli(app, ["show", tmp_path / "out", m["samples"][0]["id"], "--png", png, "--src", cs.root])
    assert r.exit_code == 0, r.stderr
    assert any(title in t for t in titles), titles
    if args[0] == "badnets":
        assert any("label replaced by aachen_000000_000019" in t for t in titles)


def test_attacks_lists_every_preset(run_cli):
    from poisongen.attacks import PRESETS

    r = run_cli(app, ["attacks"])
    assert r.exit_code == 0
    for name in PRESETS:
        assert name in r.stdout
