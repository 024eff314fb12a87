"""Rescale a whole dataset (``--scale F``, ``poisongen scale``): every split, every file, same layout.

The IBA paper trains on Cityscapes rescaled to 512x1024; a poisoned copy made at that scale must still
be a complete dataset in its own layout. Each file of the source has a *kind*, decided by its layout
and its path (:func:`file_kind`), and :func:`rescale_file` rewrites it by that kind:

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
copied as it is. An image file of no known kind is refused rather than guessed (it could be a label
that must never be interpolated). Everything here is a pure function of the source bytes and
``(F, jpeg_quality)``, so ``verify --src`` re-derives every byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .codecs import encode_palette_png, encode_png
from .errors import ConfigError, DatasetError

IMAGE, LABEL, POLYGONS, VOC_XML, COPY = "image", "label", "polygons", "voc_xml", "copy"
MAX_SCALE = 4.0  # beyond this an upscaled copy is mostly invented pixels (and 16x the disk)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VOC_LABEL_DIRS = ("SegmentationClass", "SegmentationClassAug", "SegmentationObject")


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


# --- which file is what ---------------------------------------------------------------------------
def _is_image(path: PurePosixPath) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


def _cityscapes_kind(p: PurePosixPath) -> str | None:
    top = p.parts[0]
    if p.name.endswith("_polygons.json"):
        return POLYGONS
    if top.startswith("gt") and p.suffix.lower() == ".png":  # gtFine, gtCoarse: label encodings
        return LABEL
    if "Img8bit" in top and _is_image(p):  # leftImg8bit, rightImg8bit, leftImg8bit_sequence
        return IMAGE
    return None


def _voc_kind(p: PurePosixPath) -> str | None:
    if "JPEGImages" in p.parts and _is_image(p):
        return IMAGE
    if any(d in p.parts for d in VOC_LABEL_DIRS) and p.suffix.lower() == ".png":
        return LABEL
    if "Annotations" in p.parts and p.suffix.lower() == ".xml":
        return VOC_XML
    return None


def _ade20k_kind(p: PurePosixPath) -> str | None:
    if "images" in p.parts and _is_image(p):
        return IMAGE
    if "annotations" in p.parts and p.suffix.lower() == ".png":
        return LABEL
    return None


def _folder_kind(p: PurePosixPath) -> str | None:
    if p.parts[0] == "images" and _is_image(p):
        return IMAGE
    if p.parts[0] == "masks" and p.suffix.lower() == ".png":
        return LABEL
    return None


#: layout name -> path rule; None from a rule means "not one of this layout's kinds"
RULES: dict[str, Callable[[PurePosixPath], str | None]] = {
    "cityscapes": _cityscapes_kind,
    "voc": _voc_kind,
    "ade20k": _ade20k_kind,
    "folder": _folder_kind,
}

KNOWN = {
    "cityscapes": "*Img8bit*/ images, gt*/ label PNGs, *_polygons.json",
    "voc": "JPEGImages/, SegmentationClass[Aug]/ and SegmentationObject/ PNGs, Annotations/*.xml",
    "ade20k": "images/ and annotations/ PNGs",
    "folder": "images/ and masks/ PNGs",
}


def file_kind(layout: str, rel: str) -> str:
    """The kind of a source file (relative POSIX path) in ``layout``; raises for an image file the
    layout does not know, which could be a label and must not be guessed."""
    p = PurePosixPath(rel)
    kind = RULES[layout](p)
    if kind is not None:
        return kind
    if _is_image(p):
        raise DatasetError(
            f"--scale cannot tell what {rel} is (a {layout} dataset rescales {KNOWN[layout]}); move it out "
            f"of the source or run without --scale"
        )
    return COPY


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


def rescale_file(
    src_root: Path, dst_root: Path, rel: str, kind: str, scale: float, jpeg_quality: int, link: str
) -> tuple[str, str, str]:
    """Rescale (or copy/link, per ``link``) ``src_root/rel`` to ``dst_root/rel``; return
    ``(rel, sha256 of the source, sha256 of the output)``."""
    src, dst = src_root / rel, dst_root / rel
    data = src.read_bytes()
    src_sha = hashlib.sha256(data).hexdigest()
    new = rescale_bytes(data, rel, kind, scale, jpeg_quality)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if new is not None:
        dst.write_bytes(new)
        return rel, src_sha, hashlib.sha256(new).hexdigest()
    if link == "hardlink":
        os.link(src, dst)
    elif link == "symlink":
        os.symlink(src.resolve(), dst)
    else:
        dst.write_bytes(data)
    return rel, src_sha, src_sha


# --- a whole tree ---------------------------------------------------------------------------------
@dataclass
class RescaledTree:
    """What :func:`rescale_tree` wrote: sha256 per file of the source and of the output, and which
    files were rewritten (the others are copies)."""

    source_files: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)


def _batch(src_root, dst_root, items, scale, jpeg_quality, link) -> list[tuple[str, str, str]]:
    import cv2

    cv2.setNumThreads(1)  # the parallelism is across files; OpenCV's own threads would oversubscribe
    return [rescale_file(src_root, dst_root, rel, kind, scale, jpeg_quality, link) for rel, kind in items]


def rescale_tree(
    src_root: Path,
    layout: str,
    files: list[str],
    dst_root: Path,
    scale: float,
    jpeg_quality: int,
    link: str = "copy",
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> RescaledTree:
    """Write every file of ``files`` (relative paths under ``src_root``) rescaled into ``dst_root``.
    Every file's kind is decided before anything is written, so an unknown image fails early."""
    from joblib import Parallel, delayed

    check_scale(scale)
    kinds = [(rel, file_kind(layout, rel)) for rel in files]
    # files in batches of similar work, so that process start-up and pickling stay small
    chunks = [kinds[i : i + 16] for i in range(0, len(kinds), 16)]
    results = Parallel(n_jobs=jobs, backend="loky" if jobs > 1 else "sequential", return_as="generator")(
        delayed(_batch)(src_root, dst_root, chunk, scale, jpeg_quality, link) for chunk in chunks
    )
    tree = RescaledTree()
    for chunk in results:
        for rel, src_sha, out_sha in chunk:
            tree.source_files[rel] = src_sha
            tree.files[rel] = out_sha
            if src_sha != out_sha:
                tree.rewritten.append(rel)
        if progress:
            progress(len(chunk))
    tree.rewritten.sort()
    return tree


