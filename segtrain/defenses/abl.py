"""Anti-Backdoor Learning (Li et al., NeurIPS 2021), adapted to segmentation; a training-time defense on the
poisoned data, every stage through :func:`segtrain.engine.fit` with a loss hook.

1. Isolation (``isolate_iters``, default 20 % of the checkpoint's schedule): a fresh model of the
   checkpoint's recipe trains with the local gradient ascent loss ``sign(L - gamma) * L`` (``L``: the
   batch's segmentation loss, ``gamma`` 0.5 = BackdoorBench's flooding): a loss that falls below gamma is
   pushed back up, so only what is learned unusually fast - the backdoor - stays below it.
2. Each training sample's loss under that model (mean cross-entropy over its labelled pixels, whole image,
   no augmentation); the ``isolate`` fraction with the lowest loss is isolated (default 5 %: BackdoorBench's
   1 % is 12 of the quickstart's 1200 images, too few to unlearn a 10 % attack; ``--isolate 0.01`` gives it).
3. Training on the rest (``train_iters``, default 80 % of the schedule) with the plain loss.
4. Unlearning (``unlearn_epochs`` over the isolated set, ``unlearn_lr``): gradient ascent, loss ``-L``.

How many isolated samples the manifest lists as poisoned is reported next to the chance level (the poison
rate): the isolation's precision and recall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from poisongen.datasets import Layout

from ..data import SegDataset, collate, read_attack_info
from ..engine import seed_everything, seg_loss
from ..errors import SegTrainError
from ..metrics import IGNORE
from ..models import build_model, load_backbone_weights
from .finetune import tune

GAMMA = 0.5
ISOLATE = 0.05
UNLEARN_EPOCHS = 5


def lga_loss(gamma: float, aux_weight: float) -> Callable:
    """ABL's local gradient ascent: ``sign(L - gamma) * L``."""

    def loss(outputs, labels, _ids, _step):
        value = seg_loss(outputs, labels, aux_weight)
        return torch.sign(value - gamma) * value

    return loss


def ascent_loss(aux_weight: float) -> Callable:
    """Gradient ascent (unlearning): ``-L``."""
    return lambda outputs, labels, _ids, _step: -seg_loss(outputs, labels, aux_weight)


@torch.no_grad()
def sample_losses(model: nn.Module, layout: Layout, ids: Sequence[str] | None, device, workers: int = 0) -> dict:
    """Per sample: the mean cross-entropy over its labelled pixels (ignore 255 excluded), whole image,
    eval mode. Samples without a labelled pixel get +inf (never isolated)."""
    data = SegDataset(layout, layout.train_split, ids=ids)
    was = model.training
    model.eval()
    out = {}
    try:
        for images, labels, batch_ids in DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate):
            logits = model(images.to(device))["out"].float()
            lab = labels.to(device)
            pix = F.cross_entropy(logits, lab, ignore_index=IGNORE, reduction="none")
            valid = (lab != IGNORE).sum().item()
            out[batch_ids[0]] = float(pix.sum().item() / valid) if valid else float("inf")
    finally:
        model.train(was)
    return out


def isolate(losses: dict, fraction: float) -> list[str]:
    """The ``fraction`` of ids with the lowest loss (at least one; ties by id)."""
    n = max(1, round(fraction * len(losses)))
    return [i for i, _ in sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))[:n]]


def isolation_score(isolated: Sequence[str], poisoned: Sequence[str], total: int) -> dict:
    """Precision / recall of the isolated set against the manifest's poisoned ids; chance = the poison rate."""
    hit = len(set(isolated) & set(poisoned))
    return {"isolated": len(isolated), "truly_poisoned": hit,
            "precision": hit / len(isolated) if isolated else None,
            "recall": hit / len(poisoned) if poisoned else None,
            "chance": len(poisoned) / total if total else None}


def fresh_model(subject, seed: int) -> nn.Module:
    """A new model of the checkpoint's recipe, initialised from ``seed`` (and its backbone weights if the
    recipe named a file that exists here)."""
    r = subject.recipe
    seed_everything(seed)
    model = build_model(r.arch, int(subject.ckpt["num_classes"]), r.backbone, r.output_stride, r.aux)
    if r.backbone_weights:
        load_backbone_weights(model, r.backbone_weights)
    return model.to(subject.device)


