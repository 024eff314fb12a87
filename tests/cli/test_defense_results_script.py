"""scripts/defense_results.py end to end on a tiny setting: every step's JSON, the plots, the doc's results
block generated from the JSONs, and a rerun that skips every finished step."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from poisongen.cli import app as poisongen_app
from segtrain.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--arch", "pspnet", "--backbone", "resnet18", "--output-stride", "16", "--crop", "64x128", "--scale",
        "1,1", "--device", "cpu", "--workers", "0", "--quiet", "--no-eval", "--optimizer", "adamw", "--lr", "0.001",
        "--iters", "2", "--batch", "2"]


def load_script():
    spec = importlib.util.spec_from_file_location("defense_results", ROOT / "scripts" / "defense_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_defense_results_end_to_end_and_resumable(tiny_synth, tmp_path, run_cli):
    runs = tmp_path / "RUNS"
    for attack in ("nni",):
        r = run_cli(poisongen_app, [attack, "--src", tiny_synth, "--rate", "0.25", "--trigger-size", "8", "--out",
                                    runs / attack, "--jobs", "1", "-q"])
        assert r.exit_code == 0, r.stderr
        r = run_cli(app, ["run", runs / attack, "--out", runs / f"pspnet_{attack}", *TINY])
        assert r.exit_code == 0, r.stderr
    for name, args in (("test_near", ["--strategy", "nearest"]),
                       ("test_far", ["--strategy", "random", "--lower", "4"])):
        r = run_cli(poisongen_app, ["testset", "--src", tiny_synth, "--trigger-size", "8", "--out", runs / name,
                                    "--jobs", "1", "-q", *args])
        assert r.exit_code == 0, r.stderr
    doc = tmp_path / "defenses.md"
    text = (ROOT / "docs" / "defenses.md").read_text()
    doc.write_text(text)
    out = tmp_path / "res"
    argv = [str(runs), "--clean", str(tiny_synth), "--out", str(out), "--doc", str(doc), "--attacks", "nni",
            "--fractions", "0.25", "--epochs", "1", "--channels", "2,4", "--overlays", "2", "--max-inputs", "2",
            "--isolate", "0.25", "--abl-isolate-iters", "1", "--abl-train-iters", "1", "--abl-unlearn-epochs", "1",
            "--fineprune-fraction", "0.1"]
    script = load_script()
    script.main(argv)
    steps = ["finetune", "prune", "fineprune", "detect_samples", "detect_inputs_test_near", "detect_inputs_test_far",
             "abl"]
    for attack in ("nni",):
        for step in steps:
            files = list((out / attack / step).glob("*.json"))
            assert len(files) == 1, (attack, step)
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["fineprune.png", "finetune.png", "prune.png"]
    started = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum(1 for x in started if x["event"] == "start") == len(steps)
    new = doc.read_text()
    assert "Placeholder" not in new and new.count(script.BEGIN) == 1 and new.count(script.END) == 1
    assert new.split(script.BEGIN)[0] == text.split(script.BEGIN)[0]  # only the block changes
    ft = json.loads((out / "nni" / "finetune" / "defense.json").read_text())
    cba = f"{100 * ft['rows'][0]['after']['cba']:.1f}"
    assert f"| fine-tune 25 % (6 img) | {cba} |" in new  # the doc's figures are the JSON's
    assert "### nni" in new and "| spectral | training samples |" in new
    # a rerun skips every finished step and regenerates the same block
    script.main(argv)
    again = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(again) == len(started)
    assert doc.read_text() == new


def test_defense_results_on_a_grids_finished_cells(tiny_synth, tmp_path, run_cli, capsys):
    """--grid: the models, poisoned copies and Poisoned Tests are the experiment's own cells."""
    import pytest
    import yaml

    g = {"name": "d", "dataset": {"src": str(tiny_synth)}, "options": {"trigger-size": 8},
         "attacks": {"nni": {"upper": 12}}, "rates": [0.5],
         "models": {"psp": {"arch": "pspnet", "backbone": "resnet18", "output-stride": 16}},
         "train": {"iters": 2, "batch": 2, "crop": "64x128", "scale": "1,1", "optimizer": "adamw", "lr": 0.001,
                   "workers": 0, "device": "cpu", "log-every": 1, "ckpt-every": 2},
         "testsets": {"near": {"strategy": "random", "lower": 0, "upper": 60},
                      "far": {"strategy": "random", "lower": 60, "upper": 200}}, "overlays": 0}
    cfg, exp = tmp_path / "grid.yaml", tmp_path / "exp"
    cfg.write_text(yaml.safe_dump(g))
    r = run_cli(app, ["experiment", cfg, "--out", exp])
    assert r.exit_code == 0, r.stderr
    script = load_script()
    out = tmp_path / "res"
    base = ["--grid", str(exp), "--out", str(out), "--attacks", "nni", "--no-abl", "--epochs", "1",
            "--fractions", "0.25", "--channels", "2", "--overlays", "2", "--max-inputs", "2",
            "--fineprune-fraction", "0.25"]
    nodoc = tmp_path / "plain.md"
    nodoc.write_text("# no generated block here\n")
    bad = [([*base, "--grid-rate", "0.3"],
            r"0 finished cells for attack 'nni' at rate 0\.3.*\('psp', 'nni', 0\.5, 0\)"),
           ([*base, "--grid-rate", "0.5", "--tests", "near,mid"], r"no band \['mid'\]; it has \['far', 'near'\]"),
           ([*base, "--grid", str(tmp_path)], r"no experiment\.json"),
           ([*base, "--grid-rate", "0.5", "--doc", str(nodoc)], r"--doc .*plain\.md: has no <!-- defense-results"),
           ([*base, "--grid-rate", "0.5", "--doc", str(tmp_path / "nope.md")], r"--doc .*nope\.md: no such file")]
    for argv, pattern in bad:  # one line, exit 2 (the CLIs' contract), nothing written
        with pytest.raises(SystemExit) as e:
            script.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, (argv, err)
        assert re.search(pattern, err) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    assert nodoc.read_text() == "# no generated block here\n"
    script.main([*base, "--grid-rate", "0.5", "--tests", "far"])
    assert sorted(p.name for p in (out / "nni").iterdir()) == ["detect_inputs_far", "detect_samples", "fineprune",
                                                                "finetune", "prune"]
    cell = json.loads(next((exp / "results" / "cells").glob("*.json")).read_text())
    ft = json.loads((out / "nni" / "finetune" / "defense.json").read_text())
    assert [Path(s["testset"]).name for s in ft["before"]["sets"]] == \
        [t["key"] for t in cell["tests"] if t["band"] == "far"]
    # the defended model's "before" is the grid's model: the same figures as the cell recorded
    far = next(p for p in cell["report"]["poisoned"] if Path(p["testset"]).name.startswith("far"))
    assert ft["before"]["sets"][0]["asr"] == pytest.approx(far["asr"], abs=1e-12)
