"""Paired image/label transforms.

Inputs: image ``(H, W, 3) uint8`` (numpy or tensor), label ``(H, W) uint8`` train ids (255 = ignore).
Outputs of the final step: image ``(3, H, W) float32`` ImageNet-normalised, label ``(H, W) int64``.

Randomness is drawn from torch's default generator, which segtrain seeds per sample from
``(seed, epoch, index)`` (``segtrain.engine.seeded``), so a run does not depend on ``--workers``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _as_tensors(image, label) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    lab = torch.from_numpy(np.ascontiguousarray(label)) if isinstance(label, np.ndarray) else label
    if img.dim() == 3 and img.shape[-1] == 3 and img.shape[0] != 3:
        img = img.permute(2, 0, 1)  # HWC -> CHW
    elif img.dim() == 3 and img.shape[-1] == 3 and img.shape[0] == 3 and isinstance(image, np.ndarray):
        img = img.permute(2, 0, 1)  # numpy input is always HWC
    return img.contiguous(), lab


class Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, image, label):
        for s in self.steps:
            image, label = s(image, label)
        return image, label


class ToTensor:
    """uint8 HWC numpy (or CHW tensor) -> CHW uint8 tensor, label -> int64 tensor."""

    def __call__(self, image, label):
        img, lab = _as_tensors(image, label)
        return img, lab.to(torch.int64)


class RandomScale:
    """Resize by a factor uniform in ``[lo, hi]``: bilinear image, nearest label."""

    def __init__(self, lo: float = 0.5, hi: float = 2.0):
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, image, label):
        img, lab = _as_tensors(image, label)
        s = self.lo + (self.hi - self.lo) * float(torch.rand(()))
        h, w = lab.shape[-2:]
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) == (h, w):
            return img, lab
        if img.dtype == torch.uint8:
            # torch's uint8 bilinear kernel (fixed-point weights) gives the same bytes for any thread count;
            # the float32 kernel does not (1 ulp, enough to flip a rounding), which would make a run depend
            # on --workers (workers run single-threaded)
            img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        else:
            img = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        lab = F.interpolate(lab[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(lab.dtype)
        return img, lab


class RandomCrop:
    """Crop ``(h, w)``; smaller inputs are padded first (image with 0, label with 255)."""

    def __init__(self, size: tuple[int, int]):
        self.h, self.w = int(size[0]), int(size[1])

    def __call__(self, image, label):
        img, lab = _as_tensors(image, label)
        h, w = lab.shape[-2:]
        ph, pw = max(0, self.h - h), max(0, self.w - w)
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE)
            h, w = lab.shape[-2:]
        y = int(torch.randint(0, h - self.h + 1, ()))
        x = int(torch.randint(0, w - self.w + 1, ()))
        return img[:, y : y + self.h, x : x + self.w], lab[y : y + self.h, x : x + self.w]


class RandomHFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label):
        img, lab = _as_tensors(image, label)
        if float(torch.rand(())) < self.p:
            img, lab = img.flip(-1), lab.flip(-1)
        return img, lab


class Normalize:
    """uint8 CHW -> float32 ImageNet-normalised; label -> int64."""

    def __call__(self, image, label):
        img, lab = _as_tensors(image, label)
        img = img.float().div_(255.0)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        return (img - mean) / std, lab.to(torch.int64)


def train_transform(crop: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), flip: bool = True) -> Compose:
    """Random scale -> random crop (pad 0 / 255) -> random horizontal flip -> normalise."""
    steps = [ToTensor()]
    if scale != (1.0, 1.0):
        steps.append(RandomScale(*scale))
    steps.append(RandomCrop(crop))
    if flip:
        steps.append(RandomHFlip())
    steps.append(Normalize())
    return Compose(steps)


def eval_transform() -> Compose:
    """Normalise only (whole image)."""
    return Compose([ToTensor(), Normalize()])
