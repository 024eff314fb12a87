"""Inference-time detection of triggered inputs (``segtrain detect inputs``); higher score = more suspicious.

* STRIP (Gao et al. 2019) for segmentation: the input is superimposed with ``n`` clean images (BackdoorBench:
  ``cv2.addWeighted(input, 1, overlay, alpha, 0)``, a saturating uint8 sum; N 100, alpha 1.0), the model's
  per-pixel softmax entropy is averaged over the image, then over the overlays. A trigger that dominates
  keeps the prediction stable, so its entropy is low: the score is minus the entropy. The overlays are
  drawn once from ``seed`` (clean training images, resized to the input) and the per-overlay values are
  summed in sorted order, so the score does not depend on the order of the overlays. Per pixel: minus the
  pixel's entropy averaged over the overlays (sorted likewise).
* TeCo-like (Liu et al. 2023, test-time corruption consistency): six corruptions (Gaussian noise, Gaussian
  blur, JPEG, contrast, brightness, pixelate) at severities 1-5 (TeCo uses 15 ImageNet-C types; these six
  need nothing beyond numpy/OpenCV). Per corruption, each pixel's first severity at which its prediction
  differs from the clean one (6 if never); the image's mean of that per corruption; the score is the
  standard deviation of those means over the corruptions (clean images degrade alike under every
  corruption, a trigger's pixels resist some and not others). Per pixel: the deviation of the pixel's own
  first-flip severities.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from ..sampling import derive_seed
from ..transforms import MEAN, STD

STRIP_N, STRIP_ALPHA, STRIP_FPR = 100, 1.0, 0.1
SEVERITIES = (1, 2, 3, 4, 5)


def normalise(images: np.ndarray, device) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` -> ImageNet-normalised ``(B, 3, H, W) float32``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def probabilities(model: nn.Module, images: np.ndarray, device, chunk: int = 16) -> torch.Tensor:
    """Softmax ``(B, K, H, W)`` of uint8 images, in chunks (eval mode)."""
    out = []
    for i in range(0, len(images), chunk):
        out.append(model(normalise(images[i:i + chunk], device))["out"].float().softmax(1))
    return torch.cat(out)


def superimpose(image: np.ndarray, overlay: np.ndarray, alpha: float = STRIP_ALPHA) -> np.ndarray:
    """BackdoorBench's STRIP blend: ``cv2.addWeighted(image, 1, overlay, alpha, 0)`` (saturating uint8)."""
    if overlay.shape[:2] != image.shape[:2]:
        overlay = cv2.resize(overlay, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.addWeighted(image, 1.0, overlay, alpha, 0)


@torch.no_grad()
def strip_score(model: nn.Module, image: np.ndarray, overlays: Sequence[np.ndarray], device,
                alpha: float = STRIP_ALPHA) -> tuple[float, np.ndarray]:
    """(score, per-pixel score (H, W)) of one uint8 image: minus the mean entropy over the overlays."""
    blends = np.stack([superimpose(image, o, alpha) for o in overlays])
    p = probabilities(model, blends, device)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1).double().cpu().numpy()  # (N, H, W)
    per_overlay = np.sort(ent.reshape(len(ent), -1).mean(1))
    pixel = np.sort(ent, axis=0).sum(0) / len(ent)
    return -float(per_overlay.sum() / len(per_overlay)), -pixel


# --- TeCo-like ----------------------------------------------------------------------------------------
def _noise(img, s, rng):
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1] * 255
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _blur(img, s, _rng):
    sigma = (0.5, 1.0, 1.5, 2.0, 3.0)[s - 1]
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _jpeg(img, s, _rng):
    q = (80, 65, 50, 35, 20)[s - 1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _contrast(img, s, _rng):
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    m = img.reshape(-1, 3).mean(0)
    return np.clip((img - m) * c + m, 0, 255).astype(np.uint8)


def _brightness(img, s, _rng):
    b = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float64)
    hsv[..., 2] = np.clip(hsv[..., 2] + b * 255, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _pixelate(img, s, _rng):
    f = (0.6, 0.5, 0.4, 0.3, 0.25)[s - 1]
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


CORRUPTIONS = {"gaussian_noise": _noise, "gaussian_blur": _blur, "jpeg": _jpeg, "contrast": _contrast,
               "brightness": _brightness, "pixelate": _pixelate}


@torch.no_grad()
def teco_score(model: nn.Module, image: np.ndarray, device, seed: int = 0, key: int = 0) -> tuple[float, np.ndarray]:
    """(score, per-pixel score) of one uint8 image: the deviation over corruptions of the first-flip severity."""
    base = probabilities(model, image[None], device).argmax(1)[0]
    firsts = []
    for c, (name, fn) in enumerate(CORRUPTIONS.items()):
        rng = np.random.default_rng(derive_seed(seed, key, c))
        batch = np.stack([fn(image.astype(np.float64) if name == "gaussian_noise" else image, s, rng)
                          for s in SEVERITIES])
        pred = probabilities(model, batch, device).argmax(1)  # (5, H, W)
        changed = (pred != base[None]).cpu().numpy()
        first = np.where(changed.any(0), changed.argmax(0) + 1, len(SEVERITIES) + 1).astype(np.float64)
        firsts.append(first)
    f = np.stack(firsts)  # (C, H, W)
    return float(f.reshape(len(f), -1).mean(1).std()), f.std(0)


def trigger_window(manifest: dict, record: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """The trigger's pixels of a test-set sample as a boolean mask, when the manifest locates them."""
    trig = (manifest.get("config") or {}).get("trigger") or {}
    kind = trig.get("kind", "pattern")
    mask = np.zeros(shape, bool)
    if kind == "pattern" and record.get("top_left") is not None:
        (y, x), (h, w) = record["top_left"], trig["size"]
        mask[max(0, y):y + h, max(0, x):x + w] = True
    elif kind == "line":
        mask[: int(trig["size"][0])] = True
    else:
        return None
    return mask if mask.any() and not mask.all() else None
