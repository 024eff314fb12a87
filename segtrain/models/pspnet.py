"""PSPNet (Zhao et al., 2017) on a torchvision ResNet with a dilated backbone.

* Backbone: torchvision ``resnet18/34/50/101`` built with ``weights=None``; its state-dict keys are the
  torchvision ones (``conv1.weight``, ``layer1.0.conv1.weight``, ...), so a local torchvision
  checkpoint loads with :func:`segtrain.models.load_backbone_weights`.
* Output stride 8 dilates layer3 (2) and layer4 (4), 16 dilates layer4 (2), 32 keeps the classifier
  strides. Bottleneck nets (50/101) use torchvision's ``replace_stride_with_dilation``. torchvision's
  ``BasicBlock`` (resnet18/34) rejects ``dilation > 1``, so for those the layer is patched in place:
  every stride-2 conv of the layer gets stride 1 and every 3x3 conv gets dilation = padding = d (all
  blocks of the layer, including the first; torchvision's Bottleneck keeps the previous dilation in
  the first block of a dilated layer: a negligible difference).
* Pyramid pooling module: bins (1, 2, 3, 6), each adaptive-avg-pool -> 1x1 conv (C/4) -> BN -> ReLU,
  bilinearly upsampled and concatenated with the features; then 3x3 conv -> BN -> ReLU -> dropout 0.1
  -> 1x1 classifier. Head width 512 (256 for resnet18/34).
* Auxiliary FCN head on layer3 (3x3 conv C/4 -> BN -> ReLU -> dropout 0.1 -> 1x1), used when
  ``aux=True`` (loss weight 0.4 in training).

``forward`` returns ``{"out": logits at input size, "aux": logits at input size}`` ("aux" only with
``aux=True`` and in training mode or when asked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

RESNETS = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34, "resnet50": resnet.resnet50,
           "resnet101": resnet.resnet101}
DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


def _dilate_layer(layer: nn.Sequential, d: int) -> None:
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation, m.padding = (d, d), (d, d)


class ResNetBackbone(nn.Module):
    """The convolutional part of a torchvision ResNet (no avgpool/fc); returns (layer3, layer4)."""

    def __init__(self, name: str, output_stride: int):
        super().__init__()
        rep = DILATION[output_stride]
        basic = name in ("resnet18", "resnet34")
        net = RESNETS[name](weights=None) if basic else RESNETS[name](weights=None, replace_stride_with_dilation=rep)
        if basic:
            d = 1
            for flag, layer in zip(rep, (net.layer2, net.layer3, net.layer4), strict=True):
                if flag:
                    d *= 2
                    _dilate_layer(layer, d)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = (256, 512) if basic else (1024, 2048)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)


def _cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class PPM(nn.Module):
    def __init__(self, cin: int, bins=(1, 2, 3, 6)):
        super().__init__()
        red = cin // len(bins)
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), _cbr(cin, red, 1)) for b in bins)
        self.out_channels = cin + red * len(bins)

    def forward(self, x):
        size = x.shape[-2:]
        feats = [x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat(feats, 1)


class PSPNet(nn.Module):
    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 8, aux: bool = True):
        super().__init__()
        self.backbone = ResNetBackbone(backbone, output_stride)
        c3, c4 = self.backbone.channels
        width = 256 if backbone in ("resnet18", "resnet34") else 512
        self.ppm = PPM(c4)
        self.head = nn.Sequential(_cbr(self.ppm.out_channels, width, 3), nn.Dropout2d(0.1),
                                  nn.Conv2d(width, num_classes, 1))
        self.aux_classifier = (
            nn.Sequential(_cbr(c3, c3 // 4, 3), nn.Dropout2d(0.1), nn.Conv2d(c3 // 4, num_classes, 1)) if aux else None
        )

    def forward(self, x):
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        out = {"out": F.interpolate(self.head(self.ppm(c4)), size=size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None and self.training:
            out["aux"] = F.interpolate(self.aux_classifier(c3), size=size, mode="bilinear", align_corners=False)
        return out
