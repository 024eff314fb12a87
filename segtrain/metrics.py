"""Segmentation and backdoor metrics from one confusion-matrix pass (SPEC section 6).

Everything is plain torch. Pixels whose ground truth is outside ``0..n-1`` (ignore 255) never count.

* ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``; ``mIoU`` = mean over classes whose union is non-zero.
* ``PA`` = correctly classified counted pixels / counted pixels.
* **CBA** = mIoU on the benign (clean) validation set.
* **PBA** = mIoU on the poisoned test set with GT-victim pixels set to ignore, averaged over the
  non-victim classes (with non-zero union).
* **ASR** = (GT-victim pixels predicted as the target) / (GT-victim pixels) on the poisoned test set.
  With no target class (``target=None``), a victim pixel counts as attacked when it is predicted as
  anything but its own GT class.
* **Clean ASR** = the same ratio on the benign versions of the same samples (false-trigger rate).
* Fine-grained attacks (attacker target labels given per pixel): **mIOU-A / PA-A** = mIoU / PA against
  the target labels; **fine-grained ASR** = pixel accuracy over pixels whose target label differs from GT.
  Pixels whose GT or target label is ignore count in neither. **mIOU-B / PA-B** = mIoU / PA on the benign set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

IGNORE = 255


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, n) int64`` confusion matrix, rows = ground truth, columns = prediction.

    The torchvision reference formula: ``k = (gt >= 0) & (gt < n)``; ``inds = n * gt[k] + pred[k]``;
    ``bincount(inds, minlength=n*n).reshape(n, n)``. Predictions must lie in ``0..n-1``.
    """
    gt = gt.reshape(-1).to(torch.int64)
    pred = pred.reshape(-1).to(torch.int64)
    if gt.numel() != pred.numel():
        raise ValueError(f"prediction has {pred.numel()} pixels, ground truth {gt.numel()}")
    k = (gt >= 0) & (gt < n)
    inds = n * gt[k] + pred[k]
    return torch.bincount(inds, minlength=n * n)[: n * n].reshape(n, n)


