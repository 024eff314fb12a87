"""Detection metrics on hand-made rankings equal a direct computation; STRIP is invariant to the order of
its overlays; the detectors' pieces (spectral signature, activation clustering, TeCo, trigger window)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from eval_models import PixelConv

from segtrain import detection_metrics as dm
from segtrain.defenses import detect_inputs as di
from segtrain.defenses import detect_samples as ds


def direct_auroc(scores, labels):
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_hand_made_ranking():
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5]
    labels = [1, 0, 1, 1, 0, 0]
    # pairs won: 0.9 beats 3 negatives, 0.7 and 0.6 beat 2 each -> 7 of 9
    assert dm.auroc(scores, labels) == pytest.approx(7 / 9)
    assert dm.precision_recall_at_k(scores, labels, 3) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert dm.precision_recall_at_k(scores, labels, 1) == (1.0, pytest.approx(1 / 3))
    # thresholds: >= 0.9: TPR 1/3 FPR 0; >= 0.8: 1/3, 1/3; >= 0.7: 2/3, 1/3; >= 0.6: 1, 1/3
    assert dm.tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert dm.tpr_at_fpr(scores, labels, 0.34) == 1.0
    rec, prec = dm.pr_curve(scores, labels)
    assert rec.tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert prec.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 1 / 2])
    s = dm.summary(scores, labels)
    assert s["k"] == 3 and s["precision_at_k"] == pytest.approx(2 / 3) and s["positives"] == 3


def test_metrics_equal_a_direct_computation_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(4, 30))
        scores = rng.integers(0, 5, n).astype(float)  # many ties
        labels = rng.integers(0, 2, n)
        if labels.all() or not labels.any():
            continue
        assert dm.auroc(scores, labels) == pytest.approx(direct_auroc(scores, labels))
        k = int(labels.sum())
        order = sorted(range(n), key=lambda i: (-scores[i], i))[:k]
        hits = sum(labels[i] for i in order)
        assert dm.precision_recall_at_k(scores, labels, k) == (pytest.approx(hits / k), pytest.approx(hits / k))
        for fpr in (0.0, 0.05, 0.3):
            best = 0.0
            for t in set(scores.tolist()):
                f = ((scores >= t) & (labels == 0)).sum() / (labels == 0).sum()
                if f <= fpr:
                    best = max(best, ((scores >= t) & (labels == 1)).sum() / labels.sum())
            assert dm.tpr_at_fpr(scores, labels, fpr) == pytest.approx(best)
    assert dm.auroc([1, 2], [1, 1]) is None


def test_strip_is_invariant_to_the_order_of_overlays():
    model = PixelConv(4, seed=1).eval()
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    overlays = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(7)]
    s, pix = di.strip_score(model, image, overlays, "cpu")
    for perm in itertools.islice(itertools.permutations(range(7)), 1, 30, 7):
        s2, pix2 = di.strip_score(model, image, [overlays[i] for i in perm], "cpu")
        assert s2 == s and np.array_equal(pix2, pix)
    s3, _ = di.strip_score(model, image, overlays[:6], "cpu")
    assert s3 != s  # the score does depend on which overlays
    assert pix.shape == (16, 24) and np.all(pix <= 0)


def test_strip_blend_is_backdoorbench_saturating_sum():
    a = np.full((2, 2, 3), 200, np.uint8)
    b = np.full((2, 2, 3), 100, np.uint8)
    assert np.all(di.superimpose(a, b, 1.0) == 255) and np.all(di.superimpose(b, b, 0.5) == 150)


def test_a_dominating_trigger_lowers_the_strip_entropy():
    """A model that predicts class 0 wherever a white patch is: the triggered image's entropy is lower."""

    class Patch(torch.nn.Module):
        def forward(self, x):
            white = (x.mean(1, keepdim=True) > 2.0).float() * 50
            noise = torch.sin(x * 7).sum(1, keepdim=True)
            return {"out": torch.cat([white, noise, -noise, noise * 0.5], 1)}

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
    trig = clean.copy()
    trig[:, :] = 255
    overlays = [rng.integers(0, 100, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    assert di.strip_score(Patch(), trig, overlays, "cpu")[0] > di.strip_score(Patch(), clean, overlays, "cpu")[0]


def test_teco_is_seeded_and_per_pixel():
    model = PixelConv(4, seed=2).eval()
    image = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    a, pa = di.teco_score(model, image, "cpu", seed=0, key=3)
    b, pb = di.teco_score(model, image, "cpu", seed=0, key=3)
    assert a == b and np.array_equal(pa, pb) and pa.shape == (16, 24) and a >= 0


def test_trigger_window_from_the_manifest():
    m = {"config": {"trigger": {"kind": "pattern", "size": [3, 4]}}}
    w = di.trigger_window(m, {"top_left": [2, 5]}, (10, 12))
    assert w.sum() == 12 and w[2:5, 5:9].all()
    assert di.trigger_window({"config": {"trigger": {"kind": "semantic"}}}, {}, (4, 4)) is None


def test_spectral_and_clustering_rank_an_outlying_group_first():
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (40, 8))
    feats[:5] += 6 * np.eye(8)[0]  # five samples shifted along one direction
    for scores in (ds.spectral_scores(feats), ds.ac_scores(feats, seed=0)):
        assert set(dm.top_k(scores, 5).tolist()) == set(range(5))
    assert ds.loss_scores(np.array([0.5, np.nan, 0.1])).tolist() == [-0.5, -1.5, -0.1]


def test_loss_outlier_flags_both_tails_where_loss_flags_one():
    """A backdoor not yet learned leaves its relabelled pixels fitted badly (high loss): ``loss`` ranks those
    samples last, ``loss_outlier`` first, and it also flags the well-fitted tail of a learned backdoor."""
    rng = np.random.default_rng(0)
    clean = np.exp(rng.normal(np.log(0.2), 0.3, 60))
    unlearned = np.concatenate([clean, [3.0, 4.0, 5.0]])  # poisoned = the last three, high loss
    learned = np.concatenate([clean, [0.002, 0.003, 0.001]])  # poisoned fitted unusually well
    poison = set(range(60, 63))
    assert set(dm.top_k(ds.loss_outlier_scores(unlearned), 3).tolist()) == poison
    assert set(dm.top_k(ds.loss_outlier_scores(learned), 3).tolist()) == poison
    assert set(dm.top_k(ds.loss_scores(learned), 3).tolist()) == poison
    assert not set(dm.top_k(ds.loss_scores(unlearned), 3).tolist()) & poison
    # the direct computation: |log L - median| / (1.4826 MAD); nan (no target pixels) below every sample
    x = np.array([0.1, 0.2, 0.4, np.nan, 0.8])
    med = np.median(np.log([0.1, 0.2, 0.4, 0.8]))
    mad = 1.4826 * np.median(np.abs(np.log([0.1, 0.2, 0.4, 0.8]) - med))
    got = ds.loss_outlier_scores(x)
    assert np.allclose(got[[0, 1, 2, 4]], np.abs(np.log([0.1, 0.2, 0.4, 0.8]) - med) / mad)
    assert got[3] < got[[0, 1, 2, 4]].min()
    assert np.array_equal(ds.loss_outlier_scores(np.full(5, 0.3)), np.zeros(5))  # all alike: no outlier, no nan
