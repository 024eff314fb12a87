"""segtrain evaluate / score on the command line: saved predictions reproduce evaluate exactly, score
counts what evaluate counts, benign data is checked against the test set, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from builders import build_cityscapes, one_line_error
from PIL import Image

from poisongen.cli import app as poisongen_app
from poisongen.manifest import load
from segtrain.cli import app

COMMON = ["--arch", "pspnet", "--backbone", "resnet18", "--batch", "2", "--crop", "32x64", "--device", "cpu",
          "--workers", "0", "--quiet"]
CAR, ROAD = 13, 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step PSPNet run on a tiny Cityscapes tree, a nearest-band and an all:road test set."""
    from typer.testing import CliRunner

    tmp = tmp_path_factory.mktemp("st")
    run = CliRunner().invoke
    built = build_cityscapes(tmp / "cs", splits={"train": 2, "val": 3}, size=(32, 64))
    r = run(app, [str(x) for x in ["run", built.root, "--iters", "2", "--out", tmp / "run", "--victim", "car",
                                   "--target", "road", "--no-eval", *COMMON]], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    for name, args in (("near", ["--strategy", "nearest", "--trigger-size", "4"]),
                       ("n21", ["--attack", "fgba", "--matrix", "all:road"])):
        r = run(poisongen_app, [str(x) for x in ["testset", "--src", built.root, "--out", tmp / name, "--jobs", "1",
                                                 "-q", *args]], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
    return tmp, built


def test_score_on_saved_predictions_reproduces_evaluate(trained, run_cli, tmp_path):
    """Defect 3: every metric of 'score --pred DIR' on 'evaluate --save-predictions DIR' equals evaluate's."""
    tmp, built = trained
    for protocol in ("paper", "iba-code"):
        pred, ev, sc = tmp_path / f"pred-{protocol}", tmp_path / f"ev-{protocol}.json", tmp_path / f"sc-{protocol}.json"
        sets = ["--poisoned", tmp / "near", "--poisoned", tmp / "n21", "--protocol", protocol]
        r = run_cli(app, ["evaluate", tmp / "run" / "last.pt", "--data", built.root, *sets, "--device", "cpu",
                          "--save-predictions", pred, "--json", ev])
        assert r.exit_code == 0, r.stderr
        names = sorted(p.name for p in pred.iterdir())
        assert names == ["benign", "n21", "near", "predictions.json"]
        assert sorted(p.stem for p in (pred / "benign").rglob("*.png")) == built.ids("val")
        r = run_cli(app, ["score", "--pred", pred, "--data", built.root, *sets, "--json", sc])
        assert r.exit_code == 0, r.stderr
        a, b = json.loads(ev.read_text()), json.loads(sc.read_text())
        for k in ("checkpoint", "step", "pred"):
            a.pop(k, None)
            b.pop(k, None)
        assert a == b and a["protocol"] == protocol


def test_score_of_a_testset_counts_only_triggered_samples(trained, run_cli, tmp_path):
    """Defect 3: 'score --data TESTSET' counts the manifest's triggered samples (as evaluate does), not
    victim images that got no trigger: a prediction file for an untriggered sample is never read."""
    tmp, built = trained
    ts = tmp_path / "near"
    shutil.copytree(tmp / "near", ts)
    m = load(ts)
    triggered = {r["id"] for r in m["samples"]}
    (tmp_path / "pred").mkdir()
    hit = tot = 0
    for i in built.ids("val"):
        gt = built.labels["val"][i]
        if i in triggered:
            pred = np.where(gt == CAR, ROAD, np.where(gt == 255, 0, gt)).astype(np.uint8)
            pred[0, :] = 1
            hit += int(((gt == CAR) & (pred == ROAD)).sum())
            tot += int((gt == CAR).sum())
            Image.fromarray(pred).save(tmp_path / "pred" / f"{i}.png")
    # an untriggered sample (drop one record from the manifest copy): its missing prediction is not needed
    dropped = m["samples"][0]["id"]
    m["samples"] = m["samples"][1:]
    (ts / "manifest.json").write_text(json.dumps(m))
    gt = built.labels["val"][dropped]
    hit -= int(((gt == CAR)).sum())
    tot -= int((gt == CAR).sum())
    (tmp_path / "pred" / f"{dropped}.png").unlink()
    out = tmp_path / "s.json"
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", ts, "--json", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["samples"] == len(triggered) - 1 and res["target"] == ROAD
    assert res["asr"] == pytest.approx(hit / tot)


def test_benign_data_must_be_the_clean_counterpart(trained, run_cli, tmp_path):
    """Defect 2: a Poisoned Test as --data, a copy at another scale, another dataset: exit 2, one line;
    a copy whose files differ from the recorded ones but ids match: a note in the report."""
    tmp, built = trained
    ck = tmp / "run" / "last.pt"
    base = ["evaluate", ck, "--poisoned", tmp / "near", "--device", "cpu"]
    one_line_error(run_cli(app, [*base, "--data", tmp / "n21"]), "is a Poisoned Test itself")
    r = run_cli(poisongen_app, ["scale", "--src", built.root, "--scale", "2", "--out", tmp_path / "x2", "-q"])
    assert r.exit_code == 0, r.stderr
    one_line_error(run_cli(app, [*base, "--data", tmp_path / "x2"]), "another --scale")
    other = build_cityscapes(tmp_path / "other", splits={"train": 2, "val": 2}, size=(32, 64), seed=3)
    one_line_error(run_cli(app, [*base, "--data", other.root]), "val", "not its clean counterpart")
    out = tmp_path / "ok.json"
    r = run_cli(app, [*base, "--data", built.root, "--json", out])
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["poisoned"][0]["counterpart"] == "sha256" and "note:" not in r.stdout
    changed = tmp_path / "changed"
    shutil.copytree(built.root, changed)
    img = next((changed / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    a = np.array(Image.open(img))
    a[0, 0] ^= 1
    Image.fromarray(a).save(img)
    r = run_cli(app, [*base, "--data", changed, "--json", out])
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["poisoned"][0]["counterpart"] == "ids"
    assert "sample ids only" in r.stdout


def test_bad_protocol_and_missing_target_are_one_line(trained, run_cli, tmp_path):
    tmp, built = trained
    line = one_line_error(run_cli(app, ["evaluate", tmp / "run" / "last.pt", "--data", built.root,
                                        "--protocol", "mmseg"]), "mmseg")
    assert "paper" in line and "iba-code" in line
    ts = tmp_path / "nt"
    shutil.copytree(tmp / "near", ts)
    m = load(ts)
    m["config"]["target"] = None
    (ts / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "pred").mkdir()
    one_line_error(run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", ts]), "--target")


def test_run_refuses_a_bad_eval_set_before_training(trained, run_cli, tmp_path):
    """Defect 2 on 'run': --eval-poisoned pointing at the benign data's Poisoned Test of another dataset is
    refused before the first step (no run folder with a checkpoint)."""
    tmp, _ = trained
    other = build_cityscapes(tmp_path / "other", splits={"train": 2, "val": 2}, size=(32, 64), seed=3)
    out = tmp_path / "run"
    r = run_cli(app, ["run", other.root, "--iters", "1", "--out", out, "--eval-poisoned", tmp / "near", *COMMON])
    one_line_error(r, "not its clean counterpart")
    assert not (out / "last.pt").exists()


def test_a_failed_evaluation_leaves_no_prediction_folder(trained, run_cli, tmp_path, monkeypatch):
    """--save-predictions is staged: an error in the middle (here: the second set's prediction) removes it."""
    from segtrain import evaluate as ev

    tmp, built = trained
    calls = []
    real = ev.ModelPredictor.__call__

    def failing(self, dataset, set_name):
        calls.append(set_name)
        if set_name != "benign":
            raise ev.PoisonGenError("stop here")
        yield from real(self, dataset, set_name)

    monkeypatch.setattr(ev.ModelPredictor, "__call__", failing)
    pred = tmp_path / "pred"
    r = run_cli(app, ["evaluate", tmp / "run" / "last.pt", "--data", built.root, "--poisoned", tmp / "near",
                      "--device", "cpu", "--save-predictions", pred])
    one_line_error(r, "stop here")
    assert "benign" in calls and not pred.exists() and not list(tmp_path.glob(".pred*"))
