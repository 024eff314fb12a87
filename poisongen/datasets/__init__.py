"""Dataset layouts: one module each, one registry, layout detection and ``--src`` resolution."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError, choices
from .ade20k import ADE20K
from .base import IGNORE, ClassInfo, DatasetMeta, Layout, LoadedSample, Sample
from .cityscapes import Cityscapes
from .folder import Folder
from .voc import VOC

#: layout name -> class. Detection tries them in this order.
LAYOUTS: dict[str, type[Layout]] = {
    "cityscapes": Cityscapes,
    "voc": VOC,
    "ade20k": ADE20K,
    "folder": Folder,
}

#: names accepted by ``--src NAME`` -> folder names tried under $POISONGEN_DATA
KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "cityscapes": ("cityscapes", "Cityscapes"),
    "voc": ("voc", "VOCdevkit", "VOC2012", "VOCdevkit/VOC2012"),
    "ade20k": ("ade20k", "ADEChallengeData2016", "ADE20K"),
    "synthetic": ("synthetic",),
}

__all__ = [
    "IGNORE", "ClassInfo", "DatasetMeta", "Layout", "LoadedSample", "Sample", "LAYOUTS", "KNOWN_NAMES",
    "data_dir", "detect_layout", "open_dataset", "resolve_src",
]


def data_dir() -> Path:
    """Where ``--src NAME`` looks: ``$POISONGEN_DATA``, default ``./data``."""
    return Path(os.environ.get("POISONGEN_DATA", "data"))


def detect_layout(root: Path) -> type[Layout]:
    for cls in LAYOUTS.values():
        if cls.detect(root):
            return cls
    looked = "; ".join(cls.expected() for cls in LAYOUTS.values())
    raise DatasetError(f"no known dataset layout at {root}; looked for {looked}")


def resolve_src(src: str | Path, generate: bool = True) -> Path:
    """Turn ``--src`` into a dataset root.

    An existing path is used as is. A known name (``cityscapes``, ``voc``, ``ade20k``,
    ``synthetic``) resolves under :func:`data_dir`; ``synthetic`` is generated there on first use.
    """
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise DatasetError(f"--src must be a dataset folder, got a file: {path}")
        return path
    name = str(src).lower()
    if name in KNOWN_NAMES:
        base = data_dir()
        tried = [base / d for d in KNOWN_NAMES[name]]
        for cand in tried:
            if cand.is_dir():
                return cand
        if name == "synthetic" and generate:
            from .synthetic import generate_default

            return generate_default(base / "synthetic")
        raise DatasetError(
            f"dataset '{name}' not found; looked in {', '.join(str(t) for t in tried)} "
            f"(set $POISONGEN_DATA or pass --src PATH)"
        )
    raise DatasetError(
        f"--src '{src}' does not exist; give a dataset folder or one of {choices(KNOWN_NAMES)}"
    )


def open_dataset(src: str | Path, layout: str | None = None, generate: bool = True) -> Layout:
    """Open a dataset by path or known name, detecting its layout unless ``layout`` is given."""
    root = resolve_src(src, generate=generate)
    if layout:
        key = layout.lower()
        if key == "synthetic":
            key = "cityscapes"  # the synthetic set is written in the Cityscapes layout
        if key not in LAYOUTS:
            raise DatasetError(f"unknown layout '{layout}'; valid layouts are {choices(list(LAYOUTS) + ['synthetic'])}")
        cls = LAYOUTS[key]
        if not cls.detect(root):
            raise DatasetError(f"{root} is not a {key} dataset; expected {cls.expected()}")
        return cls(root)
    return detect_layout(root)(root)
