"""Bad input to ``segtrain run``: one line naming the value and what is allowed, exit code 2, and no run
folder left behind (everything is checked before any folder is created or any step runs); bad
checkpoints given to ``--resume`` and ``evaluate``: one line, and the run folder left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import build_cityscapes, build_voc
from conftest import tree_hashes

from segtrain.cli import app

COMMON = ["--arch", "pspnet", "--backbone", "resnet18", "--crop", "32x64", "--device", "cpu", "--workers", "0",
          "--quiet", "--no-eval"]


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _testset_manifest(root: Path, kind: str = "testset", ids=("x",)) -> None:
    (root / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "kind": kind, "config": {"victim": [13], "target": 0, "split": "val"},
        "samples": [{"id": i} for i in ids], "output_fingerprint": "0" * 64}))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 3-image Cityscapes training set and every kind of folder --eval-poisoned must refuse."""
    base = tmp_path_factory.mktemp("bad_inputs")
    data = build_cityscapes(base / "cs", splits={"train": 3, "val": 1}, size=(32, 64)).root
    (base / "empty").mkdir()
    shutil.copytree(data, base / "no_manifest")
    shutil.copytree(data, base / "train_kind")
    _testset_manifest(base / "train_kind", kind="train")
    voc = build_voc(base / "voc").root
    _testset_manifest(voc)
    shutil.copytree(data, base / "no_samples")
    _testset_manifest(base / "no_samples", ids=())
    (base / "a_file").write_text("not a folder\n")
    return {"base": base, "data": data, "voc": voc}


# (case, extra arguments, words the one line must hold); "{x}" is replaced by the fixture's path
CASES = [
    ("lr zero", ["--iters", "1", "--batch", "2", "--lr", "0"], ["--lr 0", "> 0"]),
    ("lr negative", ["--iters", "1", "--batch", "2", "--lr", "-0.01"], ["--lr -0.01", "> 0"]),
    ("lr nan", ["--iters", "1", "--batch", "2", "--lr", "nan"], ["--lr nan", "finite"]),
    ("scale lo > hi", ["--iters", "1", "--batch", "2", "--scale", "2.0,0.5"], ["--scale 2,0.5", "0 < LO <= HI"]),
    ("scale lo zero", ["--iters", "1", "--batch", "2", "--scale", "0,2"], ["--scale 0,2", "0 < LO <= HI"]),
    ("scale lo negative", ["--iters", "1", "--batch", "2", "--scale", "-1,2"], ["--scale -1,2", "0 < LO <= HI"]),
    ("scale not a range", ["--iters", "1", "--batch", "2", "--scale", "2"], ["--scale '2'", "LO,HI"]),
    ("crop beyond memory", ["--iters", "1", "--batch", "2", "--crop", "20000x40000"],
     ["--crop 20000x40000", "GiB", "estimate", "smaller --crop or --batch"]),
    ("batch above the split", ["--iters", "1", "--batch", "4"], ["--batch 4", "3 samples", "--batch 3 or less"]),
    ("batch one", ["--iters", "1", "--batch", "1"], ["--batch 1", ">= 2"]),
    ("iters and epochs", ["--iters", "1", "--epochs", "1", "--batch", "2"], ["--iters or --epochs", "both"]),
    ("neither iters nor epochs", ["--batch", "2"], ["--iters or --epochs", "neither"]),
    ("iters zero", ["--iters", "0", "--batch", "2"], ["--iters 0", ">= 1"]),
    ("epochs negative", ["--epochs", "-2", "--batch", "2"], ["--epochs -2", ">= 1"]),
    ("log-every zero", ["--iters", "1", "--batch", "2", "--log-every", "0"], ["--log-every 0", ">= 1"]),
    ("optimizer", ["--iters", "1", "--batch", "2", "--optimizer", "lbfgs"], ["lbfgs", "{sgd, adamw}"]),
    ("out is a file", ["--iters", "1", "--batch", "2", "--out", "{base}/a_file"], ["a_file", "is a file"]),
    ("out inside the data", ["--iters", "1", "--batch", "2", "--out", "{data}/runs/r"], ["inside the training data"]),
    ("eval-poisoned not a dataset", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{base}/empty"],
     ["--eval-poisoned", "empty", "no known dataset layout"]),
    ("eval-poisoned missing", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{base}/nowhere"],
     ["--eval-poisoned", "nowhere", "does not exist"]),
    ("eval-poisoned without manifest", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{base}/no_manifest"],
     ["no_manifest", "no manifest.json", "poisongen testset"]),
    ("eval-poisoned of kind train", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{base}/train_kind"],
     ["train_kind", "kind 'train'", "not a test set"]),
    ("eval-poisoned of another class table", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{voc}"],
     ["another class table", "21 classes", "19 classes"]),
    ("eval-poisoned listing no samples", ["--iters", "1", "--batch", "2", "--eval-poisoned", "{base}/no_samples"],
     ["no_samples", "lists no poisoned samples"]),
]


