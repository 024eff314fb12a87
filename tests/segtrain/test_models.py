"""The model registry: every arch learns a fixed batch, output strides, registry errors, local backbone
weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtrain.models import build_model, load_backbone_weights

T = torch.tensor
CAR, ROAD = 13, 0


# --- models ----------------------------------------------------------------------------------------
ARCHS = [("pspnet", "resnet18"), ("deeplabv3", "resnet50"), ("fcn", "resnet50"), ("lraspp", "mobilenet_v3_large")]


@pytest.mark.parametrize(("arch", "backbone"), ARCHS)
def test_loss_decreases_on_a_fixed_batch(arch, backbone):
    torch.manual_seed(0)
    n = 4
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, :, 16:] = 1
    label[0, 8:20, 4:12] = 2
    label[1, 20:30, 18:28] = 3
    label[:, :2] = 255
    palette = torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 1.5], [1, 1, -1]])
    image = palette[label.clamp(max=3)].permute(0, 3, 1, 2) + 0.3 * torch.randn(2, 3, 32, 32)
    model = build_model(arch, n, backbone, None, aux=arch == "pspnet")  # resnet50 heads: no aux, to save time
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    from segtrain.engine import seg_loss

    losses = []
    for _ in range(25):
        out = model(image)
        assert out["out"].shape == (2, n, 32, 32)
        loss = seg_loss(out, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_pspnet_output_strides_and_registry_errors():
    from poisongen.errors import PoisonGenError

    for os_, size in ((8, 8), (16, 4), (32, 2)):
        m = build_model("pspnet", 5, "resnet18", os_).eval()
        with torch.no_grad():
            assert m.backbone(torch.zeros(1, 3, 64, 64))[1].shape[-1] == size
            assert m(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)
    with pytest.raises(PoisonGenError, match="valid archs"):
        build_model("unet", 5)
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

