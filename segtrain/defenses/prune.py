"""Pruning (IBA section 5.5 / appendix H, SPEC 7; Liu et al. 2018 "Fine-Pruning"): rank the channels of the
last convolutional layer before the classifier by their mean activation over clean calibration images and
zero the k least active ones.

* The layer: the last ``Conv2d`` before the classifier (the last ``Conv2d`` with ``num_classes`` outputs
  outside ``aux_classifier``) that is followed by a ``BatchNorm2d`` of its width - ``head.0.0`` of PSPNet,
  ``classifier.1`` of DeepLabV3, ``classifier.0`` of FCN, ``classifier.cbr.0`` of LR-ASPP. ``--layer NAME``
  picks another conv+BN layer (:func:`prunable_layers` lists them).
* One activation pass: a forward hook on the BatchNorm records ``relu(BN(conv(x)))`` averaged over batch
  and pixels, summed over the calibration set in float64.
* Zeroing: the k channels' rows of the conv weight (and bias) and their BatchNorm weight and bias are set
  to 0, so the channel's output is exactly 0 after BN and ReLU for every input. Weights, not a forward-hook
  mask: the pruned model is an ordinary state dict that ``segtrain evaluate`` loads, and levels are
  cumulative (5 -> 15 -> 30 zero 10 and then 15 more), evaluated one after the other on the same model
  without reloading anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from poisongen.errors import choices

from ..data import SegDataset, collate
from ..errors import SegTrainError

AUX = "aux_classifier"


def _convs(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """(name, conv, the BatchNorm right after it or None) in registration order, auxiliary head excluded."""
    mods = [(n, m) for n, m in model.named_modules() if not n.startswith(AUX)]
    out = []
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            nxt = mods[i + 1][1] if i + 1 < len(mods) else None
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels else None
            out.append((name, m, bn))
    return out


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of every conv layer followed by its BatchNorm (what ``--layer`` accepts)."""
    return [n for n, _, bn in _convs(model) if bn is not None]


def last_conv(model: nn.Module, num_classes: int) -> str:
    """The last conv+BN layer before the classifier."""
    convs = _convs(model)
    cls = [i for i, (_, m, _) in enumerate(convs) if m.out_channels == num_classes]
    if not cls:
        raise SegTrainError(f"{type(model).__name__}: no classifier conv with {num_classes} outputs found; "
                            f"pass --layer (one of {choices(prunable_layers(model))})")
    for name, _, bn in reversed(convs[:cls[-1]]):
        if bn is not None:
            return name
    raise SegTrainError(f"{type(model).__name__}: no conv+BatchNorm layer before the classifier; pass --layer")


def resolve_layer(model: nn.Module, num_classes: int, layer: str | None) -> tuple[str, nn.Conv2d, nn.BatchNorm2d]:
    """The layer to prune (``layer`` or :func:`last_conv`) with its BatchNorm; an unknown name is one line
    listing the valid ones."""
    valid = prunable_layers(model)
    name = layer or last_conv(model, num_classes)
    if name not in valid:
        raise SegTrainError(f"unknown --layer '{name}'; valid layers of {type(model).__name__} are {choices(valid)}")
    conv, bn = next((m, b) for n, m, b in _convs(model) if n == name)
    return name, conv, bn


def scale_counts(ks: Sequence[int], width: int, of: int | None) -> list[int]:
    """k as given (``of`` None: absolute counts) or scaled from a layer of ``of`` channels to ``width``
    (``round(k * width / of)``: the paper's 5/15/30 of 256 on a 512-wide head are 10/30/60). Any k above
    ``width`` is refused."""
    out = [k if of is None else round(k * width / of) for k in ks]
    bad = [k for k in out if k > width]
    if bad:
        raise SegTrainError(f"--channels {bad[0]} is above the {width} channels of the layer; give counts of 0 to "
                            f"{width}" + (f" (after scaling by {width}/{of})" if of else ""))
    return out


