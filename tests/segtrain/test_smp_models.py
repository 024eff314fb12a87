"""segmentation_models.pytorch archs: every arch/backbone builds without the network, runs forward and
backward at a size that is not a multiple of 32 with logits at label size, and each arch learns a tiny
task; padding never reaches the loss; the memory estimate works for them; without smp, one line."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from builders import fixed_batch, train_losses

pytest.importorskip("segmentation_models_pytorch")  # guard for users without the smp extra; CI installs it

from segtrain.engine import seg_loss  # noqa: E402
from segtrain.models import REGISTRY, SOURCES, build_model, resolve  # noqa: E402
from segtrain.models import smp as smp_models  # noqa: E402

ALL = [(a, b) for a in smp_models.ARCHS for b in REGISTRY[a][1]]
#: the smallest encoder of each arch, for the learning test (every backbone is covered by the others)
SMALLEST = [("segformer", "mit_b0"), ("deeplabv3plus", "resnet18"), ("deeplabv3plus", "mobilenet_v2"),
            ("unet", "resnet18"), ("upernet", "resnet18"), ("upernet", "mit_b0"), ("fpn", "mit_b0")]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(("arch", "backbone"), ALL)
def test_builds_offline_and_runs_at_a_size_not_divisible_by_32(arch, backbone, no_network):
    torch.manual_seed(0)
    model = build_model(arch, 5, backbone)
    assert SOURCES[arch] == "smp"
    model.train()
    x = torch.randn(2, 3, 50, 70)
    out = model(x)
    assert set(out) == {"out"}
    assert out["out"].shape == (2, 5, 50, 70)  # logits at label size, not padded, not 1/4
    label = torch.randint(0, 5, (2, 50, 70))
    seg_loss(out, label).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])


@pytest.mark.parametrize(("arch", "backbone"), SMALLEST)
def test_learns_a_tiny_task(arch, backbone):
    torch.manual_seed(0)
    image, label = fixed_batch((32, 36))  # 36 wide: padded to 64
    model = build_model(arch, 4, backbone)
    losses = train_losses(model, image, label, torch.optim.AdamW(model.parameters(), lr=1e-3), 20)
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_padding_never_reaches_the_loss():
    """The logits of the real pixels are those of the padded input, cropped: a change to what the padding
    would hold cannot change them (pad with the mean colour happens inside the model), and a label of
    the input's size is scored pixel for pixel."""
    torch.manual_seed(0)
    model = build_model("unet", 3, "resnet18").eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        ours = model(x)["out"]
        padded = torch.nn.functional.pad(x, (0, 26, 0, 14))
        direct = model.net(padded)[..., :50, :70]
    assert torch.equal(ours, direct)


def test_segformer_logits_reach_label_size_from_any_decoder_resolution():
    """A decoder at 1/4 resolution is upsampled before the crop (the wrapper's contract)."""
    class Quarter(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x[:, :2], 4)

    wrapped = smp_models.SmpSegmenter(Quarter())
    out = wrapped(torch.randn(1, 3, 50, 70))["out"]
    assert out.shape == (1, 2, 50, 70)


def test_deeplabv3plus_output_strides_and_registry_errors():
    from poisongen.errors import PoisonGenError

    assert resolve("deeplabv3plus", "resnet18", None) == ("deeplabv3plus", "resnet18", 16)
    assert resolve("segformer", None, None) == ("segformer", "mit_b0", 32)
    m8 = build_model("deeplabv3plus", 3, "resnet18", 8).eval()
    with torch.no_grad():
        assert m8.backbone(torch.zeros(1, 3, 64, 64))[-1].shape[-1] == 8
    with pytest.raises(PoisonGenError, match="valid backbones"):
        build_model("segformer", 3, "resnet101")
    with pytest.raises(PoisonGenError, match="output stride"):
        build_model("segformer", 3, "mit_b0", 8)


def test_memory_estimate_covers_smp_archs():
    from segtrain.config import TrainConfig
    from segtrain.memory import check_training_memory, training_bytes

    small = TrainConfig(arch="segformer", backbone="mit_b0", iters=1, batch=2, crop=(50, 70))
    big = TrainConfig(arch="segformer", backbone="mit_b0", iters=1, batch=8, crop=(200, 280))
    assert 0 < training_bytes(small, 19) < training_bytes(big, 19)
    from poisongen.errors import PoisonGenError

    with pytest.raises(PoisonGenError, match="segformer/mit_b0"):
        check_training_memory(big, 19, torch.device("cpu"), available=1)


def test_without_smp_one_line_names_the_extra(monkeypatch):
    from poisongen.errors import PoisonGenError

    monkeypatch.setattr(smp_models, "available", lambda: False)
    with pytest.raises(PoisonGenError, match=r"pip install \.\[smp\]") as e:
        resolve("segformer", "mit_b0", None)
    assert "\n" not in str(e.value)
    assert resolve("pspnet", "resnet18", None)[0] == "pspnet"  # torchvision archs need no extra
