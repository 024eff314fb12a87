"""Every bad input a hostile user (or a broken file) gives poisongen, with the one line it must answer:
exit 2, one line on stderr, no traceback, nothing written. ``{src}`` is a tiny synthetic dataset,
``{out}`` a fresh output folder, ``{m}`` a folder of prepared files (a valid output ``good``, broken
manifests, trigger and key files, a PNG). A message is one fragment, or a tuple of fragments the line must
all hold (choice errors: the option, the bad value and a valid one, whoever words the message)."""

import json
import os

import cv2
import numpy as np
import pytest
from builders import one_line_error
from conftest import tree_hashes

from poisongen.cli import app

ATTACK = ["--trigger-size", "5", "--jobs", "1", "-q"]


def attack(name, *args):
    size = ATTACK if name != "fgba" else ATTACK[2:]  # fgba's default line trigger takes no size
    return [name, "--src", "{src}", "--out", "{out}", *size, *args]


def case_id(argv):
    return " ".join(a for a in argv if a not in ("{src}", "{out}", "--src", "--out", *ATTACK))


CASES = [
    # rates and counts
    (attack("nni", "--rate", "-0.1"), "--rate -0.1 is outside (0, 1]"),
    (attack("nni", "--rate", "0"), "--rate 0.0 is outside (0, 1]"),
    (attack("nni", "--rate", "1.5"), "--rate 1.5 is outside (0, 1]"),
    (attack("nni", "--count", "0"), "--count 0 must be >= 1"),
    (attack("nni", "--count", "-3"), "--count -3 must be >= 1"),
    (attack("nni", "--rate", "abc"), "Invalid value for '--rate'"),
    (attack("nni"), "give --rate R (in (0, 1]) or --count N"),
    (["nni", "--src", "{src}", "--rate", "0.25"], "give --out FOLDER (or --dry-run)"),
    (attack("nni", "--rate", "1.0", "--upper", "1"), "for 24 requested"),
    # classes
    (attack("nni", "--rate", "0.25", "--victim", "carr"),
      "unknown class 'carr' for cityscapes; valid classes are {road,"),
    (attack("nni", "--rate", "0.25", "--target", "nope"), "unknown class 'nope'"),
    (attack("nni", "--rate", "0.25", "--victim", "car", "--target", "car"), "victim and target must differ"),
    (attack("conditional", "--rate", "0.25", "--condition", "nope"), "unknown class 'nope'"),
    (attack("fgba", "--rate", "0.25", "--semantic-trigger", "nope"), "unknown class 'nope'"),
    (attack("o2o", "--rate", "0.25", "--victim", "road", "--target", "sky"), "pass --force to run it anyway"),
    (attack("badnets", "--rate", "0.25", "--target-image", "nope"), "--target-image 'nope' is not a sample"),
    # options that do not exist or take a value
    (attack("nni", "--rate", "0.25", "--bogus", "1"), "No such option: --bogus"),
    (attack("nni", "--rate", "0.25", "--metric"), "requires an argument"),
    (["nosuch", "--src", "{src}"], "No such command 'nosuch'"),
    (attack("nni", "--rate", "0.25", "--metric", "manhattan"),
      ("--metric", "'manhattan'", "chessboard")),
    (attack("nni", "--rate", "0.25", "--strategy", "sideways"),
      ("strategy", "'sideways'", "nearest")),
    (attack("nni", "--rate", "0.25", "--link", "move"), ("--link", "'move'", "hardlink")),
    (attack("nni", "--rate", "0.25", "--layout", "kitti"), ("layout", "'kitti'", "cityscapes")),
    (attack("nni", "--rate", "0.25", "--layout", "voc"), "is not a voc dataset"),
    (attack("instance", "--rate", "0.25", "--instances", "some"),
      ("instances", "'some'", "random")),
    (attack("nni", "--rate", "0.25", "--config", "{m}/nofile.yaml"), "--config file not found"),
    # source and output folders
    (["nni", "--src", "/nonexistent/ds", "--out", "{out}", "--rate", "0.25"], "--src '/nonexistent/ds' does not exist"),
    (["nni", "--src", "{src}", "--out", "{src}/inside", "--rate", "0.25"], "is inside the source dataset"),
    (["nni", "--src", "{src}", "--out", "{src}", "--rate", "0.25"], "is inside the source dataset"),
    (["info", "--src", "/nonexistent/ds"], "does not exist"),
    # trigger, placement, band
    (attack("nni", "--rate", "0.25", "--trigger-size", "0"),
      "--trigger-size '0' must be H or HxW with positive integers"),
    (attack("nni", "--rate", "0.25", "--trigger-size", "5x"), "--trigger-size '5x'"),
    (attack("nni", "--rate", "0.25", "--trigger-size", "100x10"), "is larger than the images (64x128)"),
    (attack("nni", "--rate", "0.25", "--alpha", "0"), "--alpha 0.0 is outside (0, 1]"),
    (attack("nni", "--rate", "0.25", "--alpha", "1.5"), "--alpha 1.5 is outside (0, 1]"),
    (attack("nni", "--rate", "0.25", "--trigger", "{m}/empty.png"), "is empty (give a PNG/JPEG/BMP file)"),
    (attack("nni", "--rate", "0.25", "--trigger", "{m}/clear.png"), "is fully transparent (alpha 0 everywhere)"),
    (attack("nni", "--rate", "0.25", "--trigger", "{m}/garbage.png"), "unreadable trigger image"),
    (attack("nni", "--rate", "0.25", "--trigger", "{m}/faint.png", "--alpha", "0.4"),
     "trigger at --alpha 0.4 changes no pixel"),
    (attack("nni", "--rate", "0.25", "--alpha", "0.001"), "trigger at --alpha 0.001 changes no pixel"),
    (attack("fgba", "--rate", "0.25", "--matrix", "person:car", "--alpha", "0.001"),
     "the line trigger at --alpha 0.001 changes no pixel"),
    (attack("nni", "--rate", "0.25", "--trigger", "{m}/missing.png"), "trigger file not found"),
    (attack("nni", "--rate", "0.25", "--strategy", "fixed", "--position", "a,b"),
      "--position 'a,b' is not corner, top or 'y,x'"),
    (attack("nni", "--rate", "0.25", "--strategy", "fixed", "--position", "1,2,3"), "--position '1,2,3'"),
    (attack("nni", "--rate", "0.25", "--lower", "-5"), "--lower -5.0 must be >= 0"),
    (attack("nni", "--rate", "0.25", "--lower", "10", "--upper", "5"), "needs --lower < --upper"),
    (attack("nni", "--rate", "0.25", "--edge-margin", "-1"), "--edge-margin -1 must be >= 0"),
    (attack("nni", "--rate", "0.25", "--min-victim-pixels", "-1"), "--min-victim-pixels -1 must be >= 1"),
    (attack("nni", "--rate", "0.25", "--prl-pixels", "-1"), "--prl-pixels -1 must be >= 0"),
    (attack("nni", "--rate", "0.25", "--trigger", "line"), "nni takes no line trigger"),
    (attack("instance", "--rate", "0.25", "--k", "0"), "--k 0 must be >= 1"),
    (attack("fgba", "--rate", "0.25", "--matrix", "person"), "--matrix 'person' is malformed"),
    (attack("fgba", "--rate", "0.25", "--matrix", ":"), "--matrix ':' is malformed"),
    (attack("fgba", "--rate", "0.25", "--matrix", "person:nope"), "unknown class 'nope'"),
    (attack("nni", "--rate", "0.25", "--jpeg-quality", "0"), "--jpeg-quality 0 is outside 1..100"),
    (attack("nni", "--rate", "0.25", "--jpeg-quality", "101"), "--jpeg-quality 101 is outside 1..100"),
    (attack("nni", "--rate", "0.25", "--scale", "0"), "--scale 0.0 is outside (0, 4]"),
    (attack("nni", "--rate", "0.25", "--scale", "5"), "--scale 5.0 is outside (0, 4]"),
    (["scale", "--src", "{src}", "--out", "{out}", "--scale", "0.5", "--link", "move"],
     ("--link", "'move'", "hardlink")),
    (["synth", "--out", "{out}", "--train", "0"], "--train must be >= 1"),
    # signing keys
    (attack("nni", "--rate", "0.25", "--sign", "{m}/empty.key"), "is empty; make a key with"),
    (attack("nni", "--rate", "0.25", "--sign", "{m}/short.key"), "holds 5 bytes; an HMAC-SHA256 key needs at least 32"),
    (attack("nni", "--rate", "0.25", "--sign", "{m}/nokey"), "--sign key file not found"),
    (["verify", "{m}/good", "--key", "{m}/short.key"], "--key key file"),
    (["testset", "--src", "{src}", "--out", "{out}", "--key", "{m}/good.key"], "give --from-manifest too"),
    # manifests that are not manifests, for verify, diff, show and testset --from-manifest
    (["verify", "{m}/list"], "is not a manifest: it holds a JSON list, not an object"),
    (["verify", "{m}/nan"], "holds NaN, which is not valid JSON"),
    (["verify", "{m}/missing"], "is malformed: key 'samples' is missing"),
    (["verify", "{m}/wrongtype"], "is malformed: 'samples[0].files' is a string, expected a list"),
    (["verify", "{m}/badhash"], "is malformed: 'unchanged_files."),
    (["verify", "{m}/schema2"], "has schema_version 2; this poisongen reads 1"),
    (["verify", "{m}/nothere"], "no manifest at"),
    (["diff", "{m}/good", "{m}/clear.png"], "is not a manifest (not UTF-8 text)"),
    (["diff", "{m}/good", "{m}/empty.png"], "is not valid JSON"),
    (["diff", "{m}/list", "{m}/good"], "is not a manifest"),
    (["diff", "{m}/good", "{m}/missing"], "key 'samples' is missing"),
    (["show", "{m}/good", "{first}", "--png", "{m}"], "is a directory; give a file name"),
    (["show", "{m}/good", "nope", "--png", "{out}.png"], "sample 'nope' is not poisoned"),
    (["show", "{m}/good", "{first}", "--png", "{out}.jpg"], "must end in .png"),
    (["show", "{m}/wrongtype", "{first}", "--png", "{out}.png"], "is malformed"),
    (["testset", "--src", "{src}", "--out", "{out}", "--from-manifest", "{m}/nan"], "holds NaN"),
    (["testset", "--src", "{src}", "--out", "{out}", "--from-manifest", "{m}/list"], "is not a manifest"),
    (["testset", "--src", "{src}", "--out", "{out}", "--from-manifest", "{m}/good"],
      "does not match its integrity hash"),
    (["testset", "--src", "{src}", "--out", "{out}", "--from-manifest", "{m}/resealed"], "is a 'train' manifest"),
    (["testset", "--src", "{src}", "--out", "{out}", "--from-manifest", "{m}/badconfig"], "has a malformed config"),
]


