"""Model registry: ``arch -> builder``. Every model returns ``{"out": logits at input size, "aux": ...}``.

| arch        | backbones                               | output stride                 |
|-------------|-----------------------------------------|-------------------------------|
| `pspnet`    | resnet18, resnet34, resnet50, resnet101 | 8 (default), 16, 32           |
| `deeplabv3` | resnet50, resnet101, mobilenet_v3_large | 8 (resnets), 16 (mobilenet)   |
| `fcn`       | resnet50, resnet101                     | 8                             |
| `lraspp`    | mobilenet_v3_large                      | 16 (its own, fixed)           |

and, from segmentation_models.pytorch (optional extra ``smp``, :mod:`segtrain.models.smp`): ``segformer``
(mit_b0..b2), ``deeplabv3plus``, ``unet``, ``upernet``, ``fpn`` (resnet18/34/50, mobilenet_v2, mit_b*).

torchvision models are always built with ``weights=None, weights_backbone=None``, smp models with
``encoder_weights=None``: nothing is downloaded. Pretrained backbones come from a local file through
:func:`load_backbone_weights`, whole models through :func:`load_model_weights`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import segmentation as tvseg

from poisongen.errors import choices

from ..checkpoint import _load_failure, _numpy_globals, state_mismatch
from ..errors import SegTrainError
from . import smp as smp_models
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


def _smp(arch: str):
    def build(num_classes, backbone, output_stride, aux):
        return smp_models.build(arch, num_classes, backbone, output_stride)

    return build


REGISTRY.update({arch: (_smp(arch), backbones, default, strides)
                 for arch, (_, backbones, default, strides) in smp_models.ARCHS.items()})
#: arch -> where its model comes from
SOURCES = {arch: "smp" if arch in smp_models.ARCHS else "torchvision" for arch in REGISTRY}
#: archs without an auxiliary head (their ``aux`` is ignored)
NO_AUX = ("lraspp", *smp_models.ARCHS)

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
    if SOURCES[arch] == "smp":
        smp_models.require(arch)
    return arch, backbone, os_


def build_model(arch: str, num_classes: int, backbone: str | None = None, output_stride: int | None = None,
                aux: bool = True) -> nn.Module:
    """Build a randomly initialised model (no download). Unknown arch/backbone -> SegTrainError."""
    arch, backbone, os_ = resolve(arch, backbone, output_stride)
    if arch in NO_AUX:
        aux = False
    return REGISTRY[arch][0](num_classes, backbone, os_, aux)


def build_meta_model(arch: str, num_classes: int, backbone: str | None = None, output_stride: int | None = None,
                     aux: bool = True) -> nn.Module:
    """The model on PyTorch's ``meta`` device (shapes only, no storage): for the memory estimate and the
    parameter counts. A builder that needs real values while building (smp's MiT encoders read their
    drop-path rates with ``.item()``) is built on the CPU and moved to ``meta``."""
    try:
        with torch.device("meta"):
            return build_model(arch, num_classes, backbone, output_stride, aux)
    except RuntimeError as exc:
        if "meta" not in str(exc):
            raise
    return build_model(arch, num_classes, backbone, output_stride, aux).to("meta")


def backbone_of(model: nn.Module) -> nn.Module:
    if not hasattr(model, "backbone"):
        raise SegTrainError(f"{type(model).__name__} has no backbone to load weights into")
    return model.backbone


#: classification heads of the files --backbone-weights takes (torchvision fc / classifier, timm head)
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")
#: prefixes a saved encoder's keys may carry (DataParallel, wrapper modules, a whole smp or segtrain model)
COMMON_PREFIXES = ("module.", "model.", "net.", "encoder.", "backbone.", "net.encoder.", "model.encoder.",
                   "features.")


def read_state_dict(path: str | Path, what: str = "weights") -> dict:
    """The tensors of a local ``.pth`` / ``.pt`` (torch.load, weights only) or ``.safetensors`` file; a
    dict holding ``state_dict`` or ``model`` is unwrapped. Any unreadable file -> one-line SegTrainError."""
    path = Path(path)
    if not path.is_file():
        raise SegTrainError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise SegTrainError(f"{what} {path}: reading .safetensors needs the safetensors package; install "
                                    f"it with 'pip install .[smp]'") from None
            obj = load_file(str(path), device="cpu")
        else:  # weights only, plus the NumPy types of a segtrain checkpoint's RNG state
            with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except SegTrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise SegTrainError(f"cannot read {what} {path}: {type(exc).__name__}: {_load_failure(exc)}") from None
    sd = _unwrap(obj, what)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _unwrap(obj, what: str = "weights") -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    raise SegTrainError(f"{what} file holds a {type(obj).__name__}, not a state dict")


def _strip(sd: dict, prefix: str) -> dict:
    if not prefix:
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def fit_prefix(sd: dict, own: dict) -> dict:
    """``sd`` with the common prefix removed that makes the most of its keys (with their shapes) match
    ``own``'s, and classification-head keys dropped."""
    def fits(d: dict) -> int:
        return sum(1 for k, v in d.items() if k in own and tuple(v.shape) == tuple(own[k].shape))

    candidates = [_strip(sd, p) for p in ("", *COMMON_PREFIXES) if not p or any(k.startswith(p) for k in sd)]
    best = max(candidates, key=fits)  # the first of the best: no stripping when nothing does better
    return {k: v for k, v in best.items() if k in own or not k.startswith(HEAD_PREFIXES)}


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a local encoder state dict into ``model.backbone``: torchvision classification weights
    (``resnet50-*.pth``, ``mobilenet_v2-*.pth``, ...), timm ResNets (torchvision's key names), smp encoders
    or a whole smp / segtrain model (its encoder part), as ``.pth`` or ``.safetensors``.

    Common prefixes (``module.``, ``model.``, ``encoder.``, ``backbone.``, ``features.``...) are stripped
    when that makes the keys fit, classification heads (``fc.``, ``classifier.``, ``head.``) dropped. Any
    missing, unexpected or wrongly shaped key -> one-line SegTrainError naming up to 3 of each. Returns
    ``{"loaded": n}``.
    """
    path = Path(path)
    bb = backbone_of(model)
    own = bb.state_dict()
    sd = fit_prefix(read_state_dict(path, "backbone weights"), own)
    problem = state_mismatch(own, sd)
    if problem:
        raise SegTrainError(f"backbone weights {path} do not fit the {type(model).__name__} backbone "
                            f"({type(bb).__name__}): {problem}")
    nn.Module.load_state_dict(bb, sd, strict=True)  # keys checked above; smp encoders override load_state_dict
    return {"loaded": len(sd)}


def load_model_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a whole model's weights (``--weights``): a segtrain checkpoint (``last.pt``) or a state dict of
    the same model (``.pth`` / ``.safetensors``; a ``module.`` prefix is stripped). Anything that does not
    fit -> one-line SegTrainError naming the missing, unexpected and wrongly shaped keys. Returns
    ``{"loaded": n}``."""
    own = model.state_dict()
    sd = read_state_dict(path, "model weights")
    if not any(k in own for k in sd):  # DataParallel's prefix; a bare smp model's state dict
        stripped = _strip(sd, "module.") or sd
        sd = max((stripped, {f"net.{k}": v for k, v in stripped.items()}),
                 key=lambda d: sum(k in own for k in d))
    problem = state_mismatch(own, sd)
    if problem:
        raise SegTrainError(f"model weights {path} do not fit the {type(model).__name__} model: {problem}")
    model.load_state_dict(sd, strict=True)
    return {"loaded": len(sd)}


__all__ = ["REGISTRY", "SOURCES", "PSPNet", "build_model", "load_backbone_weights", "load_model_weights", "resolve"]