@torch.no_grad()
def mean_activations(model: nn.Module, bn: nn.Module, data: SegDataset, device, workers: int = 0) -> np.ndarray:
    """One pass over ``data``: per channel, the mean of ``relu(bn output)`` over images and pixels (float64)."""
    total, count = None, 0

    def hook(_m, _inp, out):
        nonlocal total, count
        a = out.float().clamp_min(0).mean(dim=(0, 2, 3)).double().cpu() * out.shape[0]
        total = a if total is None else total + a
        count += out.shape[0]

    was = model.training
    model.eval()
    handle = bn.register_forward_hook(hook)
    try:
        for images, _, _ in DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate):
            model(images.to(device))
    finally:
        handle.remove()
        model.train(was)
    return (total / max(count, 1)).numpy()


def ranking(activations: np.ndarray) -> list[int]:
    """Channels from least to most active (ties by index)."""
    return [int(i) for i in np.argsort(activations, kind="stable")]


@torch.no_grad()
def zero_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: Iterable[int]) -> None:
    """Zero the output channels of ``conv`` (weight rows, bias) and their BatchNorm weight and bias."""
    idx = torch.as_tensor(sorted(set(channels)), dtype=torch.long, device=conv.weight.device)
    if idx.numel() == 0:
        return
    conv.weight[idx] = 0
    if conv.bias is not None:
        conv.bias[idx] = 0
    if bn is not None:
        bn.weight[idx] = 0
        bn.bias[idx] = 0


def keep_pruned(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: Sequence[int]) -> list:
    """Gradient hooks that keep pruned channels at 0 while fine-tuning (fine-pruning): their gradients are
    zeroed, so SGD (weight decay on a zero weight adds 0) and AdamW leave them at exactly 0. Returns the
    handles (``h.remove()`` to undo)."""
    mask = torch.ones(conv.out_channels, device=conv.weight.device)
    mask[list(channels)] = 0
    handles = []
    params = [conv.weight, conv.bias] + ([bn.weight, bn.bias] if bn is not None else [])
    for p in params:
        if p is None:
            continue
        shape = (-1,) + (1,) * (p.dim() - 1)
        m = mask.view(shape)
        handles.append(p.register_hook(lambda g, m=m: g * m))
    return handles


#: the paper's levels (of a 256-channel layer) and calibration share of clean training images
DEFAULT_CHANNELS = (5, 15, 30)
DEFAULT_CALIBRATION = 0.10


def calibration_ids(subject, fraction: float, seed: int) -> list[str]:
    from .common import choose_ids

    ids = [s.id for s in subject.layout.samples(subject.layout.train_split)]
    return choose_ids(ids, fraction, seed, "prune-calibration")


def plan_pruning(subject, ks: Sequence[int], layer: str | None, of: int | None, calibration: float, seed: int,
                 workers: int = 0) -> dict:
    """Everything pruning decides before touching a weight: the layer, the effective k, the calibration
    ids, one activation pass and the channel ranking."""
    model = subject.model
    name, conv, bn = resolve_layer(model, int(subject.ckpt["num_classes"]), layer)
    counts = scale_counts(ks, conv.out_channels, of)
    ids = calibration_ids(subject, calibration, seed)
    data = SegDataset(subject.layout, subject.layout.train_split, ids=ids)
    acts = mean_activations(model, bn, data, subject.device, workers)
    return {"layer": name, "width": conv.out_channels, "k_given": list(ks), "of": of, "k": counts,
            "calibration_fraction": calibration, "calibration_ids": ids, "seed": seed,
            "activations": [float(a) for a in acts], "order": ranking(acts)}


def prune(subject, plan: dict, evaluate, save) -> list[dict]:
    """Zero the ``k`` least active channels of ``plan`` cumulatively on the subject's model, evaluate after
    each k (``evaluate(model) -> headline``, no reloading) and save it (``save(name, model, settings)``)."""
    model = subject.model
    _, conv, bn = resolve_layer(model, int(subject.ckpt["num_classes"]), plan["layer"])
    rows, done = [], 0
    for k_given, k in zip(plan["k_given"], plan["k"], strict=True):
        channels = plan["order"][:k]
        zero_channels(conv, bn, channels[done:])
        done = k
        settings = {"defense": "prune", "layer": plan["layer"], "k": k, "channels": channels, "seed": plan["seed"],
                    "calibration_ids": plan["calibration_ids"]}
        rows.append({"k": k, "k_given": k_given, "channels": channels,
                     "checkpoint": save(f"prune_k{k}.pt", model, settings), "after": evaluate(model)})
    return rows
