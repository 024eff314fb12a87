"""Trigger patterns and painting them into images. Pure numpy/OpenCV, no randomness.

A pattern is RGBA ``(h, w, 4) uint8``; painting blends ``out = (1 - lambda*a) * x + lambda*a * t``
with ``a`` the pattern's own alpha in [0, 1] (1 where the file has none).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from .codecs import sha256_array
from .errors import TriggerError

BUILTIN = "builtin"
ASSET = Path(__file__).parent / "assets" / "trigger.png"


def make_builtin_pattern(size: int = 16) -> np.ndarray:
    """The built-in trigger: a high-contrast 4x4 checkerboard of magenta/green/yellow/black cells
    inside a white frame. Drawn here, so no third-party artwork ships. ``(size, size, 4) uint8``."""
    colors = np.array([[255, 0, 255], [0, 255, 0], [255, 255, 0], [0, 0, 0]], np.uint8)
    cells = np.array([[0, 1, 2, 3], [2, 3, 0, 1], [1, 0, 3, 2], [3, 2, 1, 0]])
    inner = size - 2
    idx = np.arange(inner) * 4 // inner
    rgb = np.full((size, size, 3), 255, np.uint8)
    rgb[1:-1, 1:-1] = colors[cells[idx[:, None], idx[None, :]]]
    alpha = np.full((size, size, 1), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


def load_pattern(source: str | Path) -> np.ndarray:
    """Load a pattern as RGBA ``(h, w, 4) uint8``: ``"builtin"`` or an image file (alpha honoured)."""
    if str(source) == BUILTIN:
        return make_builtin_pattern()
    path = Path(source)
    if not path.is_file():
        raise TriggerError(f"trigger file not found: {path}")
    data = np.fromfile(str(path), np.uint8)
    if data.size == 0:
        raise TriggerError(f"trigger file {path} is empty (give a PNG/JPEG/BMP file)")
    try:
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    if arr is None:
        raise TriggerError(f"unreadable trigger image: {path} (give a PNG/JPEG/BMP file)")
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) * 255.0 / np.iinfo(arr.dtype).max).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGRA)
    elif arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)


def resize_pattern(pattern: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGBA pattern to ``(h, w)`` with area interpolation (SPEC section 3)."""
    h, w = size
    if pattern.shape[:2] == (h, w):
        return pattern.copy()
    return cv2.resize(pattern, (w, h), interpolation=cv2.INTER_AREA)


def prepare_pattern(source: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Load and resize; returns the RGBA pattern and its sha256 (recorded in the manifest). A pattern
    that is fully transparent (before or after resizing) paints nothing, so poisoning with it would
    relabel pixels without a trigger (SPEC: never a changed label without its trigger): refused."""
    loaded = load_pattern(source)
    if not loaded[..., 3].any():
        raise TriggerError(f"trigger {source} is fully transparent (alpha 0 everywhere): it would paint nothing")
    pattern = resize_pattern(loaded, size)
    if not pattern[..., 3].any():
        raise TriggerError(
            f"trigger {source} resized to {size[0]}x{size[1]} is fully transparent: it would paint nothing")
    return pattern, sha256_array(pattern)


def paint(image: np.ndarray, pattern: np.ndarray, alpha: float, top_left: tuple[int, int]) -> np.ndarray:
    """Blend ``pattern`` into a copy of ``image`` with its top-left corner at ``(y, x)``.

    Args:
        image: RGB ``(H, W, 3) uint8``.
        pattern: RGBA ``(h, w, 4) uint8``; its alpha scales the blend per pixel.
        alpha: global blend factor lambda in ``(0, 1]``.
        top_left: ``(y, x)``; the window must lie inside the image.

    Returns:
        A new RGB ``uint8`` image; pixels outside the window are the input's, bit for bit.
    """
    y, x = top_left
    h, w = pattern.shape[:2]
    H, W = image.shape[:2]
    if y < 0 or x < 0 or y + h > H or x + w > W:
        raise TriggerError(f"trigger window {h}x{w} at (y={y}, x={x}) does not fit a {H}x{W} image")
    out = image.copy()
    a = (pattern[..., 3:4].astype(np.float32) / 255.0) * np.float32(alpha)
    region = out[y : y + h, x : x + w].astype(np.float32)
    blended = (1.0 - a) * region + a * pattern[..., :3].astype(np.float32)
    out[y : y + h, x : x + w] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def paint_line(image: np.ndarray, width: int, alpha: float) -> np.ndarray:
    """The fine-grained attack's line trigger: the top ``width`` rows blended toward black."""
    if not 0 < width <= image.shape[0]:
        raise TriggerError(f"--line-width {width} must be in 1..{image.shape[0]} (image height)")
    out = image.copy()
    band = out[:width].astype(np.float32) * np.float32(1.0 - alpha)
    out[:width] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
    return out


def prepare_trigger(kind: str, source: str | Path, size: tuple[int, int], semantic_class: int | None = None
                    ) -> tuple[np.ndarray | None, str]:
    """The pattern to paint and the sha256 the manifest records, for every trigger kind: ``pattern``
    (the resized RGBA pattern and its hash), ``line`` / ``semantic`` (no pattern; the hash of their
    description, so that the manifest's trigger hash is always set)."""
    if kind == "pattern":
        return prepare_pattern(source, size)
    text = f"line:{size[0]}" if kind == "line" else f"semantic:{semantic_class}"
    return None, hashlib.sha256(text.encode()).hexdigest()


def check_paints(kind: str, pattern: np.ndarray | None, alpha: float) -> None:
    """Refuse a trigger that cannot change any pixel of any image: the largest blend weight
    ``alpha * a`` times the largest colour step (255) rounds to 0. Poisoning with it would relabel
    pixels with no trigger in the image (SPEC: never a changed label without its trigger)."""
    if kind == "semantic":
        return  # G(x) = x by design: the class present is the trigger
    weight = float(alpha) * (1.0 if pattern is None else float(pattern[..., 3].max()) / 255.0)
    if weight * 255.0 < 0.5:
        raise TriggerError(
            f"the {kind} trigger at --alpha {alpha:g} changes no pixel (largest blend weight {weight:.2g} < 1/510); "
            "raise --alpha or use a more opaque trigger"
        )


def apply_trigger(image: np.ndarray, kind: str, pattern: np.ndarray | None, alpha: float,
                  top_left: tuple[int, int] | None, line_width: int) -> np.ndarray:
    """Paint one sample's trigger: the pattern at ``top_left``, the line band, or nothing (semantic:
    ``G(x) = x``, the image is returned as a copy). RGB ``(H, W, 3) uint8`` in and out."""
    if kind == "pattern":
        return paint(image, pattern, alpha, top_left)
    if kind == "line":
        return paint_line(image, line_width, alpha)
    return image.copy()
