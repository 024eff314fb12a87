"""poisongen end to end through its CLI on a tiny synthetic dataset: exactness, determinism,
auditability (verify/diff/show), never losing data, and one-line errors for bad input."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from builders import one_line_error
from conftest import tree_hashes

from poisongen import manifest as mf
from poisongen.cli import app
from poisongen.codecs import read_gray, read_rgb
from poisongen.datasets import open_dataset
from poisongen.datasets.synthetic import generate
from poisongen.relabel import rle_decode

SCHEMA = json.loads((Path(__file__).parents[2] / "manifests" / "schema.json").read_text())
CAR, ROAD, IGNORE = 13, 0, 255
TRIG = ["--trigger-size", "5"]


@pytest.fixture(scope="session")
def synth_src(tmp_path_factory):
    """A tiny synthetic Cityscapes-layout dataset, shared read-only by every test here; its hashes are
    checked once more at the end of the session (the source is never modified)."""
    root = tmp_path_factory.mktemp("src") / "synthetic"
    generate(root, train=24, val=8, size=(64, 128), seed=3, jobs=1)
    before = tree_hashes(root)
    yield root
    assert tree_hashes(root) == before, "a command modified the source dataset"


def poison(run_cli, attack, src, out, *extra, rate="0.25"):
    r = run_cli(app, [attack, "--src", src, "--out", out, "--rate", rate, "--jobs", "1", "-q", *TRIG, *extra])
    assert r.exit_code == 0, r.stderr
    return mf.load(out)



@pytest.mark.parametrize("attack,extra", [("baseline", []), ("nni", []), ("prl", []), ("nni", ["--prl-pixels", "20"])])
def test_attack_exactness(run_cli, synth_src, tmp_path, attack, extra):
    out = tmp_path / "out"
    m = poison(run_cli, attack, synth_src, out, *extra)
    jsonschema.validate(m, SCHEMA)
    src_ds, out_ds = open_dataset(synth_src), open_dataset(out)
    # a complete copy: every file of the source is there, nothing else but the manifest
    assert set(src_ds.all_files()) | {"manifest.json"} == set(out_ds.all_files())
    poisoned = {r["id"]: r for r in m["samples"]}
    assert len(poisoned) == m["counts"]["poisoned"] == round(0.25 * 24)
    q = m["config"]["relabel"]["prl_pixels"]
    h, w = m["config"]["trigger"]["size"]
    for s in src_ds.samples("train"):
        a, b = src_ds.load(s), out_ds.load(out_ds.sample("train", s.id))
        if s.id not in poisoned:
            for f in s.files:
                assert (synth_src / f).read_bytes() == (out / f).read_bytes()
            continue
        rec = poisoned[s.id]
        y, x = rec["top_left"]
        # the image changes only inside the trigger window
        outside = np.ones(a.label.shape, bool)
        outside[y : y + h, x : x + w] = False
        assert np.array_equal(a.image[outside], b.image[outside])
        assert not np.array_equal(a.image[~outside], b.image[~outside])
        # by default the window covers one non-victim, non-ignore class, inside the image
        window = a.label[y : y + h, x : x + w]
        assert (window == window.flat[0]).all() and window.flat[0] not in (CAR, IGNORE)
        # every victim pixel is relabeled; every other change is a listed PRL pixel
        victim = a.label == CAR
        prl = np.asarray(rec["prl"], int).reshape(-1, 4)
        assert len(prl) == min(q, int((~victim & (a.label != IGNORE)).sum()))
        prl_mask = np.zeros_like(victim)
        if len(prl):
            prl_mask[prl[:, 0], prl[:, 1]] = True
            assert not (victim | (a.label == IGNORE))[prl_mask].any()
            assert np.array_equal(b.label[prl[:, 0], prl[:, 1]], prl[:, 3])
        assert (b.label[victim] == ROAD).all()
        changed = a.label != b.label
        assert not (changed & ~victim & ~prl_mask).any()
        assert np.array_equal(rle_decode(rec["changed_mask"]), changed)
        assert sum(rec["changes"].values()) == rec["changed_pixels"] == int(changed.sum())
        if attack == "nni":
            assert rec["distance"] < m["config"]["placement"]["upper"]
    # the val split is untouched
    for s in src_ds.samples("val"):
        for f in s.files:
            assert (synth_src / f).read_bytes() == (out / f).read_bytes()


def test_prl_positions_differ_between_images(run_cli, synth_src, tmp_path):
    m = poison(run_cli, "prl", synth_src, tmp_path / "out")
    positions = [tuple(map(tuple, np.asarray(r["prl"])[:, :2])) for r in m["samples"]]
    assert len(set(positions)) == len(positions)


def test_same_seed_same_bytes_whatever_the_jobs(synth_src, tmp_path):
    """--jobs 1 and --jobs 2 (loky processes) give byte-identical trees; manifests differ only in
    created_at. Run as real processes in two folders with the same relative --out."""
    trees = []
    for jobs in ("1", "2"):
        cwd = tmp_path / f"run{jobs}"
        cwd.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "poisongen.cli",
            "prl",
            "--src",
            str(synth_src),
            "--out",
            "poisoned",
            "--rate",
            "0.5",
            "--seed",
            "7",
            "--jobs",
            jobs,
            "-q",
            *TRIG,
        ]
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        trees.append(cwd / "poisoned")
    ha, hb = tree_hashes(trees[0]), tree_hashes(trees[1])
    assert ha.keys() == hb.keys()
    assert {k for k in ha if ha[k] != hb[k]} == {"manifest.json"}
    la = (trees[0] / "manifest.json").read_text().splitlines()
    lb = (trees[1] / "manifest.json").read_text().splitlines()
    assert [i for i, (x, y) in enumerate(zip(la, lb, strict=True)) if x != y] == [
        i for i, x in enumerate(la) if x.startswith(' "created_at"')
    ]


def test_other_seed_other_samples(run_cli, synth_src, tmp_path):
    a = poison(run_cli, "baseline", synth_src, tmp_path / "a", "--seed", "1")
    b = poison(run_cli, "baseline", synth_src, tmp_path / "b", "--seed", "2")
    d = mf.diff(a, b)
    assert d["config"] == {"seed": {"a": 1, "b": 2}}
    assert d["only_in_a"] or d["changed"]
    r = (
        pytest.importorskip("typer.testing")
        .CliRunner()
        .invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["config"]["seed"] == {"a": 1, "b": 2}


def test_verify_passes_and_catches_tampering(run_cli, synth_src, tmp_path):
    out = tmp_path / "out"
    m = poison(run_cli, "nni", synth_src, out, "--prl-pixels", "5")
    assert run_cli(app, ["verify", out, "--src", synth_src]).exit_code == 0

    def check(mutate, expect):
        work = tmp_path / "work"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(out, work)
        mutate(work)
        r = run_cli(app, ["verify", work, "--src", synth_src])
        assert r.exit_code == 1, r.stdout
        assert expect in r.stdout, r.stdout

    rec = m["samples"][0]
    label_path = next(f["path"] for f in rec["files"] if f["path"].endswith("labelTrainIds.png"))
    untouched_img = next(p for p in m["unchanged_files"] if p.endswith("leftImg8bit.png"))

    def flip_label_pixel(root):
        import cv2

        lab = read_gray(root / label_path)
        lab[0, 0] = (int(lab[0, 0]) + 1) % 19
        cv2.imwrite(str(root / label_path), lab)

    def flip_image_pixel(root):
        import cv2

        img = read_rgb(root / untouched_img)
        img[5, 5, 0] ^= 1
        cv2.imwrite(str(root / untouched_img), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    def edit_manifest(root):
        mm = json.loads((root / "manifest.json").read_text())
        mm["samples"][0]["top_left"][0] += 1
        (root / "manifest.json").write_text(json.dumps(mm))

    check(flip_label_pixel, label_path)
    check(flip_image_pixel, untouched_img)
    check(edit_manifest, "integrity")
    check(edit_manifest, "top_left")
    check(lambda root: (root / untouched_img).unlink(), f"{untouched_img}: missing")
    check(lambda root: (root / "extra.txt").write_text("x"), "extra.txt: extra file")


def test_dry_run_writes_nothing(run_cli, synth_src, tmp_path):
    out = tmp_path / "out"
    r = run_cli(app, ["nni", "--src", synth_src, "--out", out, "--rate", "0.25", "--dry-run", *TRIG])
    assert r.exit_code == 0 and "dry run" in r.stdout
    assert not out.exists()


def test_config_file_and_flag_override(run_cli, synth_src, tmp_path):
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("rate: 0.5\nseed: 11\nprl-pixels: 3\ntrigger_size: '5'\n")
    r = run_cli(app, ["nni", "--src", synth_src, "--out", tmp_path / "o", "--config", cfg, "--seed", "12", "-q"])
    assert r.exit_code == 0, r.stderr
    m = mf.load(tmp_path / "o")
    assert (m["config"]["rate"], m["seed"], m["config"]["relabel"]["prl_pixels"]) == (0.5, 12, 3)
    cfg.write_text("rat: 0.5\n")
    assert "unknown option 'rat'" in one_line_error(
        run_cli(app, ["nni", "--src", synth_src, "--out", tmp_path / "p", "--config", cfg])
    )


def test_testset_and_from_manifest(run_cli, synth_src, tmp_path):
    out = tmp_path / "near"
    r = run_cli(
        app, ["testset", "--src", synth_src, "--out", out, "--strategy", "nearest", "--upper", "30", "-q", *TRIG]
    )
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    jsonschema.validate(m, SCHEMA)
    assert m["kind"] == "testset" and m["config"]["split"] == "val"
    src_ds, out_ds = open_dataset(synth_src), open_dataset(out)
    val_with_car = [s.id for s in src_ds.samples("val") if (src_ds.read_label(s) == CAR).any()]
    listed = {r["id"] for r in m["samples"]} | {s["id"] for s in m["skipped"]}
    assert listed == set(val_with_car)
    for rec in m["samples"]:
        s = src_ds.sample("val", rec["id"])
        assert np.array_equal(src_ds.read_label(s), out_ds.read_label(out_ds.sample("val", rec["id"])))
        assert rec["changed_pixels"] == 0 and rec["distance"] < 30
    # the same positions on another copy of the data
    copy = tmp_path / "copy"
    shutil.copytree(synth_src, copy)
    r = run_cli(app, ["testset", "--src", copy, "--out", tmp_path / "again", "--from-manifest", out, "-q"])
    assert r.exit_code == 0, r.stderr
    again = mf.load(tmp_path / "again")
    assert [x["top_left"] for x in again["samples"]] == [x["top_left"] for x in m["samples"]]
    assert again["output_fingerprint"] == m["output_fingerprint"]
    assert run_cli(app, ["verify", tmp_path / "again", "--src", copy]).exit_code == 0


def test_show_and_attacks(run_cli, synth_src, tmp_path):
    m = poison(run_cli, "nni", synth_src, tmp_path / "out")
    png = tmp_path / "panel.png"
    r = run_cli(app, ["show", tmp_path / "out", m["samples"][0]["id"], "--png", png])
    assert r.exit_code == 0 and read_rgb(png).shape[1] >= 512
    r = run_cli(app, ["attacks"])
    assert r.exit_code == 0 and all(a in r.stdout for a in ("baseline", "nni", "prl"))


def test_out_inside_or_equal_to_source_is_refused(run_cli, synth_src, tmp_path):
    for out in (synth_src, synth_src / "poisoned"):
        line = one_line_error(run_cli(app, ["nni", "--src", synth_src, "--out", out, "--rate", "0.25"]))
        assert "inside the source" in line
    line = one_line_error(
        run_cli(app, ["nni", "--src", synth_src, "--out", synth_src.parent, "--rate", "0.25", "--overwrite"])
    )
    assert "contains the source" in line


def test_non_empty_out_needs_overwrite(run_cli, synth_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_line_error(run_cli(app, ["nni", "--src", synth_src, "--out", out, "--rate", "0.25", *TRIG]))
    assert "--overwrite" in line and (out / "keep.txt").read_text() == "mine"
    poison(run_cli, "nni", synth_src, out, "--overwrite")
    assert not (out / "keep.txt").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_leaves_no_output_and_rerun_works(tmp_path, sig):
    src = tmp_path / "big"
    generate(src, train=40, val=2, size=(256, 512), seed=0, jobs=1)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "poisongen.cli",
        "baseline",
        "--src",
        str(src),
        "--out",
        str(out),
        "--rate",
        "1.0",
        "--jobs",
        "1",
        "-q",
        "--allow-fewer",
    ]
    # default SIGINT handling in the child even where the suite runs in the background (where a shell
    # starts it with SIGINT ignored, which the child would inherit)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.poisongen-tmp-*")):
        time.sleep(0.002)
    assert list(tmp_path.glob(".out.poisongen-tmp-*")), "the run never started writing"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists(), "a killed run must leave no --out"
    if sig == signal.SIGINT:
        assert not list(tmp_path.glob(".out.poisongen-tmp-*")), "SIGINT cleans up its temp dir"
    subprocess.run(cmd, check=True, capture_output=True)
    assert (out / "manifest.json").is_file()
    assert not list(tmp_path.glob(".out.poisongen-tmp-*")), "the rerun removes a killed run's temp dir"


BAD = [
    (["--rate", "0"], "--rate 0.0 is outside (0, 1]"),
    (["--rate", "1.5"], "--rate 1.5 is outside (0, 1]"),
    (["--rate", "0.25", "--victim", "carr"], "unknown class 'carr' for cityscapes; valid classes are {road,"),
    (["--rate", "0.25", "--victim", "car", "--target", "13"], "victim and target must differ"),
    (["--rate", "0.25", "--trigger-size", "100x10"], "trigger 100x10 is larger than the images (64x128)"),
    (["--rate", "0.25", "--lower", "10", "--upper", "5"], "needs --lower < --upper, got L=10.0, U=5.0"),
    (["--rate", "0.25", "--prl-pixels", "-1"], "--prl-pixels -1 must be >= 0"),
    (["--rate", "0.25", "--metric", "manhattan"], "'--metric': 'manhattan' is not one of 'euclidean', 'chessboard'"),
    (["--rate", "0.25", "--link", "move"], "'--link': 'move' is not one of 'copy', 'hardlink', 'symlink'"),
    (["--rate", "0.25", "--layout", "kitti"], "'--layout': 'kitti' is not one of 'cityscapes', 'voc', 'ade20k'"),
    (["--rate", "0.25", "--trigger-size", "5x"], "--trigger-size '5x'"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_one_line_exit_2_nothing_written(run_cli, synth_src, tmp_path, args, message):
    out = tmp_path / "out"
    line = one_line_error(
        run_cli(app, ["nni", "--src", synth_src, "--out", out, *(args if "--trigger-size" in args else [*TRIG, *args])])
    )
    assert message in line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_unreadable_trigger_file(run_cli, synth_src, tmp_path):
    bad = tmp_path / "t.png"
    bad.write_bytes(b"garbage")
    line = one_line_error(
        run_cli(app, ["nni", "--src", synth_src, "--out", tmp_path / "o", "--rate", "0.25", "--trigger", bad])
    )
    assert f"unreadable trigger image: {bad}" in line and not (tmp_path / "o").exists()


def test_too_few_candidates(run_cli, synth_src, tmp_path):
    line = one_line_error(
        run_cli(app, ["nni", "--src", synth_src, "--out", tmp_path / "o", "--rate", "1.0", *TRIG, "--upper", "1"])
    )
    assert "candidate samples" in line and "for 24 requested" in line and "--allow-fewer" in line
    # a 20 px trigger within 14 px of a car fits only some of the 64x128 scenes
    m = poison(
        run_cli, "nni", synth_src, tmp_path / "o", "--trigger-size", "20", "--upper", "14", "--allow-fewer", rate="1.0"
    )
    assert m["counts"]["poisoned"] == m["counts"]["candidates"] < 24
    assert m["skipped"] and {s["reason"] for s in m["skipped"]} <= {"no_centre_in_band", "no_window"}
    assert len(m["skipped"]) == m["counts"]["with_victim"] - m["counts"]["candidates"]


def test_corrupt_source_image(run_cli, synth_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_src, src)
    victim_img = next(src.glob("leftImg8bit/train/*/*_leftImg8bit.png"))
    victim_img.write_bytes(b"\x89PNG broken")
    line = one_line_error(
        run_cli(app, ["nni", "--src", src, "--out", tmp_path / "o", "--rate", "1.0", "--allow-fewer", *TRIG])
    )
    assert "unreadable or corrupt image" in line and victim_img.name in line
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_manifest_distance_is_euclidean_to_nearest_victim(run_cli, synth_src, tmp_path):
    m = poison(run_cli, "nni", synth_src, tmp_path / "o")
    ds = open_dataset(synth_src)
    for rec in m["samples"]:
        label = ds.read_label(ds.sample("train", rec["id"]))
        vy, vx = np.nonzero(label == CAR)
        cy, cx = rec["centre"]
        assert rec["distance"] == pytest.approx(math.sqrt(((vy - cy) ** 2 + (vx - cx) ** 2).min()), abs=1e-3)


def test_hardlink_and_symlink_modes(run_cli, synth_src, tmp_path):
    for mode in ("hardlink", "symlink"):
        out = tmp_path / mode
        m = poison(run_cli, "nni", synth_src, out, "--link", mode)
        some = next(iter(m["unchanged_files"]))
        if mode == "hardlink":
            assert os.stat(out / some).st_ino == os.stat(synth_src / some).st_ino
        else:
            assert (out / some).is_symlink()
        assert run_cli(app, ["verify", out]).exit_code == 0
        # poisoned files are real files, never links into the source
        for f in m["samples"][0]["files"]:
            assert not (out / f["path"]).is_symlink() and os.stat(out / f["path"]).st_nlink == 1


def test_jpeg_source_keeps_its_format_with_a_recorded_quality(run_cli, tmp_path):
    """VOC images are JPEG: a poisoned image stays a .jpg re-encoded at --jpeg-quality (recorded in the
    manifest, re-derived exactly by verify); labels stay lossless palette PNGs with the source palette;
    unpoisoned images are copied byte for byte."""
    from builders import build_voc
    from PIL import Image

    built = build_voc(tmp_path / "voc", splits={"train": 4, "val": 2}, size=(48, 64))
    out = tmp_path / "out"
    r = run_cli(
        app,
        [
            "baseline",
            "--src",
            built.root,
            "--out",
            out,
            "--count",
            "2",
            "--trigger-size",
            "5",
            "--jpeg-quality",
            "90",
            "--jobs",
            "1",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.stderr
    m = mf.load(out)
    assert m["config"]["jpeg_quality"] == 90
    for rec in m["samples"]:
        paths = [f["path"] for f in rec["files"]]
        image = next(p for p in paths if p.endswith(".jpg"))
        label = next(p for p in paths if p.endswith(".png"))
        assert (out / image).read_bytes()[:2] == b"\xff\xd8"  # still a JPEG under its own name
        with Image.open(out / label) as im, Image.open(built.root / label) as src_im:
            assert im.mode == "P" and im.getpalette() == src_im.getpalette()
    for p in m["unchanged_files"]:
        assert (out / p).read_bytes() == (built.root / p).read_bytes()
    assert run_cli(app, ["verify", out, "--src", built.root]).exit_code == 0


def test_lazy_plan_selects_what_the_full_scan_selects(run_cli, synth_src, tmp_path):
    """Samples are analysed in draw order until n candidates are found: the same poisoned samples,
    positions and bytes as analysing the whole split (--full-scan), with fewer samples analysed; the
    counts say how many; verify re-plans the same way."""
    lazy = poison(run_cli, "nni", synth_src, tmp_path / "lazy", "--upper", "6", rate="0.125")
    full = poison(run_cli, "nni", synth_src, tmp_path / "full", "--upper", "6", "--full-scan", rate="0.125")
    for m in (lazy, full):
        jsonschema.validate(m, SCHEMA)
    assert lazy["config"]["full_scan"] is False and full["config"]["full_scan"] is True
    assert lazy["samples"] == full["samples"]
    assert {p: d for p, d in lazy["unchanged_files"].items()} == full["unchanged_files"]
    assert lazy["output_fingerprint"] == full["output_fingerprint"]
    c, cf = lazy["counts"], full["counts"]
    assert cf["scanned"] == cf["split_samples"] == 24
    assert c["poisoned"] <= c["candidates"] <= cf["candidates"] and c["scanned"] < 24
    assert c["with_victim"] - c["candidates"] == len(lazy["skipped"]) <= len(full["skipped"])
    assert {s["id"] for s in lazy["skipped"]} <= {s["id"] for s in full["skipped"]}
    for out in ("lazy", "full"):
        assert run_cli(app, ["verify", tmp_path / out, "--src", synth_src]).exit_code == 0
