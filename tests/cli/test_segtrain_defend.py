"""`segtrain defend ...` and `segtrain detect ...` end to end on a tiny poisoned set: each writes its JSON and
defended checkpoints (which `segtrain evaluate` loads), records its settings, and bad input is one line,
exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from builders import one_line_error

from poisongen.cli import app as poisongen_app
from segtrain.cli import app

TINY = ["--arch", "pspnet", "--backbone", "resnet18", "--output-stride", "16", "--crop", "64x128", "--scale",
        "1,1", "--device", "cpu", "--workers", "0", "--quiet", "--no-eval", "--optimizer", "adamw", "--lr", "0.001"]


@pytest.fixture(scope="module")
def poisoned(tiny_synth, tmp_path_factory):
    """NNI at 25 % of the tiny set, a nearest-band test set, a PSPNet-R18 trained 2 steps on the poisoned copy."""
    from typer.testing import CliRunner

    run = CliRunner().invoke
    tmp = tmp_path_factory.mktemp("defend")
    for cmd in (["nni", "--src", tiny_synth, "--rate", "0.25", "--trigger-size", "8", "--out", tmp / "nni"],
                ["testset", "--src", tiny_synth, "--strategy", "nearest", "--trigger-size", "8", "--out",
                 tmp / "test_near"]):
        r = run(poisongen_app, [str(x) for x in [*cmd, "--jobs", "1", "-q"]], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
    r = run(app, [str(x) for x in ["run", tmp / "nni", "--iters", "2", "--batch", "2", "--out", tmp / "run", *TINY]],
            catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return tmp


def test_finetune_writes_a_loadable_checkpoint_and_records_the_chosen_ids(poisoned, tiny_synth, run_cli, tmp_path):
    out = tmp_path / "ft"
    r = run_cli(app, ["defend", "finetune", poisoned / "run" / "last.pt", "--data", tiny_synth, "--test",
                      poisoned / "test_near", "--fraction", "0.1,0.25", "--epochs", "1", "--batch", "2", "--out", out])
    assert r.exit_code == 0, r.stderr
    assert "segtrain defend finetune" in r.stdout and "before" in r.stdout
    res = json.loads((out / "defense.json").read_text())
    assert [row["fraction"] for row in res["rows"]] == [0.1, 0.25]
    for row in res["rows"]:
        assert set(row["served"]) <= set(row["ids"]) and len(row["ids"]) == row["samples"]
        assert row["after"]["sets"][0]["asr"] is not None and (out / row["checkpoint"]).is_file()
    assert res["settings"]["seed"] == 0 and res["before"]["sets"][0]["testset"] == "test_near"
    ck = torch.load(out / "finetune_f0.25.pt", weights_only=True)
    assert ck["defense"]["ids"] == res["rows"][1]["ids"]
    ev = tmp_path / "ev.json"
    r = run_cli(app, ["evaluate", out / "finetune_f0.25.pt", "--data", tiny_synth, "--poisoned",
                      poisoned / "test_near", "--device", "cpu", "--json", ev])
    assert r.exit_code == 0, r.stderr
    assert json.loads(ev.read_text())["poisoned"][0]["asr"] == pytest.approx(res["rows"][1]["after"]["sets"][0]["asr"])


def test_prune_and_fineprune_one_row_per_k(poisoned, tiny_synth, run_cli, tmp_path):
    r = run_cli(app, ["defend", "prune", poisoned / "run", "--data", tiny_synth, "--test", poisoned / "test_near",
                      "--channels", "30,5,15", "--of", "256", "--calibration", "0.25", "--out", tmp_path / "pr"])
    assert r.exit_code == 0, r.stderr
    res = json.loads((tmp_path / "pr" / "defense.json").read_text())
    assert [row["k"] for row in res["rows"]] == [5, 15, 30] and res["settings"]["layer"] == "head.0.0"
    assert len(res["settings"]["calibration_ids"]) == 6 and res["settings"]["width"] == 256
    assert res["rows"][1]["channels"][:5] == res["rows"][0]["channels"]  # cumulative
    r = run_cli(app, ["defend", "fineprune", poisoned / "run", "--data", tiny_synth, "--channels", "4",
                      "--fraction", "0.25", "--epochs", "1", "--batch", "2", "--out", tmp_path / "fp"])
    assert r.exit_code == 0, r.stderr
    ck = torch.load(tmp_path / "fp" / "fineprune_k4.pt", weights_only=True)
    chans = json.loads((tmp_path / "fp" / "defense.json").read_text())["rows"][0]["channels"]
    assert torch.count_nonzero(ck["model"]["head.0.0.weight"][chans]) == 0


def test_abl_reports_isolation_against_the_manifest(poisoned, tiny_synth, run_cli, tmp_path):
    out = tmp_path / "abl"
    r = run_cli(app, ["defend", "abl", poisoned / "run", "--data", tiny_synth, "--train", poisoned / "nni",
                      "--test", poisoned / "test_near", "--isolate", "0.25", "--isolate-iters", "2",
                      "--train-iters", "2", "--unlearn-epochs", "1", "--out", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads((out / "defense.json").read_text())
    iso = res["rows"][0]["isolation"]
    assert iso["isolated"] == 6 and iso["chance"] == pytest.approx(0.25) and 0 <= iso["truly_poisoned"] <= 6
    assert res["rows"][0]["steps"] == {"isolation": 2, "training": 2, "unlearning": 3} and (out / "abl.pt").is_file()


def test_detect_samples_and_inputs(poisoned, tiny_synth, run_cli, tmp_path):
    out = tmp_path / "ds"
    r = run_cli(app, ["detect", "samples", poisoned / "run", "--data", poisoned / "nni", "--out", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads((out / "detect.json").read_text())
    assert set(res["scores"]) == {"loss", "loss_outlier", "spectral", "ac"} and res["samples"] == 24
    for s in res["scores"].values():
        assert 0 <= s["auroc"] <= 1 and s["k"] == 6
    lines = (out / "ranked_loss.csv").read_text().splitlines()
    assert lines[0] == "rank,id,score,poisoned" and len(lines) == 25
    assert sum(int(x.split(",")[3]) for x in lines[1:]) == 6 and (out / "pr_curve.png").stat().st_size > 1000
    out = tmp_path / "di"
    r = run_cli(app, ["detect", "inputs", poisoned / "run", "--data", tiny_synth, "--test", poisoned / "test_near",
                      "--overlays", "3", "--max-inputs", "3", "--out", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads((out / "detect.json").read_text())
    assert res["inputs"] == 3 and res["settings"]["strip"]["overlays"] == 3
    for s in res["scores"].values():
        assert s["positives"] == 3 and s["negatives"] == 3 and s["pixel_auroc_images"] == 3


@pytest.fixture(scope="module")
def other_classes(poisoned):
    ck = torch.load(poisoned / "run" / "last.pt", weights_only=False)
    ck["class_names"] = ["x" + n for n in ck["class_names"]]
    path = poisoned / "other.pt"
    torch.save(ck, path)
    return path


@pytest.mark.parametrize("args,needle", [
    (["defend", "prune", "{ck}", "--data", "{src}", "--layer", "head.9"], "unknown --layer 'head.9'; valid layers"),
    (["defend", "prune", "{ck}", "--data", "{src}", "--channels", "5,300"], "--channels 300 is above the 256"),
    (["defend", "finetune", "{ck}", "--data", "{src}", "--fraction", "0"], "--fraction 0 is outside (0, 1]"),
    (["defend", "finetune", "{ck}", "--data", "{src}", "--fraction", "0.1,1.5"], "--fraction 1.5 is outside (0, 1]"),
    (["defend", "fineprune", "{ck}", "--data", "{src}", "--fraction", "2"], "--fraction 2 is outside (0, 1]"),
    (["defend", "abl", "{ck}", "--data", "{src}", "--train", "{src}"], "no manifest of a poisoned training set"),
    (["defend", "finetune", "{other}", "--data", "{src}"], "class table differs"),
    (["detect", "samples", "{ck}", "--data", "{src}"], "pass --no-score"),
    (["detect", "inputs", "{ck}", "--data", "{src}", "--test", "{src}"], "no manifest of a Poisoned Test"),
    (["defend", "finetune", "{ck}", "--data", "{nni}"], "is a poisoned training set"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(poisoned, other_classes, tiny_synth, run_cli, tmp_path,
                                                      args, needle):
    fill = {"{ck}": poisoned / "run" / "last.pt", "{src}": tiny_synth, "{other}": other_classes,
            "{nni}": poisoned / "nni"}
    out = tmp_path / "out"
    r = run_cli(app, [fill.get(a, a) for a in args] + ["--out", out])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle in one_line_error(r)
    assert not out.exists() and not list(tmp_path.iterdir())