def iou(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (float64), ``nan`` where the union (TP + FP + FN) is zero."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    out = tp / union
    out[union == 0] = math.nan
    return out


def miou(cm: torch.Tensor, classes: Iterable[int] | None = None, absent_as_zero: bool = False) -> float:
    """Mean IoU over classes with a non-zero union (optionally only over ``classes``); nan if none.

    ``absent_as_zero`` (the published IBA code's average, ``--protocol iba-code``): every class (of
    ``classes``) counts, a class with no union as IoU 0."""
    v = iou(cm)
    if classes is not None:
        idx = torch.tensor(sorted(set(classes)), dtype=torch.long)
        v = v[idx] if idx.numel() else v[:0]
    v = torch.nan_to_num(v, nan=0.0) if absent_as_zero else v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else math.nan


def pixel_acc(cm: torch.Tensor) -> float:
    """Correct counted pixels / counted pixels (nan when nothing was counted)."""
    total = int(cm.sum())
    return float(cm.diag().sum().item() / total) if total else math.nan


def mask_victim(gt: torch.Tensor, victim: Sequence[int]) -> torch.Tensor:
    """A copy of ``gt`` with every victim pixel set to ignore."""
    out = gt.clone()
    if len(victim):
        out[torch.isin(gt, torch.as_tensor(list(victim), dtype=gt.dtype, device=gt.device))] = IGNORE
    return out


def victim_counts(pred: torch.Tensor, gt: torch.Tensor, victim: Sequence[int], target: int | None) -> tuple[int, int]:
    """(attacked victim pixels, victim pixels): attacked = predicted as ``target`` (or, with no target,
    predicted as anything but the pixel's GT class)."""
    if not len(victim):
        return 0, 0
    vm = torch.isin(gt, torch.as_tensor(list(victim), dtype=gt.dtype, device=gt.device))
    total = int(vm.sum())
    hit = int((pred[vm] == target).sum()) if target is not None else int((pred[vm] != gt[vm]).sum())
    return hit, total


def ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def pba(cm_victim_ignored: torch.Tensor, victim: Sequence[int], absent_as_zero: bool = False) -> float:
    """PBA from a poisoned-test confusion matrix built with GT-victim pixels ignored: the mean IoU over
    the non-victim classes (``absent_as_zero``: all of them, absent ones 0, = the published code's
    K-class mean rescaled by K/(K-1) for one victim)."""
    n = cm_victim_ignored.shape[0]
    return miou(cm_victim_ignored, [c for c in range(n) if c not in set(victim)], absent_as_zero)


def backdoor_metrics(
    cm_benign: torch.Tensor,
    cm_poisoned_victim_ignored: torch.Tensor,
    victim: Sequence[int],
    poisoned_hits: tuple[int, int],
    clean_hits: tuple[int, int] | None = None,
) -> dict:
    """CBA, PBA, ASR and clean ASR from their parts.

    ``poisoned_hits`` / ``clean_hits``: (victim pixels predicted as target, victim pixels) on the poisoned
    test set and on the benign versions of the same samples.
    """
    out = {
        "cba": miou(cm_benign),
        "pba": pba(cm_poisoned_victim_ignored, victim),
        "asr": ratio(*poisoned_hits),
    }
    if clean_hits is not None:
        out["clean_asr"] = ratio(*clean_hits)
    return out


def fine_grained_metrics(cm_vs_target: torch.Tensor, changed_hit: int, changed_total: int) -> dict:
    """mIOU-A / PA-A against the attacker's target labels and fine-grained ASR (accuracy over pixels
    whose target label differs from GT)."""
    return {"miou_a": miou(cm_vs_target), "pa_a": pixel_acc(cm_vs_target), "asr": ratio(changed_hit, changed_total)}


class MetricAccumulator:
    """Accumulates, on the device and in int64, per batch:

    * ``cm``: the confusion matrix against GT;
    * ``cm_nv``: the confusion matrix with GT-victim pixels ignored (for PBA);
    * ``hit`` / ``total``: victim pixels predicted as target / victim pixels (for ASR);
    * with ``target_label`` given to :meth:`update`: ``cm_t`` against the target labels and the
      changed-pixel counters of the fine-grained ASR;
    * ``per_sample``: sample id -> (hit, total), when ids are passed, to compute clean ASR on subsets.
    """

    def __init__(self, num_classes: int, victim: Sequence[int] = (), target: int | None = None, device="cpu"):
        self.n = int(num_classes)
        self.victim = tuple(int(v) for v in victim)
        self.target = None if target is None else int(target)
        self.device = torch.device(device)

        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.int64, device=self.device)

        self.cm, self.cm_nv, self.cm_t = zeros(self.n, self.n), zeros(self.n, self.n), zeros(self.n, self.n)
        self._hit, self._total, self._changed_hit, self._changed_total = zeros(), zeros(), zeros(), zeros()
        self.has_target_labels = False
        self.per_sample: dict[str, tuple[int, int]] = {}
        self._victim_t = torch.tensor(self.victim, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def update(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        target_label: torch.Tensor | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """``pred``: class ids ``(B, H, W)`` (or logits ``(B, C, H, W)``); ``gt``: ``(B, H, W)``, or
        ``(B, 2, H, W)`` = ground truth and target label stacked (as ``SegDataset(target_labels=True)``
        yields them), which is the same as passing ``target_label``."""
        if gt.dim() == 4 and target_label is None:
            gt, target_label = gt[:, 0], gt[:, 1]
        if pred.dim() == gt.dim() + 1:
            pred = pred.argmax(1)
        pred = pred.to(self.device, torch.int64)
        gt = gt.to(self.device, torch.int64)
        self.cm += confusion_matrix(pred, gt, self.n)
        if self.victim:
            vm = torch.isin(gt, self._victim_t)
            self.cm_nv += confusion_matrix(pred, torch.where(vm, torch.full_like(gt, IGNORE), gt), self.n)
            hitmask = (pred == self.target) if self.target is not None else (pred != gt)
            hits = (vm & hitmask).flatten(1).sum(1)
            totals = vm.flatten(1).sum(1)
            self._hit += hits.sum()
            self._total += totals.sum()
            if ids is not None:
                for sid, h, t in zip(ids, hits.tolist(), totals.tolist(), strict=True):
                    self.per_sample[sid] = (int(h), int(t))
        else:
            self.cm_nv += confusion_matrix(pred, gt, self.n)
            if ids is not None:
                for sid in ids:
                    self.per_sample[sid] = (0, 0)
        if target_label is not None:
            self.has_target_labels = True
            tl = target_label.to(self.device, torch.int64)
            # GT-ignore pixels never count (SPEC 6), even where an image-level target gives them a class
            tl = torch.where((gt >= 0) & (gt < self.n), tl, torch.full_like(tl, IGNORE))
            self.cm_t += confusion_matrix(pred, tl, self.n)
            changed = (tl != gt) & (tl >= 0) & (tl < self.n)
            self._changed_hit += (changed & (pred == tl)).sum()
            self._changed_total += changed.sum()

    # --- results -------------------------------------------------------------------------------
    @property
    def hits(self) -> tuple[int, int]:
        return int(self._hit), int(self._total)

    @property
    def changed_pixels(self) -> int:
        """Pixels whose target label differs from GT (the fine-grained ASR's denominator)."""
        return int(self._changed_total)

    def subset_hits(self, ids: Iterable[str]) -> tuple[int, int]:
        """(hit, total) summed over the given sample ids (those seen by :meth:`update`)."""
        h = t = 0
        for sid in ids:
            a, b = self.per_sample.get(sid, (0, 0))
            h, t = h + a, t + b
        return h, t

    def miou(self, absent_as_zero: bool = False) -> float:
        return miou(self.cm.cpu(), absent_as_zero=absent_as_zero)

    def pixel_acc(self) -> float:
        return pixel_acc(self.cm.cpu())

    def iou(self) -> list[float]:
        return iou(self.cm.cpu()).tolist()

    def pba(self, absent_as_zero: bool = False) -> float:
        return pba(self.cm_nv.cpu(), self.victim, absent_as_zero)

    def asr(self) -> float:
        return ratio(*self.hits)

    def fine_grained(self) -> dict:
        return fine_grained_metrics(self.cm_t.cpu(), int(self._changed_hit), int(self._changed_total))

    def summary(self, names: Sequence[str] | None = None, absent_as_zero: bool = False) -> dict:
        """JSON-ready dict: miou, pixel_acc, iou_per_class (name -> value or None), and with a victim
        set: pba, asr, victim_pixels and ``pba_iou_per_class``, the table PBA is the mean of (GT-victim
        pixels ignored; victim classes None); with target labels: the fine-grained metrics.
        ``absent_as_zero``: class averages over all classes, absent ones 0 (``--protocol iba-code``)."""
        cm = self.cm.cpu()
        names = list(names) if names is not None else [str(i) for i in range(self.n)]
        out = {
            "miou": nan_to_none(miou(cm, absent_as_zero=absent_as_zero)),
            "pixel_acc": nan_to_none(pixel_acc(cm)),
            "iou_per_class": {names[i]: nan_to_none(v) for i, v in enumerate(iou(cm).tolist())},
            "pixels": int(cm.sum()),
        }
        if self.victim:
            nv = iou(self.cm_nv.cpu()).tolist()
            out.update(pba=nan_to_none(self.pba(absent_as_zero)), asr=nan_to_none(self.asr()),
                       victim_pixels=self.hits[1],
                       pba_iou_per_class={names[i]: None if i in self.victim else nan_to_none(v)
                                          for i, v in enumerate(nv)})
        if self.has_target_labels:
            out["fine_grained"] = {k: nan_to_none(v) for k, v in self.fine_grained().items()}
        return out


def nan_to_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
