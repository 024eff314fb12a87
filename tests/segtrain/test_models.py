"""The model registry: every arch learns a fixed batch, output strides, registry errors, local backbone
weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import fixed_batch, train_losses

from segtrain.models import build_model, load_backbone_weights

T = torch.tensor
CAR, ROAD = 13, 0


# --- models ----------------------------------------------------------------------------------------
ARCHS = [("pspnet", "resnet18"), ("deeplabv3", "resnet50"), ("fcn", "resnet50"), ("lraspp", "mobilenet_v3_large")]


@pytest.mark.parametrize(("arch", "backbone"), ARCHS)
def test_loss_decreases_on_a_fixed_batch(arch, backbone):
    torch.manual_seed(0)
    n = 4
    image, label = fixed_batch((32, 32))
    model = build_model(arch, n, backbone, None, aux=arch == "pspnet")  # resnet50 heads: no aux, to save time
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = train_losses(model, image, label, opt, 25)
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_pspnet_output_strides_and_registry_errors():
    from poisongen.errors import PoisonGenError

    for os_, size in ((8, 8), (16, 4), (32, 2)):
        m = build_model("pspnet", 5, "resnet18", os_).eval()
        with torch.no_grad():
            assert m.backbone(torch.zeros(1, 3, 64, 64))[1].shape[-1] == size
            assert m(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)
    with pytest.raises(PoisonGenError, match="valid archs"):
        build_model("segnet", 5)
    with pytest.raises(PoisonGenError, match="valid backbones"):
        build_model("fcn", 5, "resnet18")
    with pytest.raises(PoisonGenError, match="output stride"):
        build_model("pspnet", 5, "resnet18", 4)


def test_load_backbone_weights(tmp_path):
    from torchvision.models import resnet18

    from poisongen.errors import PoisonGenError

    src = resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = build_model("pspnet", 5, "resnet18", 8)
    assert load_backbone_weights(m, tmp_path / "r18.pth")["loaded"] > 100
    assert torch.equal(m.backbone.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(3), "head.x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PoisonGenError, match="do not fit") as e:
        load_backbone_weights(m, tmp_path / "bad.pth")
    assert "\n" not in str(e.value)

