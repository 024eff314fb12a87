"""Fine-tuning (IBA section 5.5, SPEC 7): fine-tune the backdoored model on a seeded clean fraction of the
training split with :func:`segtrain.engine.fit` (the checkpoint's own recipe: arch, crop, scale,
optimizer; ``epochs`` over the chosen samples, poly LR from ``lr``), then evaluate it. One row per fraction,
each from the checkpoint's weights; the chosen sample ids are recorded, and which ones the sampler served."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import nn

from .. import checkpoint
from ..data import SegDataset
from ..engine import Hooks, fit, seed_everything, seg_loss
from ..errors import SegTrainError
from ..transforms import train_transform
from .common import Subject, choose_ids, finetune_config

#: BackdoorBench's fine-tuning share of clean data; the IBA paper also uses 1 % and 10 %
DEFAULT_FRACTIONS = (0.01, 0.05, 0.10)
DEFAULT_EPOCHS = 10


def clean_ids(subject: Subject, fraction: float, seed: int, min_samples: int = 2) -> list[str]:
    """A seeded ``fraction`` of the training split of the subject's (clean) data, at least ``min_samples``."""
    ids = [s.id for s in subject.layout.samples(subject.layout.train_split)]
    if len(ids) < min_samples:
        raise SegTrainError(f"--data {subject.data} holds {len(ids)} training sample(s); fine-tuning needs "
                            f"{min_samples} or more")
    chosen = choose_ids(ids, fraction, seed, "finetune")
    if len(chosen) < min_samples:
        chosen = choose_ids(ids, min_samples / len(ids), seed, "finetune")
    return chosen


def tune(subject: Subject, model: nn.Module, ids: Sequence[str], epochs: int | None = DEFAULT_EPOCHS,
         iters: int | None = None, lr: float | None = None, batch: int | None = None, seed: int = 0,
         workers: int = 0, loss: Callable | None = None, layout=None, on_step: Callable | None = None) -> dict:
    """Fine-tune ``model`` in place on samples ``ids`` of the subject's data through :func:`fit`; returns
    ``{"served": sorted ids the sampler served, "steps", "seconds", "lr", "batch", "epochs", "iters"}``.
    ``loss`` (as :attr:`Hooks.loss`) replaces the segmentation loss (ABL); ``layout``: train on another dataset
    than the subject's (ABL trains on the poisoned copy); ``on_step`` as :attr:`Hooks.on_step`."""
    cfg = finetune_config(subject, epochs, iters, lr, batch, seed, workers)
    cfg_batch = min(cfg.batch, len(ids))
    if cfg_batch < 2:
        raise SegTrainError(f"fine-tuning needs 2 or more samples (BatchNorm), got {len(ids)}")
    cfg = replace(cfg, batch=cfg_batch)
    layout = layout or subject.layout
    data = SegDataset(layout, layout.train_split, train_transform(cfg.crop, cfg.scale), ids=list(ids))
    served: set[str] = set()
    base = loss or (lambda outputs, labels, _ids, _step: seg_loss(outputs, labels, cfg.aux_weight))

    def recording(outputs, labels, batch_ids, step):
        served.update(batch_ids)
        return base(outputs, labels, batch_ids, step)

    seed_everything(seed)
    t0 = time.perf_counter()
    res = fit(model, data, cfg, Hooks(on_step=on_step, loss=recording))
    return {"served": sorted(served), "steps": res.step, "seconds": round(time.perf_counter() - t0, 3),
            "lr": cfg.lr, "optimizer": cfg.optimizer, "batch": cfg.batch, "epochs": cfg.epochs, "iters": cfg.iters}


def finetune(subject: Subject, fractions: Sequence[float], evaluate: Callable[[nn.Module], dict],
             save: Callable[[str, nn.Module, dict], str], epochs: int = DEFAULT_EPOCHS, lr: float | None = None,
             batch: int | None = None, seed: int = 0, workers: int = 0) -> list[dict]:
    """One row per fraction: a fresh copy of the checkpoint's model fine-tuned on that fraction's clean
    samples, evaluated (``evaluate(model) -> headline``) and saved (``save(name, model, settings) -> file``)."""
    rows = []
    for f in fractions:
        model = checkpoint.model_from_checkpoint(subject.ckpt, subject.device)
        ids = clean_ids(subject, f, seed)
        info = tune(subject, model, ids, epochs=epochs, lr=lr, batch=batch, seed=seed, workers=workers)
        settings = {"defense": "finetune", "fraction": f, "seed": seed, "ids": ids, **info}
        name = f"finetune_f{f:g}.pt"
        rows.append({"fraction": f, "samples": len(ids), "ids": ids, "served": info.pop("served"), **info,
                     "checkpoint": save(name, model, settings), "after": evaluate(model)})
    return rows
