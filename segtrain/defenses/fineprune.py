"""Fine-pruning (Liu et al. 2018): prune the k least active channels of the last conv layer (one activation
pass, :mod:`segtrain.defenses.prune`), then fine-tune on a seeded clean fraction (:mod:`.finetune`) while
gradient hooks keep the pruned channels at exactly 0. One row per k, each from the checkpoint's weights."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .. import checkpoint
from .finetune import clean_ids, tune
from .prune import keep_pruned, resolve_layer, zero_channels

#: BackdoorBench's fine-pruning share of clean data
DEFAULT_FRACTION = 0.05


def fineprune(subject, plan: dict, fraction: float, evaluate: Callable[[nn.Module], dict],
              save: Callable[[str, nn.Module, dict], str], epochs: int = 10, lr: float | None = None,
              batch: int | None = None, seed: int = 0, workers: int = 0) -> list[dict]:
    ids = clean_ids(subject, fraction, seed)
    rows = []
    for k_given, k in zip(plan["k_given"], plan["k"], strict=True):
        model = checkpoint.model_from_checkpoint(subject.ckpt, subject.device)
        _, conv, bn = resolve_layer(model, int(subject.ckpt["num_classes"]), plan["layer"])
        channels = plan["order"][:k]
        zero_channels(conv, bn, channels)
        handles = keep_pruned(conv, bn, channels)
        try:
            info = tune(subject, model, ids, epochs=epochs, lr=lr, batch=batch, seed=seed, workers=workers)
        finally:
            for h in handles:
                h.remove()
        served = info.pop("served")
        settings = {"defense": "fineprune", "layer": plan["layer"], "k": k, "channels": channels, "seed": seed,
                    "fraction": fraction, "ids": ids, "calibration_ids": plan["calibration_ids"], **info}
        rows.append({"k": k, "k_given": k_given, "channels": channels, "fraction": fraction, "samples": len(ids),
                     "ids": ids, "served": served, **info,
                     "checkpoint": save(f"fineprune_k{k}.pt", model, settings), "after": evaluate(model)})
    return rows
