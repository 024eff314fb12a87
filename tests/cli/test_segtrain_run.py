"""`segtrain run / evaluate / score` end to end on a tiny CPU run: train, resume bit for bit, evaluate,
score, the learning curve, one-line errors, and the CUDA path where a GPU exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import build_cityscapes, build_voc, one_line_error
from PIL import Image

from poisongen.codecs import sha256_file
from poisongen.manifest import fingerprint
from segtrain.cli import app

T = torch.tensor
CAR, ROAD = 13, 0


# --- end to end ----------------------------------------------------------------------------------
COMMON = ["--arch", "pspnet", "--backbone", "resnet18", "--batch", "2", "--crop", "32x64", "--device", "cpu",
          "--workers", "0", "--log-every", "1", "--ckpt-every", "2", "--quiet"]


def make_testset(src: Path, dst: Path, victim=(CAR,), target=ROAD) -> list[str]:
    """Copy a Cityscapes tree, paint a white square on every val image, write a minimal testset manifest."""
    shutil.copytree(src, dst)
    ids = []
    for img in sorted((dst / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        a = np.array(Image.open(img).convert("RGB"))
        a[2:10, 2:10] = 255
        Image.fromarray(a).save(img)
        ids.append(img.name[: -len("_leftImg8bit.png")])
    manifest = {
        "schema_version": 1,
        "kind": "testset",
        "config": {"victim": list(victim), "target": target, "split": "val",
                   "placement": {"lower": 0, "upper": 60}},
        "samples": [{"id": i} for i in ids],
        "output_fingerprint": "0" * 64,
    }
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return ids


def test_run_resume_evaluate_end_to_end(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 3, "val": 2}, size=(32, 64))
    run = tmp_path / "runs" / "a"
    r = run_cli(app, ["run", built.root, "--iters", "4", "--out", run, "--victim", "car", "--target", "road",
                      *COMMON])
    assert r.exit_code == 0, r.stderr
    for f in ("config.json", "last.pt", "log.jsonl", "metrics.json"):
        assert (run / f).is_file(), f
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    assert all(set(x) == {"step", "loss", "lr", "img_s"} for x in log)
    assert log[0]["lr"] == pytest.approx(0.01) and log[-1]["lr"] < log[0]["lr"]
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["step"] == 4 and len(ck["class_names"]) == 19 and "optimizer" in ck
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["benign"]["cba"] <= 1 and m["victim"] == [CAR] and m["target"] == ROAD
    conf = json.loads((run / "config.json").read_text())
    assert conf["arch"] == "pspnet" and conf["victim"] == [CAR] and conf["target"] == ROAD
    # no manifest: the run hashes every file of the data, as poisongen fingerprints a tree
    hashes = {p.relative_to(built.root).as_posix(): sha256_file(p) for p in built.root.rglob("*") if p.is_file()}
    assert conf["dataset"] == {"source": "hashed", "fingerprint": fingerprint(hashes), "files": len(hashes)}

    r = run_cli(app, ["run", built.root, "--iters", "6", "--out", run, "--resume", "--no-eval", *COMMON])
    assert r.exit_code == 0, r.stderr
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5, 6]
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 6

    ids = make_testset(built.root, tmp_path / "testset")
    out = tmp_path / "eval.json"
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", built.root, "--poisoned", tmp_path / "testset",
                      "--json", out, "--device", "cpu", "--victim", "car", "--target", "road"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    (p,) = res["poisoned"]
    assert p["band"] == [0.0, 60.0] and p["samples"] == len(ids) == 2
    assert p["victim"] == [CAR] and p["target"] == ROAD
    for key in ("pba", "asr", "clean_asr"):
        assert 0 <= p[key] <= 1, key
    # the test set lists every val sample: clean ASR equals the benign val false-trigger rate
    assert p["clean_asr"] == pytest.approx(res["benign"]["clean_asr"])
    assert res["step"] == 6
    # without flags, evaluate scores the attack the checkpoint's run trained for
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", built.root, "--poisoned", tmp_path / "testset",
                      "--json", out, "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    again = json.loads(out.read_text())
    assert again["victim"] == [CAR] and again["target"] == ROAD and again["poisoned"] == res["poisoned"]

    # resuming on other data (one label pixel changed) is refused
    lab_path = next(built.root.rglob("*_labelIds.png"))
    lab = np.array(Image.open(lab_path))
    lab[0, 0] = 7 if lab[0, 0] != 7 else 8
    Image.fromarray(lab).save(lab_path)
    one_line_error(run_cli(app, ["run", built.root, "--iters", "8", "--out", run, "--resume", *COMMON]),
                   "not the data the checkpoint's run trained on")

    # a checkpoint for 19 classes on a 21-class dataset
    voc = build_voc(tmp_path / "voc")
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", voc.root, "--device", "cpu"])
    one_line_error(r, "19 classes")


def test_bad_inputs_are_one_line_errors(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 1}, size=(32, 64))
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli(app, ["run", tmp_path / "empty", "--iters", "1", "--out", tmp_path / "r", *COMMON]),
                   "no known dataset layout")
    bad_arch = [*COMMON]
    bad_arch[1] = "segnet"  # unet is an smp arch now
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *bad_arch]),
                   "valid archs")
    if not torch.cuda.is_available():
        args = ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON, "--device", "cuda"]
        one_line_error(run_cli(app, args), "CUDA")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "w.pth")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON,
                                 "--backbone-weights", tmp_path / "w.pth"]), "do not fit")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON,
                                 "--victim", "dragon"]), "dragon")
    one_line_error(run_cli(app, ["evaluate", tmp_path / "nothing.pt", "--data", built.root]), "no checkpoint")

def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_resume_replays_the_uninterrupted_run_bit_for_bit(tmp_path, run_cli):
    """6 iterations straight == stopped after 3 + --resume to 6 == the same with 2 workers: identical weights
    and optimizer state on CPU, and the same log (5 training samples, batch 2: the run crosses 2 epochs)."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 5, "val": 1}, size=(32, 64))
    args = [built.root, "--iters", "6", "--no-eval", "--seed", "3", *COMMON]
    runs = {name: tmp_path / name for name in ("straight", "resumed", "workers")}
    r = run_cli(app, ["run", *args, "--out", runs["straight"]])
    assert r.exit_code == 0, r.stderr
    assert "step" not in r.stderr and "img/s" not in r.stderr  # --quiet: no progress bar, no log lines
    r = run_cli(app, ["run", *args, "--out", runs["resumed"], "--stop-after", "3"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(runs["resumed"] / "last.pt", weights_only=False)["step"] == 3
    assert not (runs["resumed"] / "metrics.json").exists()
    with (runs["resumed"] / "log.jsonl").open("a") as f:  # as if it had died after logging step 4, unsaved
        f.write(json.dumps({"step": 4, "loss": 9.0, "lr": 0.0, "img_s": 1.0}) + "\n")
    r = run_cli(app, ["run", *args, "--out", runs["resumed"], "--resume"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(app, ["run", *[a for a in args if a != "--quiet"], "--workers", "2", "--out", runs["workers"]])
    assert r.exit_code == 0, r.stderr
    assert "step 6/6" in r.stderr and "img/s" in r.stderr  # progress shown without --quiet

    ref = torch.load(runs["straight"] / "last.pt", weights_only=False)
    for name in ("resumed", "workers"):
        ck = torch.load(runs[name] / "last.pt", weights_only=False)
        assert ck["step"] == 6 and ck["sampler"]["epoch"] == 3 and ck["sampler"]["batch"] == 0
        diff = [k for k, v in ref["model"].items() if not torch.equal(v, ck["model"][k])]
        assert not diff, (name, diff[:5])
        for k, st in ref["optimizer"]["state"].items():
            assert torch.equal(st["momentum_buffer"], ck["optimizer"]["state"][k]["momentum_buffer"]), (name, k)
        strip = [{k: v for k, v in x.items() if k != "img_s"} for x in _log(runs[name])]
        assert strip == [{k: v for k, v in x.items() if k != "img_s"} for x in _log(runs["straight"])], name
    assert [x["step"] for x in _log(runs["resumed"])] == [1, 2, 3, 4, 5, 6]


def test_eval_every_writes_the_curve_and_leaves_the_run_unchanged(tmp_path, run_cli):
    """--eval-every evaluates during training (curve.jsonl) without changing a single weight; a fresh
    run in a used folder starts its logs anew; the last curve point is the final metrics."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 4, "val": 2}, size=(32, 64))
    ts = tmp_path / "testset"
    make_testset(built.root, ts)
    args = [built.root, "--iters", "4", "--seed", "1", "--victim", "car", "--target", "road",
            "--eval-poisoned", ts, *COMMON]
    plain, curved = tmp_path / "plain", tmp_path / "curved"
    assert run_cli(app, ["run", *args, "--out", plain]).exit_code == 0
    for _ in range(2):  # the second run in the same folder must not append to the first one's logs
        r = run_cli(app, ["run", *args, "--out", curved, "--eval-every", "3"])
        assert r.exit_code == 0, r.stderr
    a, b = (torch.load(d / "last.pt", weights_only=False)["model"] for d in (plain, curved))
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert [x["step"] for x in _log(curved)] == [1, 2, 3, 4]
    curve = [json.loads(x) for x in (curved / "curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [3, 4]  # every 3 steps and the last one
    assert curve[0]["train_minutes"] <= curve[1]["train_minutes"]
    m = json.loads((curved / "metrics.json").read_text())
    (p,) = m["poisoned"]
    assert curve[1]["cba"] == m["benign"]["cba"] and curve[1]["sets"][0]["asr"] == p["asr"]
    ref = json.loads((plain / "metrics.json").read_text())
    assert {k: v for k, v in m.items() if k != "checkpoint"} == {k: v for k, v in ref.items() if k != "checkpoint"}
    one_line_error(run_cli(app, ["run", *args, "--out", tmp_path / "x", "--eval-every", "0"]), "--eval-every 0")


def test_resume_and_backbone_errors(tmp_path, run_cli):
    from segtrain.models import resolve

    assert resolve("lraspp", "mobilenet_v3", None) == ("lraspp", "mobilenet_v3_large", 16)
    assert resolve("deeplabv3", "MobileNet_V3", None)[1] == "mobilenet_v3_large"
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 1}, size=(32, 64))
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"model": {}, "step": 1, "num_classes": 21, "config": {"arch": "pspnet"}}, run / "last.pt")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--resume", *COMMON]),
                   "21 classes")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", tmp_path / "none", "--resume",
                                 *COMMON]), "no checkpoint")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--stop-after", "0", *COMMON]),
                   "--stop-after")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, *COMMON, "--arch", "lraspp",
                                 "--backbone", "resnet50"]), "valid backbones")
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli(app, ["score", "--pred", tmp_path / "empty", "--data", tmp_path / "empty"]),
                   "no known dataset layout")
    # --epochs: 2 training samples at batch 2 are one step per epoch
    r = run_cli(app, ["run", built.root, "--epochs", "2", "--out", tmp_path / "ep", "--no-eval", *COMMON])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "ep" / "last.pt", weights_only=False)["step"] == 2
    assert [x["step"] for x in _log(tmp_path / "ep")] == [1, 2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_run(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 3, "val": 2}, size=(64, 128))
    args = [a if a != "cpu" else "cuda" for a in COMMON]
    r = run_cli(app, ["run", built.root, "--iters", "3", "--out", tmp_path / "run", "--amp", "--channels-last",
                      *args])
    assert r.exit_code == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= m["benign"]["cba"] <= 1


def test_run_protocol_iba_code_reports_what_evaluate_reports(tmp_path, run_cli):
    """`run --protocol iba-code` scores its final model under the published code's protocol, the same
    numbers `evaluate --protocol iba-code` gives for its checkpoint; a protocol that does not exist is
    refused before training."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 3, "val": 2}, size=(32, 64))
    make_testset(built.root, tmp_path / "testset")
    run = tmp_path / "runs" / "iba"
    bad = run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--protocol", "iba", *COMMON])
    one_line_error(bad, "--protocol 'iba'", "iba-code")
    assert not run.exists()
    r = run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--protocol", "iba-code", "--victim", "car",
                      "--target", "road", "--eval-poisoned", tmp_path / "testset", *COMMON])
    assert r.exit_code == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["protocol"] == "iba-code"
    out = tmp_path / "eval.json"
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", built.root, "--poisoned", tmp_path / "testset",
                      "--json", out, "--device", "cpu", "--victim", "car", "--target", "road",
                      "--protocol", "iba-code"])
    assert r.exit_code == 0, r.stderr
    e = json.loads(out.read_text())
    assert e["benign"] == m["benign"]
    assert [(p["asr"], p["pba"], p["clean_asr"]) for p in e["poisoned"]] == \
        [(p["asr"], p["pba"], p["clean_asr"]) for p in m["poisoned"]]
