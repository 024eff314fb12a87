"""Scores of a detector against ground truth (pure numpy, checkable by hand): higher score = more suspicious,
labels 1 = poisoned / triggered, 0 = clean.

* :func:`auroc`: the probability that a random positive scores above a random negative, ties counting
  one half (the Mann-Whitney U statistic over ``n_pos * n_neg``), from average ranks.
* :func:`precision_recall_at_k`: among the ``k`` highest scores (ties broken by position: the earlier
  item first, i.e. a stable sort), how many are positive: ``hits / k`` and ``hits / n_pos``.
* :func:`tpr_at_fpr`: the largest TPR of a threshold ``score >= t`` whose FPR is at most ``fpr``.
* :func:`pr_curve`: (recall, precision) after each distinct threshold, from the highest score down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _arrays(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of the same length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank (vectorised: pixel AUROC ranks millions)."""
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(s)] - 1
    group = np.cumsum(np.r_[True, sorted_s[1:] != sorted_s[:-1]]) - 1 if len(s) else np.zeros(0, dtype=int)
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = ((starts + ends) / 2 + 1)[group]
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve; None without a positive or without a negative."""
    s, y = _arrays(scores, labels)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    u = _ranks(s)[y].sum() - npos * (npos + 1) / 2
    return float(u / (npos * nneg))


def top_k(scores: Sequence[float], k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first (stable: equal scores keep their order)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s, kind="stable")[:k]


def precision_recall_at_k(scores: Sequence[float], labels: Sequence[int], k: int) -> tuple[float | None, float | None]:
    s, y = _arrays(scores, labels)
    k = min(int(k), len(s))
    hits = int(y[top_k(s, k)].sum()) if k > 0 else 0
    npos = int(y.sum())
    return (hits / k if k else None), (hits / npos if npos else None)


def roc_points(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) for every distinct threshold ``score >= t``, from the highest t down,
    starting at (0, 0, +inf)."""
    s, y = _arrays(scores, labels)
    npos, nneg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    ts = np.unique(s)[::-1]
    tpr = np.array([0.0] + [float((y & (s >= t)).sum()) / npos for t in ts])
    fpr = np.array([0.0] + [float((~y & (s >= t)).sum()) / nneg for t in ts])
    return fpr, tpr, np.concatenate([[np.inf], ts])


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[int], fpr: float) -> float | None:
    """The largest TPR among thresholds with FPR <= ``fpr``; None without positives or negatives."""
    _, y = _arrays(scores, labels)
    if y.all() or not y.any():
        return None
    f, t, _ = roc_points(scores, labels)
    return float(t[f <= fpr + 1e-12].max())


def pr_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold ``score >= t``, highest first."""
    s, y = _arrays(scores, labels)
    npos = max(int(y.sum()), 1)
    ts = np.unique(s)[::-1]
    rec = np.array([float((y & (s >= t)).sum()) / npos for t in ts])
    prec = np.array([float((y & (s >= t)).sum()) / max(int((s >= t).sum()), 1) for t in ts])
    return rec, prec


def summary(scores: Sequence[float], labels: Sequence[int], k: int | None = None, fpr: float = 0.05) -> dict:
    """AUROC, precision/recall at ``k`` (default: the number of positives) and TPR at ``fpr``."""
    _, y = _arrays(scores, labels)
    k = int(y.sum()) if k is None else k
    p, r = precision_recall_at_k(scores, labels, k)
    return {"auroc": auroc(scores, labels), "k": k, "precision_at_k": p, "recall_at_k": r,
            f"tpr_at_fpr_{fpr:g}": tpr_at_fpr(scores, labels, fpr), "positives": int(y.sum()),
            "negatives": int((~y).sum())}
