"""segtrain.inference: sliding windows and the published code's padded, flip-averaged inference, against
numpy hand computations on a model whose output depends on the position inside its window."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from segtrain.inference import class_map, predict_logits, predict_padded_flip


class WindowPosition(nn.Module):
    """Two classes: logit 0 = the pixel's value, logit 1 = its column index inside the window / 10. The
    result depends on the window layout and is not mirror-symmetric, so flips and pads show."""

    def forward(self, x):
        col = torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[-2:]) / 10
        return {"out": torch.cat([x[:, :1], col], 1)}


def softmax(z):
    e = np.exp(z - z.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def numpy_window_probs(win: np.ndarray) -> np.ndarray:
    """(h, w) channel-0 values -> (2, h, w) flip-averaged softmax probabilities of WindowPosition."""
    h, w = win.shape
    col = np.tile(np.arange(w, dtype=np.float64) / 10, (h, 1))
    p = softmax(np.stack([win, col]))
    mirrored = win[:, ::-1]
    q = softmax(np.stack([mirrored, col]))[:, :, ::-1]
    return (p + q) / 2


def test_padded_flip_matches_a_hand_computation():
    """A 3x5 image under a 4x4 crop: padded to 4x5 (1 row: 0 above, 1 below), windows of 4x4 every
    ceil(4 * 2/3) = 3 px: columns 0-3 and 1-4 (the last flush right), scores averaged, padding cut off."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 5))
    x = torch.tensor(img, dtype=torch.float32)[None, None].expand(1, 3, 3, 5).contiguous()
    got = predict_padded_flip(WindowPosition(), x, 2, crop=(4, 4)).numpy()[0]
    padded = np.zeros((4, 5))
    padded[0:3] = img  # pad_h = 1: top 1 // 2 = 0 rows, bottom 1 row
    acc, cnt = np.zeros((2, 4, 5)), np.zeros((4, 5))
    for x0 in (0, 1):
        acc[:, :, x0:x0 + 4] += numpy_window_probs(padded[:, x0:x0 + 4])
        cnt[:, x0:x0 + 4] += 1
    want = (acc / cnt)[:, 0:3, :]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # no crop: the whole image is one window
    whole = predict_padded_flip(WindowPosition(), x, 2).numpy()[0]
    np.testing.assert_allclose(whole, numpy_window_probs(img), rtol=1e-5, atol=1e-6)


def test_padding_is_centred_and_windows_follow_the_published_grid():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 9))
    x = torch.tensor(img, dtype=torch.float32)[None, None].expand(1, 3, 2, 9).contiguous()
    got = predict_padded_flip(WindowPosition(), x, 2, crop=(5, 4)).numpy()[0]
    padded = np.zeros((5, 9))
    top = (5 - 2) // 2  # 1 row above, 2 below
    padded[top:top + 2] = img
    stride = math.ceil(4 * 2 / 3)  # 3
    grid = math.ceil((9 - 4) / stride) + 1  # 3 windows: 0-3, 3-6, 5-8
    acc, cnt = np.zeros((2, 5, 9)), np.zeros((5, 9))
    for g in range(grid):
        x1 = min(g * stride + 4, 9)
        acc[:, :, x1 - 4:x1] += numpy_window_probs(padded[:, x1 - 4:x1])
        cnt[:, x1 - 4:x1] += 1
    np.testing.assert_allclose(got, (acc / cnt)[:, top:top + 2], rtol=1e-5, atol=1e-6)


def test_sliding_window_averages_logits_where_windows_overlap():
    """The paper protocol's window: 4x6 image, 4x4 crop, overlap 1/3 -> stride int(4 * 2/3) = 2: columns
    0-3 and 2-5; raw logits (no softmax, no flip) averaged."""
    img = np.arange(24, dtype=np.float64).reshape(4, 6)
    x = torch.tensor(img, dtype=torch.float32)[None, None].expand(1, 3, 4, 6).contiguous()
    got = predict_logits(WindowPosition(), x, 2, crop=(4, 4)).numpy()[0]
    col = np.zeros((4, 6))
    col[:, 0:4] += np.arange(4) / 10
    col[:, 2:6] += np.arange(4) / 10
    cnt = np.ones(6)
    cnt[2:4] = 2
    np.testing.assert_allclose(got[1], col / cnt, rtol=1e-6)
    np.testing.assert_allclose(got[0], img, rtol=1e-6)
    assert class_map(torch.tensor(got)[None]).shape == (1, 4, 6)
