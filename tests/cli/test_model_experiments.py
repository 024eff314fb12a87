"""scripts/model_experiments.py at a tiny scale: the speed table, and the SegFormer-vs-PSPNet experiment end
to end (data, poisoned copy, Poisoned Tests, two trainings, JSON), resumable (a second call reruns nothing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "model_experiments.py"


@pytest.fixture(scope="module")
def exps():
    spec = importlib.util.spec_from_file_location("model_experiments", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed(exps, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    exps.main(["speed", "--root", str(tmp_path), "--size", "32x64", "--batch", "2", "--speed-steps", "1"])
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["arch"] for r in rows] == ["segformer", "pspnet"]
    assert all(r["img_s"] > 0 and r["quickstart_minutes"] > 0 for r in rows)


def test_segformer_experiment_tiny_and_resumable(exps, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    args = ["segformer", "--root", str(tmp_path), "--train", "6", "--val", "4", "--size", "64x128", "--iters", "2",
            "--batch", "2", "--device", "cpu"]
    exps.main(args)
    res = json.loads((tmp_path / "segformer.json").read_text())
    assert set(res["rows"]) == {"pspnet/resnet18", "segformer/mit_b0"}
    for row in res["rows"].values():
        assert 0 <= row["cba"] <= 1
        assert "asr_near" in row and "asr_far" in row and "clean_asr" in row
        assert row["curve"] and row["curve"][-1]["step"] == 2
    log = (tmp_path / "log.txt").read_text().splitlines()
    exps.main(args)  # everything exists: nothing is run again
    assert (tmp_path / "log.txt").read_text().splitlines() == log