@pytest.mark.parametrize(("case", "extra", "needles"), CASES, ids=[c[0] for c in CASES])
def test_run_refuses_bad_input_before_creating_anything(world, run_cli, tmp_path, case, extra, needles):
    out = tmp_path / "run"
    extra = [a.format(base=world["base"], voc=world["voc"], data=world["data"]) for a in extra]
    if "--out" in extra:
        out = Path(extra[extra.index("--out") + 1])
    else:
        extra += ["--out", str(out)]
    before = tree_hashes(world["data"])
    one_line_error(run_cli(app, ["run", world["data"], *COMMON, *extra]), *needles)
    assert not out.exists() or out.is_file(), case  # no run folder left behind
    assert tree_hashes(world["data"]) == before  # the training data is never modified


def _corrupt(kind: str, path: Path, good: Path) -> None:
    if kind == "truncated":
        raw = good.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "not a torch file":
        path.write_text("hello, I am a text file\n")
    elif kind == "missing keys":
        torch.save({"step": 2, "optimizer": {}}, path)
    elif kind == "not a dict":
        torch.save(torch.zeros(3), path)
    elif kind == "another class table":
        ck = torch.load(good, weights_only=False)
        ck["class_names"] = [f"c{i}" for i in range(len(ck["class_names"]))]  # same count, other names
        torch.save(ck, path)


CKPT_CASES = [("truncated", ["cannot read checkpoint", "truncated"]),
              ("not a torch file", ["cannot read checkpoint", "not a file written by torch.save"]),
              ("missing keys", ["not a segtrain checkpoint", "missing model, config, num_classes"]),
              ("not a dict", ["not a segtrain checkpoint", "Tensor"]),
              ("another class table", ["class table", "0: 'c0' vs 'road'"])]


@pytest.fixture(scope="module")
def good_run(world, tmp_path_factory):
    from typer.testing import CliRunner

    run = tmp_path_factory.mktemp("good") / "run"
    r = CliRunner().invoke(app, ["run", str(world["data"]), *COMMON, "--iters", "2", "--batch", "2", "--out", str(run)])
    assert r.exit_code == 0, r.stderr
    return run


@pytest.mark.parametrize(("kind", "needles"), CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_bad_checkpoints_are_one_line_errors(world, good_run, run_cli, tmp_path, kind, needles):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _corrupt(kind, run / "last.pt", good_run / "last.pt")
    before = tree_hashes(run)
    one_line_error(run_cli(app, ["run", world["data"], *COMMON, "--iters", "4", "--batch", "2", "--out", run,
                                 "--resume"]), *needles)
    assert tree_hashes(run) == before  # nothing written into the run folder
    one_line_error(run_cli(app, ["evaluate", run / "last.pt", "--data", world["data"], "--device", "cpu"]), *needles)
