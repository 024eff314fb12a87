"""segtrain.metrics: the class averages of both protocols and the PBA table, by hand."""

from __future__ import annotations

import pytest
import torch

from segtrain.metrics import MetricAccumulator, confusion_matrix, miou, pba

T = torch.tensor


def test_absent_classes_count_zero_only_under_iba_code():
    """Classes 0..3; class 3 is neither in GT nor predicted. paper: mean over the 3 classes with a union;
    iba-code: mean over all 4 with class 3 as 0."""
    gt = T([0, 0, 1, 1, 2, 255])
    pred = T([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, gt, 4)
    ious = [1 / 3, 2 / 3, 0.0]  # class 0: 1 / (2 + 2 - 1); class 1: 2 / 3; class 2: 0 / 1
    assert miou(cm) == pytest.approx(sum(ious) / 3)
    assert miou(cm, absent_as_zero=True) == pytest.approx(sum(ious) / 4)


def test_iba_code_pba_is_the_k_class_mean_rescaled_by_k_over_k_minus_1():
    """The published code averages over all K classes with the victim's GT ignored (its IoU is then 0)
    and rescales by K/(K-1): the same as our mean over the K-1 non-victim classes, absent ones 0."""
    gt = T([[0, 0, 1, 1, 2, 2, 3, 3]])
    pred = T([[0, 1, 1, 0, 2, 1, 0, 0]])
    victim, k = (1,), 4
    acc = MetricAccumulator(k, victim, target=0)
    acc.update(pred, gt)
    masked = torch.where(gt == 1, torch.full_like(gt, 255), gt)
    cm = confusion_matrix(pred, masked, k)
    # by hand on the masked GT [0, 0, -, -, 2, 2, 3, 3] vs pred [0, 1, -, -, 2, 1, 0, 0]:
    # class 0: TP 1, FP 2 (the two 3s), FN 1 -> 1/4; class 2: TP 1, FN 1 -> 1/2; class 3: TP 0 -> 0
    # class 1 (victim): TP 0, FP 2 -> 0
    k_mean = (1 / 4 + 0 + 1 / 2 + 0) / k
    assert acc.pba(absent_as_zero=True) == pytest.approx(k_mean * k / (k - 1)) == pytest.approx((1 / 4 + 1 / 2) / 3)
    assert pba(cm, victim, absent_as_zero=True) == acc.pba(absent_as_zero=True)
    # the paper's PBA: the non-victim classes with a union, here all three as well
    assert acc.pba() == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)
    s = acc.summary(["a", "b", "c", "d"])
    assert s["pba_iou_per_class"] == pytest.approx({"a": 1 / 4, "b": None, "c": 1 / 2, "d": 0.0})


def test_pba_differs_between_protocols_when_a_class_is_absent():
    gt = T([[0, 0, 1, 2]])
    pred = T([[0, 0, 0, 2]])
    acc = MetricAccumulator(5, (1,), 0)
    acc.update(pred, gt)
    # non-victim classes 0, 2, 3, 4; 3 and 4 absent everywhere. class 0: the victim pixel predicted 0 is
    # ignored, so TP 2 / union 2 = 1; class 2: 1
    assert acc.pba() == pytest.approx(1.0)
    assert acc.pba(absent_as_zero=True) == pytest.approx((1 + 1 + 0 + 0) / 4)
