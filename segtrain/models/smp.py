"""segmentation_models.pytorch (smp) as the second model source: SegFormer, DeepLabV3+, UNet, UPerNet, FPN.

smp is an optional extra (``pip install .[smp]``); it is imported only when one of these models is built,
so segtrain works without it and ``--arch segformer`` without it is one line naming the extra.

* Encoders are always built with ``encoder_weights=None``: nothing is downloaded. Pretrained encoders come
  from a local file (``--backbone-weights``, :func:`segtrain.models.load_backbone_weights`), loaded into
  ``model.backbone`` (the smp model's ``encoder``).
* smp models need input sides divisible by 32 (the encoder's total stride). :class:`SmpSegmenter` pads
  the normalised image at the bottom and right to the next multiple of 32 with 0 (the mean colour after
  ImageNet normalisation) and crops the logits back to the input size. Training loss and every metric are
  therefore computed on exactly the label's pixels: the padded area never reaches the loss (as if the
  label were padded with the ignore index) nor a confusion matrix.
* Decoders whose logits are not at the input resolution (SegFormer's and UPerNet's heads at 1/4 in some
  smp versions) are bilinearly upsampled to the padded input size before the crop, so the loss and the
  metrics always see logits at label size.
* ``forward`` returns ``{"out": logits}`` like the torchvision models (no auxiliary head: the engine's
  aux loss is skipped).
"""

from __future__ import annotations

import importlib.util

import torch.nn.functional as F
from torch import nn

from ..errors import SegTrainError

PAD_MULTIPLE = 32
INSTALL_HINT = "pip install .[smp]"

RESNETS = ("resnet18", "resnet34", "resnet50")
MITS = ("mit_b0", "mit_b1", "mit_b2")

#: arch -> (smp class name, backbones, default backbone, {backbone: output strides}); the first stride is
#: the default. DeepLabV3+ dilates its encoder (output stride 16 or 8); the others run at stride 32.
ARCHS: dict[str, tuple[str, tuple[str, ...], str, dict[str, tuple[int, ...]]]] = {
    "segformer": ("Segformer", MITS, "mit_b0", {b: (32,) for b in MITS}),
    "deeplabv3plus": ("DeepLabV3Plus", (*RESNETS, "mobilenet_v2"), "resnet50",
                      {b: (16, 8) for b in (*RESNETS, "mobilenet_v2")}),
    "unet": ("Unet", (*RESNETS, "mobilenet_v2"), "resnet34", {b: (32,) for b in (*RESNETS, "mobilenet_v2")}),
    "upernet": ("UPerNet", (*RESNETS, *MITS), "resnet50", {b: (32,) for b in (*RESNETS, *MITS)}),
    "fpn": ("FPN", (*RESNETS, "mobilenet_v2", *MITS), "resnet34",
            {b: (32,) for b in (*RESNETS, "mobilenet_v2", *MITS)}),
}


def available() -> bool:
    """segmentation_models.pytorch is installed (checked without importing it)."""
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


def require(arch: str) -> None:
    """Raise a one-line SegTrainError naming the extra when smp is not installed."""
    if not available():
        raise SegTrainError(f"--arch {arch} needs segmentation_models.pytorch, which is not installed; install "
                            f"it with '{INSTALL_HINT}'")


class SmpSegmenter(nn.Module):
    """An smp model behind segtrain's interface: any input size in, ``{"out": logits at input size}`` out.

    ``backbone`` is the smp encoder (what ``--backbone-weights`` loads into); ``net`` the whole smp model.
    """

    def __init__(self, net: nn.Module, multiple: int = PAD_MULTIPLE):
        super().__init__()
        self.net = net
        self.multiple = multiple

    @property
    def backbone(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # bottom/right, value 0 = the mean colour after normalisation
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": logits[..., :h, :w]}


def build(arch: str, num_classes: int, backbone: str, output_stride: int) -> SmpSegmenter:
    """Build an smp model with a randomly initialised encoder (``encoder_weights=None``: no download)."""
    require(arch)
    import segmentation_models_pytorch as smp

    cls = getattr(smp, ARCHS[arch][0])
    kw = {"encoder_output_stride": output_stride} if arch == "deeplabv3plus" else {}
    net = cls(encoder_name=backbone, encoder_weights=None, classes=num_classes, **kw)
    return SmpSegmenter(net)
