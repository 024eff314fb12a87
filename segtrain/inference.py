"""Prediction: whole image, sliding window, and the published IBA code's padded, flip-averaged inference.

Two ways of turning a normalised image batch into per-pixel scores (``--protocol``, docs/metrics.md):

* ``paper`` (default): the model's logits on the whole image, or - when the image is larger than the
  crop - a sliding window (overlap 1/3) whose logits are averaged where windows overlap.
* ``iba-code`` (Maxproto/IBA ``tool/test.py``, after hszhao/semseg): an image smaller than the crop is
  padded (centred) to the crop with the mean colour (0 after normalisation), windows of the crop's size
  step by ``ceil(2/3 * crop)``, each window's softmax probabilities are averaged with those of its
  horizontal mirror, window scores are averaged where they overlap, and the padding is cut off again.

The argmax of either is the class map the metrics count (:func:`class_map`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .data import SegDataset, collate
from .metrics import MetricAccumulator


def _starts(size: int, win: int, stride: int) -> list[int]:
    s = list(range(0, size - win + 1, stride))
    if s[-1] + win < size:
        s.append(size - win)
    return s


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, num_classes: int, crop: tuple[int, int] | None = None,
                   overlap: float = 1 / 3) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` for a normalised batch: whole image, or - when the image is larger than
    ``crop`` - a sliding window with the given overlap, averaging the logits where windows overlap."""
    H, W = image.shape[-2:]
    if crop is None or (H <= crop[0] and W <= crop[1]):
        return model(image)["out"].float()
    th, tw = min(crop[0], H), min(crop[1], W)
    sh, sw = max(1, int(th * (1 - overlap))), max(1, int(tw * (1 - overlap)))
    acc = image.new_zeros((image.shape[0], num_classes, H, W), dtype=torch.float32)
    cnt = image.new_zeros((1, 1, H, W), dtype=torch.float32)
    for y in _starts(H, th, sh):
        for x in _starts(W, tw, sw):
            acc[..., y:y + th, x:x + tw] += model(image[..., y:y + th, x:x + tw])["out"].float()
            cnt[..., y:y + th, x:x + tw] += 1
    return acc / cnt


def _flip_probs(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of a window averaged with those of its horizontal mirror (flipped back)."""
    both = model(torch.cat([window, window.flip(-1)], 0))["out"].float()
    if both.shape[-2:] != window.shape[-2:]:
        both = F.interpolate(both, window.shape[-2:], mode="bilinear", align_corners=True)
    p = both.softmax(1)
    b = window.shape[0]
    return (p[:b] + p[b:].flip(-1)) / 2


@torch.no_grad()
def predict_padded_flip(model: nn.Module, image: torch.Tensor, num_classes: int,
                        crop: tuple[int, int] | None = None, stride_rate: float = 2 / 3) -> torch.Tensor:
    """The published IBA code's scores ``(B, C, H, W)`` (softmax probabilities, flip-averaged).

    With no ``crop`` the whole image is one window. Otherwise the image is padded (centred; zeros = the
    mean colour after normalisation) to at least ``crop``, windows of ``crop`` start every
    ``ceil(crop * stride_rate)`` px (the last one flush with the far border), their scores are averaged
    where they overlap, and the padding is removed.
    """
    H, W = image.shape[-2:]
    if crop is None:
        return _flip_probs(model, image)
    ch, cw = crop
    ph, pw = max(ch - H, 0), max(cw - W, 0)
    top, left = ph // 2, pw // 2
    padded = F.pad(image, (left, pw - left, top, ph - top)) if ph or pw else image
    nh, nw = padded.shape[-2:]
    sh, sw = math.ceil(ch * stride_rate), math.ceil(cw * stride_rate)
    acc = image.new_zeros((image.shape[0], num_classes, nh, nw), dtype=torch.float32)
    cnt = image.new_zeros((1, 1, nh, nw), dtype=torch.float32)
    for gy in range(math.ceil((nh - ch) / sh) + 1):
        for gx in range(math.ceil((nw - cw) / sw) + 1):
            y1, x1 = min(gy * sh + ch, nh), min(gx * sw + cw, nw)
            y0, x0 = y1 - ch, x1 - cw
            acc[..., y0:y1, x0:x1] += _flip_probs(model, padded[..., y0:y1, x0:x1])
            cnt[..., y0:y1, x0:x1] += 1
    return (acc / cnt)[..., top:top + H, left:left + W]


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` logits -> ``(B, H, W)`` int64 argmax (the first maximum on ties).

    On CPU through a channels-last copy: torch's CPU argmax over dim 1 of NCHW logits is 2-6x slower than
    over the innermost dim (profiled with 19 classes at 128x256 and 512x1024), and it is the largest cost
    of evaluation after the forward pass.
    """
    if logits.device.type == "cpu":
        return logits.permute(0, 2, 3, 1).contiguous().argmax(-1)
    return logits.argmax(1)


@torch.no_grad()
def predictions(model: nn.Module, dataset: SegDataset, device: torch.device | str, num_classes: int,
                crop: tuple[int, int] | None = None, overlap: float = 1 / 3, workers: int = 0, amp: bool = False,
                flip: bool = False):
    """Yield ``(class map (1, H, W) int64, label, [sample id])`` for every sample of ``dataset``, one image
    at a time (any size); ``flip`` selects :func:`predict_padded_flip` (the iba-code protocol)."""
    from .engine import amp_dtype

    device = torch.device(device)
    amp = amp and device.type == "cuda"  # --amp is ignored on CPU
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    try:
        for images, labels, ids in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=amp_dtype() if amp else torch.float32, enabled=amp):
                if flip:
                    logits = predict_padded_flip(model, images, num_classes, crop)
                else:
                    logits = predict_logits(model, images, num_classes, crop, overlap)
            yield class_map(logits), labels.to(device), ids
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegDataset, device: torch.device | str, num_classes: int,
             victim: Sequence[int] = (), target: int | None = None, crop: tuple[int, int] | None = None,
             overlap: float = 1 / 3, workers: int = 0, amp: bool = False, flip: bool = False) -> MetricAccumulator:
    """Run ``model`` over ``dataset`` and accumulate the metrics (confusion matrix, victim counters,
    per-sample victim counts for clean ASR on subsets). Under torchrun each rank runs its shard and the
    counts are summed over the ranks (:mod:`segtrain.distributed`)."""
    acc = MetricAccumulator(num_classes, victim, target, device)
    for pred, labels, ids in predictions(model, distributed.shard(dataset), device, num_classes, crop, overlap,
                                         workers, amp, flip):
        acc.update(pred, labels, ids=ids)
    return distributed.reduce_metrics(acc)
