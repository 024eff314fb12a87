"""segtrain.memory: the meta-device estimate of one training step equals what a real forward pass keeps
for backward, grows with crop and batch, and refuses a step larger than the free memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segtrain.config import TrainConfig
from segtrain.errors import SegTrainError
from segtrain.memory import MARGIN, available_bytes, check_training_memory, training_bytes
from segtrain.models import build_model


def _saved_on_cpu(cfg: TrainConfig, k: int) -> int:
    """Distinct storages a real CPU forward pass saves for backward, plus the parameter copies."""
    torch.manual_seed(0)
    model = build_model(cfg.arch, k, cfg.backbone, cfg.output_stride, cfg.aux).train()
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(cfg.batch, 3, *cfg.crop))
    return sum(seen.values()) + 3 * sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize(("arch", "backbone"), [("pspnet", "resnet18"), ("lraspp", "mobilenet_v3_large")])
def test_estimate_equals_a_real_forward_pass(arch, backbone):
    cfg = TrainConfig(iters=1, arch=arch, backbone=backbone, batch=2, crop=(64, 96))
    assert training_bytes(cfg, 5) == int(MARGIN * _saved_on_cpu(cfg, 5))


def test_estimate_grows_with_crop_and_batch_and_refuses_beyond_the_budget():
    cfg = TrainConfig(iters=1, arch="pspnet", backbone="resnet18", batch=2, crop=(64, 128))
    small = training_bytes(cfg, 19)
    sizes = [training_bytes(dataclasses.replace(cfg, crop=(64 * f, 128 * f)), 19) for f in (1, 2, 4)]
    # what grows is the activations, with the pixels: 4x the pixels, 4x the growth (weights stay)
    assert (sizes[2] - sizes[1]) / (sizes[1] - sizes[0]) == pytest.approx(4.0, rel=0.02)
    batch4 = training_bytes(dataclasses.replace(cfg, batch=4), 19)
    assert batch4 - small == pytest.approx((sizes[1] - sizes[0]) / 3, rel=0.05)  # 2x the images = + 1x
    assert training_bytes(cfg, 19, half=True) < small  # bf16 activations under --amp on CUDA
    cpu = torch.device("cpu")
    assert check_training_memory(cfg, 19, cpu, available=small) == small
    with pytest.raises(SegTrainError, match=r"--crop 64x128 at --batch 2 needs about .* GiB .* more than the .* GiB "
                                            r"free on cpu; use a smaller --crop or --batch"):
        check_training_memory(cfg, 19, cpu, available=small - 1)
    assert available_bytes(cpu) is None or available_bytes(cpu) > 0
