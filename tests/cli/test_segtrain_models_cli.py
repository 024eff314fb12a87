"""`segtrain models`, `segtrain run --arch segformer` end to end (train, metrics, evaluate the checkpoint),
--weights / --backbone-weights through the CLI, and the one-line errors (no smp, a file that does not fit),
each leaving no run folder."""

from __future__ import annotations

import json

import pytest
import torch
from builders import build_cityscapes, one_line_error

from segtrain.cli import app
from segtrain.models import REGISTRY
from segtrain.models import smp as smp_models

COMMON = ["--batch", "2", "--crop", "40x56", "--device", "cpu", "--workers", "0", "--log-every", "1", "--quiet",
          "--victim", "car", "--target", "road", "--scale", "1,1"]


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    return build_cityscapes(tmp_path_factory.mktemp("cs") / "cs", splits={"train": 3, "val": 2}, size=(40, 56))


def test_models_table_lists_every_arch_and_backbone(run_cli, monkeypatch):
    pytest.importorskip("segmentation_models_pytorch")
    monkeypatch.setenv("COLUMNS", "250")
    r = run_cli(app, ["models", "--classes", "19"])
    assert r.exit_code == 0, r.stderr
    for arch, (_, backbones, _, _) in REGISTRY.items():
        for bb in backbones:
            assert any(arch in ln and bb in ln for ln in r.stdout.splitlines()), (arch, bb)
    seg = next(ln for ln in r.stdout.splitlines() if "segformer" in ln and "mit_b0" in ln)
    assert "smp" in seg and "3.72 M" in seg  # SegFormer-b0: 3.7 M parameters
    assert "torchvision" in next(ln for ln in r.stdout.splitlines() if "pspnet" in ln and "resnet18" in ln)
    monkeypatch.setattr(smp_models, "available", lambda: False)
    r = run_cli(app, ["models"])
    assert r.exit_code == 0
    seg = next(ln for ln in r.stdout.splitlines() if "segformer" in ln and "mit_b0" in ln)
    assert "not installed" in seg and "3.72 M" not in seg


def test_segformer_run_and_evaluate(cs, tmp_path, run_cli):
    pytest.importorskip("segmentation_models_pytorch")
    run = tmp_path / "seg"
    r = run_cli(app, ["run", cs.root, "--arch", "segformer", "--backbone", "mit_b0", "--iters", "2", "--out", run,
                      *COMMON])
    assert r.exit_code == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["benign"]["cba"] <= 1
    conf = json.loads((run / "config.json").read_text())
    assert (conf["arch"], conf["backbone"], conf["output_stride"]) == ("segformer", "mit_b0", 32)
    r = run_cli(app, ["evaluate", run, "--data", cs.root, "--device", "cpu", "--json", tmp_path / "ev.json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "ev.json").read_text())["benign"]["cba"] == m["benign"]["cba"]
    # --weights: a second run starts from the first one's weights
    r = run_cli(app, ["run", cs.root, "--arch", "segformer", "--iters", "1", "--out", tmp_path / "ft",
                      "--weights", run / "last.pt", "--no-eval", *COMMON])
    assert r.exit_code == 0, r.stderr


def test_weights_that_do_not_fit_are_one_line_and_leave_no_folder(cs, tmp_path, run_cli):
    from torchvision.models import resnet34

    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    out = tmp_path / "never"
    line = one_line_error(run_cli(app, ["run", cs.root, "--arch", "pspnet", "--backbone", "resnet18", "--iters", "1",
                                        "--backbone-weights", tmp_path / "r34.pth", "--out", out, *COMMON]),
                          "do not fit", "unexpected (layer1.2.")
    assert "..." in line
    assert not out.exists()
    line = one_line_error(run_cli(app, ["run", cs.root, "--arch", "pspnet", "--backbone", "resnet18", "--iters", "1",
                                        "--weights", tmp_path / "r34.pth", "--out", out, *COMMON]),
                          "model weights", "missing (")
    assert not out.exists()


def test_smp_arch_without_smp_is_one_line(cs, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(smp_models, "available", lambda: False)
    out = tmp_path / "never"
    one_line_error(run_cli(app, ["run", cs.root, "--arch", "segformer", "--iters", "1", "--out", out, *COMMON]),
                   "--arch segformer", "pip install .[smp]")
    assert not out.exists()
