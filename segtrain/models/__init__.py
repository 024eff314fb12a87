"""Model registry: ``arch -> builder``. Every model returns ``{"out": logits at input size, "aux": ...}``.

| arch        | backbones                               | output stride                 |
|-------------|-----------------------------------------|-------------------------------|
| `pspnet`    | resnet18, resnet34, resnet50, resnet101 | 8 (default), 16, 32           |
| `deeplabv3` | resnet50, resnet101, mobilenet_v3_large | 8 (resnets), 16 (mobilenet)   |
| `fcn`       | resnet50, resnet101                     | 8                             |
| `lraspp`    | mobilenet_v3_large                      | 16 (its own, fixed)           |

torchvision models are always built with ``weights=None, weights_backbone=None``: nothing is downloaded.
Pretrained backbones come from a local file through :func:`load_backbone_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import segmentation as tvseg

from poisongen.errors import choices

from ..errors import SegTrainError
from .pspnet import PSPNet


def _pspnet(num_classes, backbone, output_stride, aux):
    return PSPNet(num_classes, backbone, output_stride or 8, aux)


def _tv(prefix: str, aux_ok: bool = True):
    def build(num_classes, backbone, output_stride, aux):
        fn = getattr(tvseg, f"{prefix}_{backbone}")
        kw = {"aux_loss": aux} if aux_ok else {}
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, **kw)

    return build


#: arch -> (builder, valid backbones, default backbone, {backbone: valid output strides})
REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...], str, dict[str, tuple[int, ...]]]] = {
    "pspnet": (_pspnet, ("resnet18", "resnet34", "resnet50", "resnet101"), "resnet50",
               {b: (8, 16, 32) for b in ("resnet18", "resnet34", "resnet50", "resnet101")}),
    "deeplabv3": (_tv("deeplabv3"), ("resnet50", "resnet101", "mobilenet_v3_large"), "resnet50",
                  {"resnet50": (8,), "resnet101": (8,), "mobilenet_v3_large": (16,)}),
    "fcn": (_tv("fcn"), ("resnet50", "resnet101"), "resnet50", {"resnet50": (8,), "resnet101": (8,)}),
    "lraspp": (_tv("lraspp", aux_ok=False), ("mobilenet_v3_large",), "mobilenet_v3_large",
               {"mobilenet_v3_large": (16,)}),
}


#: short names accepted for --backbone
ALIASES = {"mobilenet_v3": "mobilenet_v3_large"}


def resolve(arch: str, backbone: str | None, output_stride: int | None) -> tuple[str, str, int]:
    """Check arch/backbone/output stride; fill defaults; expand :data:`ALIASES`. Raises a one-line
    SegTrainError."""
    arch = arch.lower()
    if arch not in REGISTRY:
        raise SegTrainError(f"unknown arch '{arch}'; valid archs are {choices(REGISTRY)}")
    _, backbones, default, strides = REGISTRY[arch]
    backbone = (backbone or default).lower()
    backbone = ALIASES.get(backbone, backbone)
    if backbone not in backbones:
        raise SegTrainError(f"unknown backbone '{backbone}' for {arch}; valid backbones are {choices(backbones)}")
    valid = strides[backbone]
    os_ = output_stride or valid[0]
    if os_ not in valid:
        raise SegTrainError(f"output stride {os_} is not available for {arch}/{backbone}; valid are {choices(valid)}")
    return arch, backbone, os_


def build_model(arch: str, num_classes: int, backbone: str | None = None, output_stride: int | None = None,
                aux: bool = True) -> nn.Module:
    """Build a randomly initialised model (no download). Unknown arch/backbone -> SegTrainError."""
    arch, backbone, os_ = resolve(arch, backbone, output_stride)
    if arch == "lraspp":
        aux = False
    return REGISTRY[arch][0](num_classes, backbone, os_, aux)


def backbone_of(model: nn.Module) -> nn.Module:
    if not hasattr(model, "backbone"):
        raise SegTrainError(f"{type(model).__name__} has no backbone to load weights into")
    return model.backbone


def _unwrap(obj) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    raise SegTrainError(f"backbone weights file holds a {type(obj).__name__}, not a state dict")


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a local torchvision classification state dict (``resnet50-*.pth``, ``mobilenet_v3_large-*.pth``,
    or a dict with ``state_dict``/``model``) into ``model.backbone``.

    Classifier keys (``fc.*``, ``classifier.*``) are dropped; a ``features.`` prefix is stripped for
    MobileNet backbones. Any missing, unexpected or wrongly shaped key -> one-line SegTrainError listing
    up to 3 of them. Returns ``{"loaded": n}``.
    """
    path = Path(path)
    if not path.is_file():
        raise SegTrainError(f"backbone weights file not found: {path}")
    try:
        sd = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except SegTrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise SegTrainError(f"cannot read backbone weights {path}: {type(exc).__name__}: {exc}") from None
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
    bb = backbone_of(model)
    own = bb.state_dict()
    if not any(k in own for k in sd) and any(k.startswith("features.") for k in sd):
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if shape:
            parts.append(f"{len(shape)} of another shape ({', '.join(shape[:3])})")
        raise SegTrainError(f"backbone weights {path} do not fit the {type(model).__name__} backbone: "
                             + "; ".join(parts))
    bb.load_state_dict(sd, strict=True)
    return {"loaded": len(sd)}


__all__ = ["REGISTRY", "PSPNet", "build_model", "load_backbone_weights", "resolve"]