@pytest.fixture(scope="module")
def material(tiny_synth, tmp_path_factory):
    """Prepared inputs: ``good`` (a valid nni output whose manifest was then edited without resealing,
    for testset's refusal), and broken copies of its manifest, trigger files and key files."""
    from typer.testing import CliRunner

    m = tmp_path_factory.mktemp("material")
    good = m / "good"
    r = CliRunner().invoke(app, ["nni", "--src", str(tiny_synth), "--out", str(good), "--rate", "0.25", *ATTACK])
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((good / "manifest.json").read_text())
    text = (good / "manifest.json").read_text()

    def broken(name, value):
        (m / name).mkdir()
        (m / name / "manifest.json").write_text(value if isinstance(value, str) else json.dumps(value))

    broken("list", "[1, 2]")
    broken("nan", text.replace('"seed": 0', '"seed": NaN', 1))
    broken("missing", {k: v for k, v in manifest.items() if k != "samples"})
    broken("wrongtype", {**manifest, "samples": [{**manifest["samples"][0], "files": "x"}]})
    broken("badhash", {**manifest, "unchanged_files": {**manifest["unchanged_files"], "a.png": 7}})
    broken("schema2", {**manifest, "schema_version": 2})
    from poisongen import manifest as mf

    broken("resealed", mf.seal(dict(manifest)))
    badconfig = {**manifest, "config": {"kind": "testset", "split": "val"}, "kind": "testset"}
    broken("badconfig", mf.seal(badconfig))
    edited = dict(manifest, seed=manifest["seed"] + 1)  # not resealed
    (good / "manifest.json").write_text(json.dumps(edited))
    (m / "empty.png").write_bytes(b"")
    (m / "garbage.png").write_bytes(b"not an image")
    cv2.imwrite(str(m / "clear.png"), np.zeros((8, 8, 4), np.uint8))
    faint = np.full((8, 8, 4), 255, np.uint8)
    faint[..., 3] = 1  # alpha 1/255: at --alpha 0.4 no pixel can change
    cv2.imwrite(str(m / "faint.png"), faint)
    (m / "empty.key").write_bytes(b"")
    (m / "short.key").write_bytes(b"12345\n")
    (m / "good.key").write_bytes(os.urandom(32))
    return m, manifest["samples"][0]["id"]


def test_the_table_is_long_enough():
    assert len(CASES) >= 40
    assert len({tuple(a) for a, _ in CASES}) == len(CASES), "each case once"


@pytest.mark.parametrize("argv,message", CASES, ids=[case_id(a) for a, _ in CASES])
def test_bad_input(run_cli, tiny_synth, material, tmp_path, argv, message):
    m, first = material
    out = tmp_path / "out"
    before = tree_hashes(m)
    args = [a.format(src=tiny_synth, out=out, m=m, first=first) for a in argv]
    line = one_line_error(run_cli(app, args))
    for needle in (message,) if isinstance(message, str) else message:
        assert needle in line, line
    assert list(tmp_path.iterdir()) == [], "nothing written (no --out, temp copy, lock or panel)"
    assert tree_hashes(m) == before
    assert not list(tiny_synth.parent.glob(".*poisongen*"))


def test_the_table_covers_every_command():
    used = {a[0] for a, _ in CASES}
    assert used >= {"nni", "fgba", "badnets", "instance", "conditional", "o2o", "testset", "verify", "diff", "show",
                    "scale", "synth", "info"}

