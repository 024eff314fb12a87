"""Tiny fixed models for the evaluation tests, with an independent numpy forward pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MEAN = np.array((0.485, 0.456, 0.406))
STD = np.array((0.229, 0.224, 0.225))


class PixelConv(nn.Module):
    """A fixed 1x1 convolution: predictions vary per pixel; ``boost`` adds to some classes' bias."""

    def __init__(self, n: int, boost: dict[int, float] | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, n, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(n, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(n, generator=g) * 0.1)
            for k, v in (boost or {}).items():
                self.conv.bias[k] += v

    def forward(self, x):
        return {"out": self.conv(x)}

    def numpy_logits(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` -> ``(H, W, C) float64`` logits, computed without torch."""
        x = (rgb.astype(np.float64) / 255.0 - MEAN) / STD
        w = self.conv.weight.detach().double().numpy()[:, :, 0, 0]
        b = self.conv.bias.detach().double().numpy()
        return x @ w.T + b

    def numpy_predict(self, rgb: np.ndarray) -> np.ndarray:
        return self.numpy_logits(rgb).argmax(-1)


def hand_cm(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    """Confusion matrix (rows GT) by a Python loop over classes, pixels with GT outside 0..n-1 dropped."""
    cm = np.zeros((n, n), np.int64)
    for g in range(n):
        for p in range(n):
            cm[g, p] = int(((gt == g) & (pred == p)).sum())
    return cm


def hand_iou(cm: np.ndarray) -> list[float | None]:
    out = []
    for k in range(cm.shape[0]):
        union = cm[k, :].sum() + cm[:, k].sum() - cm[k, k]
        out.append(None if union == 0 else cm[k, k] / union)
    return out
