"""Rescale a whole dataset (``--scale F``, ``poisongen scale``): every split, every file, same layout.

The IBA paper trains on Cityscapes rescaled to 512x1024; a poisoned copy made at that scale must still
be a complete dataset in its own layout. Each file of the source has a *kind*, decided by its layout
and its path (``Layout.file_kind``), and :func:`rescale_bytes` rewrites its bytes by that kind:

=========  ====================================================================================
kind       what happens
=========  ====================================================================================
image      area interpolation when shrinking, bilinear when enlarging; same format, channels
           and bit depth; JPEG re-encoded at the recorded ``jpeg_quality``
label      nearest neighbour only (pixel centres aligned), written as PNG with the same mode,
           bit depth and palette: the output holds only values the input holds
polygons   Cityscapes ``*_polygons.json``: every vertex and ``imgHeight``/``imgWidth``
voc_xml    VOC ``Annotations/*.xml``: ``<size>`` and every ``<bndbox>``
copy       anything else that is not an image (lists, dataset.yaml, READMEs): copied as it is
=========  ====================================================================================

A new size is ``floor(H * F + 0.5) x floor(W * F + 0.5)``; a file whose size does not change is
copied as it is. Everything here is a pure function of the source bytes and ``(F, jpeg_quality)``, so
``verify --src`` re-derives every byte; writing the rescaled tree is ``writer.rescale_tree``, and the
``--scale`` pipeline (and ``poisongen scale``) is in ``pipeline``.
"""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

import numpy as np

from .codecs import encode_palette_png, encode_png
from .datasets.base import IMAGE, LABEL, POLYGONS, VOC_XML
from .errors import ConfigError, DatasetError

MAX_SCALE = 4.0  # beyond this an upscaled copy is mostly invented pixels (and 16x the disk)


def check_scale(scale: float) -> None:
    """Raise unless ``0 < scale <= MAX_SCALE``."""
    if not (math.isfinite(scale) and 0.0 < scale <= MAX_SCALE):
        raise ConfigError(f"--scale {scale} is outside (0, {MAX_SCALE:g}]; e.g. 0.5 turns 1024x2048 into 512x1024")


def scaled_size(h: int, w: int, scale: float, what: str = "the images") -> tuple[int, int]:
    """``(floor(h*F + 0.5), floor(w*F + 0.5))``; raises when a side would be 0 px."""
    nh, nw = math.floor(h * scale + 0.5), math.floor(w * scale + 0.5)
    if nh < 1 or nw < 1:
        raise ConfigError(
            f"--scale {scale} shrinks {what} ({h}x{w}) to {nh}x{nw} px; the smallest allowed scale for "
            f"them is {0.5 / min(h, w):.4g}"
        )
    return nh, nw