def isolation_stage(subject, train: Layout, fraction: float = ISOLATE, gamma: float = GAMMA, iters: int = 1,
                    seed: int = 0, workers: int = 0) -> tuple[nn.Module, dict, list[str], dict]:
    """Stages 1-2: a fresh model trained ``iters`` steps with the LGA loss on every training sample, each
    sample's loss under it, and the ``fraction`` with the lowest. Returns (model, losses, isolated, fit info)."""
    ids = [s.id for s in train.samples(train.train_split)]
    model = fresh_model(subject, seed)
    info = tune(subject, model, ids, iters=iters, seed=seed, workers=workers,
                loss=lga_loss(gamma, subject.recipe.aux_weight), layout=train)
    losses = sample_losses(model, train, ids, subject.device, workers)
    return model, losses, isolate(losses, fraction), info


def abl(subject, train: Layout, isolate_fraction: float = ISOLATE, gamma: float = GAMMA,
        isolate_iters: int | None = None, train_iters: int | None = None, unlearn_epochs: int = UNLEARN_EPOCHS,
        unlearn_lr: float | None = None, seed: int = 0, workers: int = 0) -> tuple[nn.Module, dict]:
    """Run the four stages on the poisoned training data ``train``; returns the defended model and the
    record (settings, isolated ids, isolation precision against ``train``'s manifest, stage times)."""
    info = read_attack_info(train.root)
    if info is None or info.kind != "train":
        raise SegTrainError(f"--train {train.root} has no manifest of a poisoned training set (kind 'train'); "
                            f"ABL's isolation is scored against it")
    r = subject.recipe
    ids = [s.id for s in train.samples(train.train_split)]
    total = r.total_iters(len(ids))
    isolate_iters = isolate_iters or max(1, round(0.2 * total))
    train_iters = train_iters or max(1, round(0.8 * total))
    aux = r.aux_weight
    t0 = time.perf_counter()
    model, losses, isolated, s1 = isolation_stage(subject, train, isolate_fraction, gamma, isolate_iters, seed,
                                                  workers)
    rest = [i for i in ids if i not in set(isolated)]
    t1 = time.perf_counter()
    s2 = tune(subject, model, rest, iters=train_iters, seed=seed + 1, workers=workers, layout=train)
    t2 = time.perf_counter()
    if len(isolated) < 2:
        raise SegTrainError(f"--isolate {isolate_fraction:g} isolates {len(isolated)} sample(s); unlearning "
                            f"needs 2 or more (BatchNorm): raise --isolate")
    s3 = tune(subject, model, isolated, epochs=unlearn_epochs, lr=unlearn_lr or r.lr / 10, seed=seed + 2,
              workers=workers, loss=ascent_loss(aux), layout=train)
    t3 = time.perf_counter()
    poisoned = [i for i in info.sample_ids if i in set(ids)]
    score = isolation_score(isolated, poisoned, len(ids))
    ranked = sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))
    record = {
        "defense": "abl", "seed": seed, "gamma": gamma, "isolate_fraction": isolate_fraction,
        "isolate_iters": isolate_iters, "train_iters": train_iters, "unlearn_epochs": unlearn_epochs,
        "unlearn_lr": s3["lr"], "lr": s2["lr"], "optimizer": s2["optimizer"], "batch": s2["batch"],
        "train": str(train.root), "samples": len(ids), "isolated_ids": isolated, "isolation": score,
        "loss_quantiles": [float(np.quantile([v for _, v in ranked if np.isfinite(v)], q))
                           for q in (0, .25, .5, .75, 1)],
        "seconds": {"isolation": round(t1 - t0, 3), "training": round(t2 - t1, 3), "unlearning": round(t3 - t2, 3)},
        "steps": {"isolation": s1["steps"], "training": s2["steps"], "unlearning": s3["steps"]},
    }
    return model, record