def move_tree(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` into ``dst`` (same filesystem: renames only) and remove ``src``."""
    for entry in sorted(src.iterdir()):
        os.replace(entry, dst / entry.name)
    shutil.rmtree(src)


# --- the pipeline's side ----------------------------------------------------------------------------
SCALED_DIR = ".poisongen-scaled"  # inside the staging dir: the rescaled clean copy a run poisons
POISONED_DIR = ".poisongen-poisoned"  # inside the staging dir: poisoned files before they replace it


def check_sizes(ds, scale: float) -> None:
    """Fail early (nothing written) when ``scale`` is out of range or shrinks the first sample of a
    split to 0 px; every file is checked again when it is rescaled."""
    check_scale(scale)
    for split in ds.splits():
        first = ds.samples(split)[0]
        h, w = ds.read_label(first).shape
        scaled_size(h, w, scale, f"the images of split '{split}'")


def rescaled_copy(ds, dst: Path, scale: float, jpeg_quality: int, link: str, jobs: int, progress):
    """Write the whole dataset ``ds`` rescaled into ``dst`` and open it in the same layout.
    Returns ``(layout over dst, RescaledTree)``."""
    from .manifest import NAME

    files = [f for f in ds.all_files() if f != NAME]
    with progress("rescaling", len(files)) as adv:
        tree = rescale_tree(ds.root, ds.name, files, dst, scale, jpeg_quality, link, jobs, adv)
    return type(ds)(dst), tree


def rescaled_record(scale: float, tree: RescaledTree) -> dict:
    """The manifest's ``rescaled`` entry: the factor and the fingerprint of the rescaled clean dataset
    (equal to the ``output_fingerprint`` of ``poisongen scale`` with the same source and options)."""
    from .manifest import fingerprint

    return {"scale": scale, "fingerprint": fingerprint(tree.files), "files": len(tree.files),
            "rewritten": len(tree.rewritten)}


def write_scaled(
    ds,
    out: Path,
    scale: float,
    *,
    jpeg_quality: int = 95,
    link: str = "copy",
    jobs: int = 1,
    overwrite: bool = False,
    command: list[str] | None = None,
    progress=None,
    sign_key: bytes | None = None,
) -> tuple[dict, dict]:
    """``poisongen scale``: the clean dataset rescaled into ``out`` (staged, renamed at the end) with
    its own manifest (kind ``scale``; signed with ``sign_key`` if given). Returns (manifest, timings)."""
    import time
    from contextlib import nullcontext
    from datetime import datetime, timezone

    from . import manifest as mf
    from .codecs import encoder_settings
    from .config import LINKS
    from .errors import choices
    from .writer import check_out, staging

    out = Path(out)
    check_out(ds.root, out, overwrite)
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality {jpeg_quality} is outside 1..100")
    if link not in LINKS:
        raise ConfigError(f"unknown --link '{link}'; valid are {choices(LINKS)}")
    check_sizes(ds, scale)
    progress = progress or (lambda desc, total: nullcontext(None))
    t0 = time.perf_counter()
    with staging(out) as tmp:
        files = [f for f in ds.all_files() if f != mf.NAME]
        with progress("rescaling", len(files)) as adv:
            tree = rescale_tree(ds.root, ds.name, files, tmp, scale, jpeg_quality, link, jobs, adv)
        config = {"kind": "scale", "seed": None, "scale": scale, "jpeg_quality": jpeg_quality, "link": link}
        manifest = mf.build(
            config=config,
            command=list(command or []),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dataset={"layout": ds.name, "root": str(ds.root.resolve()), "classes": ds.meta.to_dict()},
            counts={"files": len(tree.files), "rewritten": len(tree.rewritten)},
            samples=[],
            skipped=[],
            unchanged=tree.files,
            source_files=tree.source_files,
            extra={"rescaled": rescaled_record(scale, tree), "encoders": encoder_settings()},
            sign_key=sign_key,
        )
        mf.save(manifest, tmp / mf.NAME)
    return manifest, {"scale": time.perf_counter() - t0}
