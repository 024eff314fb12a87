"""Detection of poisoned training samples (``segtrain detect samples``): every training sample gets a score
per detector (higher = more suspicious), scored against the poisoned copy's manifest where there is one.

Detectors (each on one pass of the model over the training split, whole images, eval mode):

* ``loss``: minus the mean cross-entropy over the pixels *labelled* as the target class. A poisoned
  sample's relabelled victim pixels carry the target label and are fitted unusually well by a backdoored
  model (the trigger says "target"), so its target-pixel loss is low. A sample without target pixels
  cannot hold relabelled ones and scores lowest.
* ``loss_outlier``: the same loss, two-sided: how far the sample's log target-pixel loss lies from the median
  over the samples, in robust standard deviations (MAD x 1.4826). ``loss`` assumes the backdoor was learned;
  a backdoor that was *not* (yet) learned leaves the relabelled pixels predicted as the victim class, so they
  are fitted unusually *badly* (label noise), and ``loss`` ranks them last. This one flags both tails.
* ``spectral`` (Tran et al. 2018, spectral signatures): the penultimate features (``relu(BN)`` of the
  layer pruning uses) averaged over the pixels the model *predicts* as the target (all pixels when it
  predicts none), centred over the samples; the score is the squared projection on the top singular
  vector.
* ``ac`` (Chen et al. 2018, activation clustering): the same pooled features reduced to 10 principal
  components, two-means (seeded); the score is the distance to the larger cluster's centre minus the
  distance to the smaller one's (the small cluster is the suspected poison).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from poisongen.datasets import Layout

from .. import detection_metrics as dm
from ..data import SegDataset, collate
from ..metrics import IGNORE
from .prune import resolve_layer

DETECTORS = ("loss", "loss_outlier", "spectral", "ac")


@torch.no_grad()
def sample_features(model: nn.Module, layout: Layout, target: int, device, layer: str | None = None,
                    workers: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, target-pixel loss (nan without target pixels), pooled features (N, C)) of the training split."""
    num_classes = layout.meta.num_classes
    _, _, bn = resolve_layer(model, num_classes, layer)
    grabbed = {}
    handle = bn.register_forward_hook(lambda _m, _i, out: grabbed.__setitem__("f", out))
    data = SegDataset(layout, layout.train_split)
    was = model.training
    model.eval()
    ids, losses, feats = [], [], []
    try:
        for images, labels, batch_ids in DataLoader(data, batch_size=1, num_workers=workers, collate_fn=collate):
            logits = model(images.to(device))["out"].float()
            lab = labels.to(device)
            pix = F.cross_entropy(logits, lab, ignore_index=IGNORE, reduction="none")
            sel = lab == target
            losses.append(float(pix[sel].mean().item()) if sel.any() else float("nan"))
            f = grabbed["f"].float().clamp_min(0)[0]  # (C, h, w)
            pred = logits.argmax(1, keepdim=True).float()
            m = F.interpolate((pred == target).float(), size=f.shape[-2:], mode="nearest")[0, 0] > 0
            feats.append((f[:, m].mean(1) if m.any() else f.flatten(1).mean(1)).double().cpu().numpy())
            ids.extend(batch_ids)
    finally:
        handle.remove()
        model.train(was)
    return ids, np.array(losses), np.stack(feats)


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """``-loss``; samples without target pixels (nan) below every other."""
    s = -losses
    finite = s[np.isfinite(s)]
    return np.where(np.isfinite(s), s, (finite.min() - 1) if finite.size else 0.0)


def loss_outlier_scores(losses: np.ndarray) -> np.ndarray:
    """``|log L - median| / (1.4826 MAD)`` over the finite losses; samples without target pixels (nan) below
    every other. A MAD of 0 (half the samples alike) falls back to the mean absolute deviation, then to 1."""
    logl = np.log(np.maximum(losses, 1e-12))
    finite = logl[np.isfinite(logl)]
    if not finite.size:
        return np.zeros(len(losses))
    dev = np.abs(logl - np.median(finite))
    fdev = dev[np.isfinite(dev)]
    scale = 1.4826 * np.median(fdev)
    scale = scale if scale > 0 else (fdev.mean() if fdev.mean() > 0 else 1.0)
    s = dev / scale
    return np.where(np.isfinite(s), s, -1.0)


def spectral_scores(feats: np.ndarray) -> np.ndarray:
    x = feats - feats.mean(0, keepdims=True)
    if not np.any(x):
        return np.zeros(len(x))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[0]) ** 2


def ac_scores(feats: np.ndarray, seed: int = 0, dims: int = 10, iters: int = 50) -> np.ndarray:
    x = feats - feats.mean(0, keepdims=True)
    if len(x) < 2 or not np.any(x):
        return np.zeros(len(x))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:dims].T
    rng = np.random.default_rng(seed)
    centres = z[rng.choice(len(z), 2, replace=False)]
    for _ in range(iters):
        d = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
        assign = d.argmin(1)
        new = np.stack([z[assign == c].mean(0) if np.any(assign == c) else centres[c] for c in (0, 1)])
        if np.allclose(new, centres):
            break
        centres = new
    big = int(np.bincount(assign, minlength=2).argmax())
    dist = np.sqrt(((z[:, None, :] - centres[None]) ** 2).sum(-1))
    return dist[:, big] - dist[:, 1 - big]


def score_samples(model: nn.Module, layout: Layout, target: int, device, layer: str | None = None, seed: int = 0,
                  workers: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    ids, losses, feats = sample_features(model, layout, target, device, layer, workers)
    return ids, {"loss": loss_scores(losses), "loss_outlier": loss_outlier_scores(losses),
                 "spectral": spectral_scores(feats), "ac": ac_scores(feats, seed)}


def write_ranked(path: Path, ids: Sequence[str], scores: np.ndarray, poisoned: set[str] | None) -> None:
    """``rank,id,score[,poisoned]``, most suspicious first (ties keep the split's order)."""
    order = dm.top_k(scores, len(scores))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "id", "score"] + (["poisoned"] if poisoned is not None else []))
        for r, i in enumerate(order, 1):
            w.writerow([r, ids[i], f"{scores[i]:.9g}"] + ([int(ids[i] in poisoned)] if poisoned is not None else []))


def plot_pr(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], chance: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (rec, prec) in curves.items():
        ax.plot(rec, prec, label=name, drawstyle="steps-post")
    ax.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