def nearest_indices(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of every destination index for nearest-neighbour resizing with pixel centres
    aligned (``floor((j + 0.5) * n_src / n_dst)``, as PIL's NEAREST), in exact integer arithmetic."""
    j = np.arange(n_dst, dtype=np.int64)
    return np.minimum((2 * j + 1) * n_src // (2 * n_dst), n_src - 1)


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W[, C])`` to ``size`` (h, w); any dtype; only input values."""
    ys = nearest_indices(arr.shape[0], size[0])
    xs = nearest_indices(arr.shape[1], size[1])
    return np.ascontiguousarray(arr[ys[:, None], xs[None, :]])


def rescale_pair(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """An ``(H, W, 3)`` image and its ``(H, W)`` label as ``--scale`` rescales their files (the label
    exactly; the image up to the re-encoding of a JPEG), for displays."""
    import cv2

    size = scaled_size(label.shape[0], label.shape[1], scale)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interp), resize_nearest(label, size)


# --- one file -------------------------------------------------------------------------------------
def _decode(data: bytes, flags: int, rel: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if arr is None:
        raise DatasetError(f"unreadable or corrupt image: {rel}")
    return arr


def _encode(arr: np.ndarray, suffix: str, jpeg_quality: int) -> bytes:
    """Encode an OpenCV-ordered array (gray, BGR, BGRA; 8 or 16 bit) in the format of ``suffix``."""
    import cv2

    suffix = suffix.lower()
    if suffix == ".png":
        return encode_png(arr)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(".jpg" if suffix == ".jpeg" else suffix, arr, params)
    if not ok:
        raise RuntimeError(f"encoding {suffix} failed")
    return buf.tobytes()


def _image(data: bytes, rel: str, scale: float, jpeg_quality: int) -> bytes | None:
    import cv2

    suffix = PurePosixPath(rel).suffix.lower()
    # JPEGs are read as the layouts read them (EXIF orientation applied) and written without EXIF;
    # other formats keep their channels (alpha) and bit depth.
    flags = cv2.IMREAD_COLOR if suffix in (".jpg", ".jpeg") else cv2.IMREAD_UNCHANGED
    arr = _decode(data, flags, rel)
    size = scaled_size(arr.shape[0], arr.shape[1], scale, rel)
    if size == arr.shape[:2]:
        return None
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return _encode(cv2.resize(arr, (size[1], size[0]), interpolation=interp), suffix, jpeg_quality)


def _label(data: bytes, rel: str, scale: float) -> bytes | None:
    import cv2

    if PurePosixPath(rel).suffix.lower() != ".png":
        raise DatasetError(f"label {rel} is not a PNG; --scale rewrites labels losslessly only")
    if data[25:26] == b"\x03":  # IHDR colour type 3: a palette PNG; keep indices and palette
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            index, palette = np.array(im, dtype=np.uint8), im.getpalette()
        size = scaled_size(index.shape[0], index.shape[1], scale, rel)
        if size == index.shape:
            return None
        return encode_palette_png(resize_nearest(index, size), palette)
    arr = _decode(data, cv2.IMREAD_UNCHANGED, rel)  # gray 8/16-bit, BGR(A): kept as they are
    size = scaled_size(arr.shape[0], arr.shape[1], scale, rel)
    if size == arr.shape[:2]:
        return None
    return _encode(resize_nearest(arr, size), ".png", 0)


def _map_coord(v: float, n_src: int, n_dst: int) -> float:
    """A pixel coordinate under the same centre-aligned mapping as the images and labels."""
    return (v + 0.5) * n_dst / n_src - 0.5


def _polygons(data: bytes, rel: str, scale: float) -> bytes | None:
    text = data.decode("utf-8")
    doc = json.loads(text)
    h, w = int(doc["imgHeight"]), int(doc["imgWidth"])
    nh, nw = scaled_size(h, w, scale, rel)
    if (nh, nw) == (h, w):
        return None

    def scaled(v, n_src, n_dst):
        u = _map_coord(v, n_src, n_dst)
        return math.floor(u + 0.5) if isinstance(v, int) else round(u, 4)

    doc["imgHeight"], doc["imgWidth"] = nh, nw
    for obj in doc.get("objects", []):
        obj["polygon"] = [[scaled(x, w, nw), scaled(y, h, nh)] for x, y in obj.get("polygon", [])]
    lines = text.splitlines()
    indent = len(lines[1]) - len(lines[1].lstrip(" ")) if len(lines) > 1 else 0
    out = json.dumps(doc, indent=indent or None, ensure_ascii=False)
    return (out + ("\n" if text.endswith("\n") else "")).encode("utf-8")


def _voc_xml(data: bytes, rel: str, scale: float) -> bytes | None:
    """``<size>`` and every ``<bndbox>`` (1-based inclusive pixel indices, as VOC writes them): the box
    edges ``xmin - 1`` and ``xmax`` are scaled and rounded, so a box keeps covering the same pixels."""
    text = data.decode("utf-8")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DatasetError(f"unreadable annotation {rel}: {exc}") from None
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None  # nothing to scale against: keep the file as it is
    w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    nh, nw = scaled_size(h, w, scale, rel)
    if (nh, nw) == (h, w):
        return None
    size.find("width").text, size.find("height").text = str(nw), str(nh)
    for box in root.iter("bndbox"):
        for lo, hi, n_src, n_dst in (("xmin", "xmax", w, nw), ("ymin", "ymax", h, nh)):
            a, b = box.find(lo), box.find(hi)
            if a is None or b is None:
                continue
            first = min(max(math.floor((float(a.text) - 1) * n_dst / n_src + 0.5) + 1, 1), n_dst)
            last = min(max(math.floor(float(b.text) * n_dst / n_src + 0.5), first), n_dst)
            a.text, b.text = str(first), str(last)
    head = text[: text.index("?>") + 2] + "\n" if text.lstrip().startswith("<?xml") else ""
    out = head + ET.tostring(root, encoding="unicode")
    return (out + ("\n" if text.endswith("\n") and not out.endswith("\n") else "")).encode("utf-8")


def rescale_bytes(data: bytes, rel: str, kind: str, scale: float, jpeg_quality: int) -> bytes | None:
    """The rescaled bytes of one file of the given kind, or None when it is to be copied as it is."""
    if kind == IMAGE:
        return _image(data, rel, scale, jpeg_quality)
    if kind == LABEL:
        return _label(data, rel, scale)
    if kind == POLYGONS:
        return _polygons(data, rel, scale)
    if kind == VOC_XML:
        return _voc_xml(data, rel, scale)
    return None
