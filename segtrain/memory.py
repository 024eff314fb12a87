"""How much memory one training step needs, estimated before anything is allocated, so that a ``--crop``
or ``--batch`` too large for the machine is refused with one line instead of the process being OOM-killed.

The estimate builds the model on PyTorch's ``meta`` device (shapes only, no storage; a model whose builder
needs real values, smp's MiT encoders, is built on the CPU once and moved there) and runs one forward
pass of a ``(batch, 3, H, W)`` batch under :func:`torch.autograd.graph.saved_tensors_hooks`, summing the
distinct storages autograd keeps for the backward pass: that is exactly what the real forward pass keeps
(checked against a CPU run; convolutions keep their weights too). To it come the float32 parameters
three times over with SGD (weights, gradients, momentum) or four with AdamW (two moments), and a 25 %
margin for the backward pass's temporaries. Under ``--amp`` on CUDA the saved floating-point activations count half.
The budget is the free device memory (``torch.cuda.mem_get_info``) or, on CPU, ``MemAvailable`` of
``/proc/meminfo`` (the free physical pages elsewhere).
"""

from __future__ import annotations

import os

import torch

from .config import TrainConfig
from .errors import SegTrainError

MARGIN = 1.25


def training_bytes(cfg: TrainConfig, num_classes: int, half: bool = False) -> int:
    """Estimated bytes of one training step of ``cfg``'s model at ``cfg.batch`` x ``cfg.crop`` (see the
    module docstring). Allocates nothing."""
    from .models import build_meta_model

    model = build_meta_model(cfg.arch, num_classes, cfg.backbone, cfg.output_stride, cfg.aux)
    x = torch.empty(cfg.batch, 3, *cfg.crop, device="meta")
    model.train()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        nbytes = st.nbytes() // 2 if half and t.is_floating_point() else st.nbytes()
        saved[st._cdata] = nbytes  # one entry per storage: a tensor saved by two ops counts once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = sum(p.numel() * 4 for p in model.parameters())
    copies = 4 if cfg.optimizer == "adamw" else 3
    return int(MARGIN * (sum(saved.values()) + copies * params))


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (None when it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_training_memory(cfg: TrainConfig, num_classes: int, device: torch.device,
                          available: int | None = None) -> int:
    """Refuse a run whose estimated step (:func:`training_bytes`) exceeds the device's free memory.

    Returns the estimate in bytes. Raises:
        SegTrainError: one line with the estimate, the free memory and what to lower.
    """
    need = training_bytes(cfg, num_classes, half=cfg.amp and device.type == "cuda")
    have = available_bytes(device) if available is None else available
    if have is not None and need > have:
        h, w = cfg.crop
        raise SegTrainError(
            f"--crop {h}x{w} at --batch {cfg.batch} needs about {need / 2**30:.1f} GiB for one training step of "
            f"{cfg.arch}/{cfg.backbone} (estimate), more than the {have / 2**30:.1f} GiB free on {device}; use a "
            f"smaller --crop or --batch")
    return need
