"""`segtrain experiment` and `segtrain report` on the command line: bad grid YAML is one line naming the
key, exit code 2 and nothing written; --dry-run lists the cells; a tiny grid runs and reruns by name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from builders import one_line_error

from segtrain.cli import app

TRAIN = {"iters": 2, "batch": 2, "crop": "64x128", "scale": "1,1", "optimizer": "adamw", "lr": 0.001, "workers": 0,
         "device": "cpu", "log-every": 1, "ckpt-every": 2}


def grid(src: Path, **changes) -> dict:
    g = {"name": "cli", "dataset": {"src": str(src)}, "options": {"trigger-size": 8},
         "attacks": {"baseline": {}, "nni": {"upper": 12}}, "rates": [0, 0.5],
         "models": {"psp": {"arch": "pspnet", "backbone": "resnet18", "output-stride": 16}}, "train": dict(TRAIN),
         "testsets": {"near": {"strategy": "random", "lower": 0, "upper": 60}}, "overlays": 1}
    g.update(copy.deepcopy(changes))
    return g


def write(tmp_path: Path, g: dict) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


BAD = [
    ({"attacks": {"zap": {}}}, ["attacks.zap", "unknown attack 'zap'", "nni"]),
    ({"rates": [0, 1.2]}, ["rates[1] is 1.2", "[0, 1]"]),
    ({"models": {"psp": {"arch": "pspnet", "depth": 3}}}, ["unknown key 'models.psp.depth'", "backbone"]),
    ({"train": dict(TRAIN, lr="fast")}, ["train.lr is 'fast'", "a number"]),
    ({"train": dict(TRAIN, iters=2.5)}, ["train.iters is 2.5", "a whole number"]),
    ({"oops": 1}, ["unknown key 'grid.yaml.oops'"]),
]


@pytest.mark.parametrize(("change", "needles"), BAD)
def test_bad_yaml_is_one_line_exit_2_nothing_written(run_cli, tiny_synth, tmp_path, change, needles):
    out = tmp_path / "exp"
    r = run_cli(app, ["experiment", write(tmp_path, grid(tiny_synth, **change)), "--out", out])
    one_line_error(r, *needles)
    assert not out.exists()


def test_unknown_config_name_and_not_yaml(run_cli, tmp_path):
    one_line_error(run_cli(app, ["experiment", "paper-shape-gpu", "--out", tmp_path / "x"]), "paper-shape-cpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rates: [0, 1\n")
    one_line_error(run_cli(app, ["experiment", bad, "--out", tmp_path / "x"]), "not valid YAML")
    assert not (tmp_path / "x").exists()


def test_run_dry_run_rerun_and_report(run_cli, tiny_synth, tmp_path):
    cfg, out = write(tmp_path, grid(tiny_synth)), tmp_path / "exp"
    r = run_cli(app, ["experiment", cfg, "--out", out, "--dry-run"])
    assert r.exit_code == 0, r.stderr
    assert "0 done, 3 to do" in r.stdout and "partial" not in r.stdout and not out.exists()
    r = run_cli(app, ["experiment", cfg, "--out", out])
    assert r.exit_code == 0, r.stderr
    assert "experiment cli" in r.stdout and "results.csv" in r.stdout
    rows = json.loads((out / "results" / "results.json").read_text())["rows"]
    assert [(x["attack"], x["rate"]) for x in rows] == [("clean", 0), ("baseline", 0.5), ("nni", 0.5)]
    r = run_cli(app, ["experiment", cfg, "--out", out, "--dry-run"])
    assert "3 done, 0 to do" in r.stdout and "finished cell" in r.stdout
    r = run_cli(app, ["report", out, "--markdown", tmp_path / "docs" / "results.md"])
    assert r.exit_code == 0, r.stderr
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    md = (tmp_path / "docs" / "results.md").read_text()
    assert "| psp | nni | 50 | 0 |" in md and "asr_vs_rate" in md
    run_dir = next((out / "runs").iterdir())
    r = run_cli(app, ["report", run_dir])
    assert r.exit_code == 0, r.stderr


def test_report_of_no_result_folder_is_one_line(run_cli, tmp_path):
    one_line_error(run_cli(app, ["report", tmp_path]), "neither metrics.json")
    one_line_error(run_cli(app, ["report", tmp_path / "nope"]), "is not a folder")
