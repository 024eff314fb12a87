"""segtrain on the Poisoned Tests of the fine-grained / BADSEG attacks: mIOU-B, PA-B, mIOU-A, PA-A and the
fine-grained ASR computed by hand (numpy) from the target label files poisongen wrote, and conditional
test sets reported separately for images with and without the condition."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from builders import build_cityscapes
from rich.console import Console
from torch import nn

from poisongen.cli import app as poisongen_app
from poisongen.codecs import read_gray, read_rgb
from poisongen.manifest import load
from segtrain import cli
from segtrain.cli import report
from segtrain.transforms import eval_transform

N = 19


class PixelModel(nn.Module):
    """A 1x1 convolution with fixed weights: predictions vary per pixel, and car (13) and road (0) are common."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, N, 1)
        with torch.no_grad():
            self.conv.bias[13] += 1.0
            self.conv.bias[0] += 1.0

    def forward(self, x):
        return {"out": self.conv(x)}


def predict(model, image: np.ndarray) -> np.ndarray:
    x, _ = eval_transform()(image, np.zeros(image.shape[:2], np.uint8))
    with torch.no_grad():
        return model(x[None])["out"].argmax(1)[0].numpy()


def by_hand(preds, gts, targets):
    """mIOU-A, PA-A, ASR with numpy: pixels whose GT or target is ignore never count."""
    p, g, t = (np.concatenate([a.ravel() for a in x]).astype(np.int64) for x in (preds, gts, targets))
    valid = (g != 255) & (t != 255)
    cm = np.bincount(N * t[valid] + p[valid], minlength=N * N).reshape(N, N)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    miou_a = float(np.mean(np.diag(cm)[union > 0] / union[union > 0]))
    pa_a = float(np.diag(cm).sum() / cm.sum())
    attacked = valid & (t != g)
    asr = float((p[attacked] == t[attacked]).mean()) if attacked.any() else float("nan")
    return miou_a, pa_a, asr, int(attacked.sum())


def make_testset(run_cli, src, out, *args):
    r = run_cli(poisongen_app, ["testset", "--src", src, "--out", out, "--jobs", "1", "-q", *args])
    assert r.exit_code == 0, r.stderr
    return load(out)


def test_fine_grained_metrics_match_a_hand_computation(tmp_path, run_cli, monkeypatch):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 4}, size=(32, 64))
    model = PixelModel().eval()
    fg = tmp_path / "fgba"
    m = make_testset(run_cli, built.root, fg, "--attack", "fgba", "--matrix", "person:car,all:road")
    res = report(model, str(built.root), [str(fg)], "cpu", None, None, None, 0, False)
    (p,) = res["poisoned"]
    preds, gts, targets = [], [], []
    for rec in m["samples"]:
        img = next(f["path"] for f in rec["files"] if f["path"].endswith("_leftImg8bit.png"))
        tl = next(t["path"] for t in rec["target_labels"] if t["path"].endswith("labelTrainIds.png"))
        preds.append(predict(model, read_rgb(fg / img)))
        gts.append(built.labels["val"][rec["id"]])
        targets.append(read_gray(fg / tl))
    miou_a, pa_a, asr, attacked = by_hand(preds, gts, targets)
    got = p["fine_grained"]
    assert got["miou_a"] == pytest.approx(miou_a) and got["pa_a"] == pytest.approx(pa_a)
    assert got["asr"] == pytest.approx(asr) and got["attacked_pixels"] == attacked
    assert 0 < asr < 1  # a non-trivial case
    # mIOU-B / PA-B: the benign val split, clean images
    bp = [predict(model, read_rgb(built.root / s)) for s in sorted(
        str(f.relative_to(built.root)) for f in (built.root / "leftImg8bit" / "val").rglob("*.png"))]
    bg = [built.labels["val"][i] for i in built.ids("val")]
    mb, pb, _, _ = by_hand(bp, bg, bg)
    assert got["miou_b"] == pytest.approx(mb) == res["benign"]["cba"]
    assert got["pa_b"] == pytest.approx(pb)
    # the table shows them (percent), the fine-grained ASR marked as such
    monkeypatch.setattr(cli, "out", Console(width=300, file=io.StringIO()))
    cli.print_report(res)
    table = cli.out.file.getvalue()
    assert "mIOU-A" in table and "(fine-grained ASR)" in table and f"{100 * miou_a:.2f}" in table


def test_conditional_and_instance_testsets(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 4}, size=(32, 64))
    model = PixelModel().eval()
    cond = tmp_path / "cond"
    m = make_testset(run_cli, built.root, cond, "--attack", "conditional", "--victim", "car", "--target", "road",
                "--condition", "bicycle", "--trigger-size", "4")
    inst = tmp_path / "inst"
    mi = make_testset(run_cli, built.root, inst, "--attack", "instance", "--victim", "car", "--target", "road",
                 "--trigger-size", "4")
    res = report(model, str(built.root), [str(cond), str(inst)], "cpu", None, None, None, 0, False)
    rows = {(p["testset"], p["subset"]): p for p in res["poisoned"]}
    flags = {r["id"]: r["condition"] for r in m["samples"]}
    present, absent = rows[(str(cond), "condition present")], rows[(str(cond), "condition absent")]
    assert present["samples"] == sum(flags.values()) and absent["samples"] == len(flags) - sum(flags.values())
    assert "fine_grained" not in present and 0 <= present["asr"] <= 1 and 0 <= absent["asr"] <= 1
    # instance: the fine-grained ASR is measured over the chosen instances' pixels only
    ip = rows[(str(inst), None)]
    assert ip["fine_grained"]["attacked_pixels"] == sum(c["pixels"] for r in mi["samples"]
                                                        for c in r["instances"]["chosen"])


class ConstantModel(nn.Module):
    """Predicts one class everywhere."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        logits = torch.zeros(x.shape[0], N, *x.shape[2:])
        logits[:, self.k] = 1.0
        return {"out": logits}


@pytest.mark.parametrize(("predicted", "asr"), [(0, 1.0), (1, 0.0)])
def test_iba_testset_asr_counts_victim_pixels_predicted_as_the_models_target(tmp_path, run_cli, predicted, asr):
    """An IBA Poisoned Test records the attack's target (labels untouched; the layout's default, road):
    ASR counts victim pixels predicted as road, so a model that turns cars into sidewalk has ASR 0, not 1."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 4}, size=(32, 64))
    ts = tmp_path / "near"
    m = make_testset(run_cli, built.root, ts, "--strategy", "nearest", "--trigger-size", "4")
    assert m["config"]["target"] == 0
    model = ConstantModel(predicted).eval()
    trained_on = ((13,), 0)  # car -> road, as a checkpoint's config records it
    res = report(model, str(built.root), [str(ts)], "cpu", None, None, None, 0, False, trained_on)
    (p,) = res["poisoned"]
    assert p["target"] == 0 and p["asr"] == asr and p["clean_asr"] == asr
    assert res["benign"]["clean_asr"] == asr
