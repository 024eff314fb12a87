"""segtrain's metrics by hand, and `segtrain score` cross-checked with torchvision's reference formula and
the official Cityscapes evaluator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from builders import build_cityscapes, one_line_error
from PIL import Image

from segtrain.cli import app
from segtrain.metrics import (
    MetricAccumulator,
    backdoor_metrics,
    confusion_matrix,
    fine_grained_metrics,
    iou,
    mask_victim,
    miou,
    pixel_acc,
    victim_counts,
)

T = torch.tensor
CAR, ROAD = 13, 0


# --- metrics by hand ----------------------------------------------------------------------------
def test_confusion_matrix_iou_pa_by_hand():
    gt = T([0, 0, 1, 1, 2, 255])
    pred = T([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert iou(cm).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert miou(cm) == pytest.approx(1 / 3)
    assert pixel_acc(cm) == pytest.approx(3 / 5)
    # a class absent from GT and prediction has no union: nan, and does not count in the mean
    cm4 = confusion_matrix(pred, gt, 4)
    assert math.isnan(iou(cm4)[3])
    assert miou(cm4) == pytest.approx(1 / 3)
    # a class predicted but absent from GT counts (IoU 0)
    cm_fp = confusion_matrix(T([3, 1, 1, 1, 0, 2]), gt, 4)
    assert miou(cm_fp) == pytest.approx((0 + 2 / 3 + 0 + 0) / 4)


def test_backdoor_metrics_by_hand():
    gt = T([0, 0, 1, 1, 1, 2, 2, 255])
    poisoned_pred = T([0, 0, 0, 0, 1, 2, 1, 0])
    clean_pred = T([0, 0, 1, 1, 0, 2, 2, 0])
    victim, target = (1,), 0
    cm_b = confusion_matrix(clean_pred, gt, 3)
    cm_p = confusion_matrix(poisoned_pred, mask_victim(gt, victim), 3)
    assert cm_p.tolist() == [[2, 0, 0], [0, 0, 0], [0, 1, 1]]
    m = backdoor_metrics(cm_b, cm_p, victim, victim_counts(poisoned_pred, gt, victim, target),
                         victim_counts(clean_pred, gt, victim, target))
    assert m["cba"] == pytest.approx(7 / 9)  # (2/3 + 2/3 + 1) / 3
    assert m["pba"] == pytest.approx(0.75)  # (1 + 1/2) / 2 over non-victim classes 0 and 2
    assert m["asr"] == pytest.approx(2 / 3)
    assert m["clean_asr"] == pytest.approx(1 / 3)
    # the accumulator gives the same, batched, with per-sample counts for subsets
    acc_p = MetricAccumulator(3, victim, target)
    acc_p.update(poisoned_pred.view(2, 4), gt.view(2, 4), ids=["a", "b"])
    assert acc_p.pba() == pytest.approx(0.75)
    assert acc_p.asr() == pytest.approx(2 / 3)
    assert acc_p.hits == (2, 3)
    assert acc_p.subset_hits(["a"]) == (2, 2) and acc_p.subset_hits(["b"]) == (0, 1)
    acc_b = MetricAccumulator(3, victim, target)
    acc_b.update(clean_pred.view(2, 4), gt.view(2, 4))
    assert acc_b.miou() == pytest.approx(7 / 9)
    assert acc_b.asr() == pytest.approx(1 / 3)
    # logits are accepted too
    logits = torch.nn.functional.one_hot(clean_pred.clamp(max=2), 3).permute(1, 0).reshape(1, 3, 2, 4).float()
    acc_l = MetricAccumulator(3, victim, target)
    acc_l.update(logits, gt.view(1, 2, 4))
    assert torch.equal(acc_l.cm, acc_b.cm)
    s = acc_p.summary(["road", "car", "sky"])
    assert s["iou_per_class"]["car"] == pytest.approx(0.25) and s["victim_pixels"] == 3  # 1 / (3 + 2 - 1)
    # untargeted: a victim pixel is attacked when predicted as anything but its GT class
    assert victim_counts(poisoned_pred, gt, victim, None) == (2, 3)


def test_fine_grained_metrics_by_hand():
    gt = T([[0, 0, 1, 1]])
    tl = T([[0, 2, 2, 1]])
    pred = T([[0, 2, 1, 1]])
    cm_t = confusion_matrix(pred, tl, 3)
    m = fine_grained_metrics(cm_t, 1, 2)
    assert m["miou_a"] == pytest.approx(2 / 3)  # (1 + 1/2 + 1/2) / 3
    assert m["pa_a"] == pytest.approx(3 / 4)
    assert m["asr"] == pytest.approx(1 / 2)
    acc = MetricAccumulator(3)
    acc.update(pred, gt, target_label=tl)
    assert acc.fine_grained() == pytest.approx(m)
    assert acc.summary()["fine_grained"]["asr"] == pytest.approx(0.5)


# --- score vs torchvision reference and the official Cityscapes evaluator ---------------------------
def _reference_cm(preds, gts, n):
    """torchvision references/segmentation/utils.py ConfusionMatrix.update, verbatim in numpy."""
    mat = np.zeros((n, n), np.int64)
    for p, g in zip(preds, gts, strict=True):
        a, b = g.ravel().astype(np.int64), p.ravel().astype(np.int64)
        k = (a >= 0) & (a < n)
        inds = n * a[k] + b[k]
        mat += np.bincount(inds, minlength=n**2).reshape(n, n)
    return mat


def test_score_matches_torchvision_reference_and_cityscapes_evaluator(tmp_path, run_cli, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import trainId2label

    built = build_cityscapes(tmp_path / "cs", splits={"val": 3}, size=(32, 64), seed=3)
    rng = np.random.default_rng(0)
    preds, gts, pred_files, gt_files = [], [], [], []
    for i, (sid, gt) in enumerate(sorted(built.labels["val"].items())):
        pred = np.where(gt == 255, rng.integers(0, 19, gt.shape), gt).astype(np.uint8)
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.choice([0, 2, 10, 13, 11, 5], noise.sum())
        sub = tmp_path / "pred" / ("nested" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        name = f"{sid}.png" if i != 1 else f"{sid}_leftImg8bit.png"  # the image's own file name works too
        Image.fromarray(pred).save(sub / name)
        lid = np.zeros_like(pred)
        for t in range(19):
            lid[pred == t] = trainId2label[t].id
        pf = tmp_path / "pred_labelids" / f"{sid}.png"
        pf.parent.mkdir(exist_ok=True)
        Image.fromarray(lid).save(pf)
        pred_files.append(str(pf))
        gt_files.append(str(next((built.root / "gtFine" / "val").rglob(f"{sid}_gtFine_labelIds.png"))))
        preds.append(pred)
        gts.append(gt)
    out = tmp_path / "score.json"
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root, "--json", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())

    ref = _reference_cm(preds, gts, 19)
    diag = np.diag(ref).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_iou = diag / (ref.sum(0) + ref.sum(1) - diag)
    assert res["miou"] == pytest.approx(float(np.nanmean(ref_iou)), abs=1e-12)
    assert res["pixel_acc"] == pytest.approx(diag.sum() / ref.sum(), abs=1e-12)
    from poisongen.datasets import open_dataset

    names = open_dataset(built.root).meta.names  # JSON keys are sorted; train-id order comes from the layout
    for k, name in enumerate(names):
        v = res["iou_per_class"][name]
        assert (v is None) == bool(np.isnan(ref_iou[k])), name
        if v is not None:
            assert v == pytest.approx(ref_iou[k], abs=1e-12)

    if not hasattr(np, "in1d"):  # numpy 2.4 removed in1d, which the evaluator still calls; same semantics
        monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert),
                            raising=False)
    ev.args.evalInstLevelScore = False
    ev.args.evalPixelAccuracy = True
    ev.args.quiet = True
    ev.args.JSONOutput = False
    official = ev.evaluateImgLists(pred_files, gt_files, ev.args)
    assert abs(official["averageScoreClasses"] - res["miou"]) < 1e-9


def test_score_missing_prediction_and_victim_metrics(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"val": 2}, size=(32, 64))
    (tmp_path / "pred").mkdir()
    ids = sorted(built.labels["val"])
    gt0 = built.labels["val"][ids[0]]
    Image.fromarray(np.where(gt0 == CAR, ROAD, np.where(gt0 == 255, 0, gt0)).astype(np.uint8)).save(
        tmp_path / "pred" / f"{ids[0]}.png")
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root])
    one_line_error(r, ids[1])
    gt1 = built.labels["val"][ids[1]]
    Image.fromarray(np.where(gt1 == 255, 0, gt1).astype(np.uint8)).save(tmp_path / "pred" / f"{ids[1]}.png")
    out = tmp_path / "s.json"
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root, "--victim", "car",
                      "--target", "road", "--json", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    n0, n1 = int((gt0 == CAR).sum()), int((gt1 == CAR).sum())
    assert res["victim"] == [CAR] and res["target"] == ROAD
    assert {"miou", "pixel_acc", "iou_per_class", "asr", "pba"} <= set(res)
    assert res["asr"] == pytest.approx(n0 / (n0 + n1))
    assert res["pba"] == pytest.approx(1.0)  # off the victim pixels the predictions are perfect, but for road
    assert res["iou_per_class"]["bus"] is None

