"""What every defense shares: the backdoored checkpoint and its data (checked against each other), the
training recipe of the checkpoint, the before/after evaluation through :func:`segtrain.evaluate.backdoor_report`,
a seeded choice of clean samples, the defended checkpoint and the output folder (written beside itself and
renamed at the end, so a failed or killed defense leaves nothing)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisongen.datasets import Layout, open_dataset

from .. import checkpoint
from ..config import TrainConfig
from ..engine import resolve_device
from ..errors import SegTrainError
from ..evaluate import ModelPredictor, backdoor_report, check_testsets, get_protocol
from ..sampling import derive_seed

#: the file every defense writes its settings and before/after metrics to
RESULT = "defense.json"


@dataclass
class Subject:
    """A backdoored model to defend: its checkpoint, the model built from it, the data it is judged on."""

    ckpt_path: str
    ckpt: dict
    model: nn.Module
    layout: Layout
    data: str
    device: torch.device

    @property
    def recipe(self) -> TrainConfig:
        """The checkpoint's training config (arch, crop, optimizer, ...), the base of any fine-tuning."""
        return TrainConfig.from_dict(self.ckpt["config"])

    @property
    def trained_on(self) -> tuple[tuple[int, ...], int | None]:
        c = self.ckpt["config"]
        return tuple(c.get("victim") or ()), c.get("target")


def open_subject(ckpt_path: str | Path, data: str, device: str = "cpu") -> Subject:
    """Load a checkpoint and the dataset it is defended on; their class tables must agree (one line)."""
    dev = resolve_device(device)
    ck = checkpoint.load(ckpt_path)
    layout = open_dataset(data, generate=False)
    checkpoint.check_classes(ck, layout.meta.names, f"dataset {data}")
    model = checkpoint.model_from_checkpoint(ck, dev)
    return Subject(str(ckpt_path), ck, model, layout, str(data), dev)


def check_output(out: str | Path) -> Path:
    """A defense writes a new folder (or an empty one): anything else is refused before any work."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SegTrainError(f"--out {out} exists and is not an empty folder; give a new one")
    return out


def parse_fractions(text: str | Sequence[float], option: str = "--fraction") -> list[float]:
    """``"0.01,0.05"`` -> [0.01, 0.05]; every value in (0, 1]."""
    vals = text if not isinstance(text, str) else [v for v in text.split(",") if v.strip()]
    out = []
    for v in vals:
        try:
            f = float(v)
        except ValueError:
            raise SegTrainError(f"{option} '{v}' is not a number; give fractions in (0, 1], e.g. "
                                f"0.01,0.05,0.1") from None
        if not 0 < f <= 1:
            raise SegTrainError(f"{option} {f:g} is outside (0, 1]; give fractions in (0, 1], e.g. 0.01,0.05,0.1")
        out.append(f)
    if not out:
        raise SegTrainError(f"{option} is empty; give fractions in (0, 1], e.g. 0.01,0.05,0.1")
    return out


def parse_counts(text: str, option: str) -> list[int]:
    """``"5,15,30"`` -> [5, 15, 30]; whole numbers >= 0, returned sorted (pruning is cumulative)."""
    out = []
    for v in (x for x in text.split(",") if x.strip()):
        try:
            k = int(v)
        except ValueError:
            raise SegTrainError(f"{option} '{v}' is not a whole number; give counts such as 5,15,30") from None
        if k < 0:
            raise SegTrainError(f"{option} {k} is negative; give counts such as 5,15,30")
        out.append(k)
    if not out:
        raise SegTrainError(f"{option} is empty; give counts such as 5,15,30")
    return sorted(set(out))


def choose_ids(ids: Sequence[str], fraction: float, seed: int, salt: str) -> list[str]:
    """A seeded ``fraction`` of ``ids`` (at least one), in the order of ``ids``: the same seed and ids give the
    same choice whatever else runs. ``salt`` separates the draws of different purposes."""
    n = max(1, round(fraction * len(ids)))
    rng = np.random.default_rng(derive_seed(seed, zlib.crc32(salt.encode())))
    pick = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist())
    return [ids[i] for i in pick]


def evaluate_model(subject: Subject, model: nn.Module, testsets: Sequence[str], protocol: str = "paper",
                   victim: str | None = None, target: str | None = None, workers: int = 0) -> dict:
    """The backdoor report of ``model`` on the subject's data and the Poisoned Tests (the evaluation of
    ``segtrain evaluate``, with the checkpoint's crop as the sliding window)."""
    proto = get_protocol(protocol)
    crop = tuple(subject.ckpt["config"].get("crop") or ()) or None
    predict = ModelPredictor(model, subject.device, crop, workers, False, flip=proto.flip)
    return backdoor_report(predict, subject.data, list(testsets), proto, victim, target, subject.trained_on)


def check_sets(subject: Subject, testsets: Sequence[str], victim: str | None, target: str | None) -> None:
    """The Poisoned Tests and the subject's data are refused before any work when they do not fit."""
    check_testsets(subject.data, list(testsets), victim, target, subject.trained_on, option="--test")


def headline(report: dict) -> dict:
    """The numbers a defense table shows: CBA, clean ASR, and per Poisoned Test band PBA / ASR / clean ASR."""
    return {
        "cba": report["benign"]["cba"],
        "clean_asr": report["benign"].get("clean_asr"),
        "sets": [{"testset": Path(p["testset"]).name, "band": p.get("band_label"), "subset": p.get("subset"),
                  "pba": p["pba"], "asr": p["asr"], "clean_asr": p["clean_asr"]} for p in report["poisoned"]],
    }


def defended_checkpoint(subject: Subject, model: nn.Module, defense: dict) -> dict:
    """A checkpoint ``segtrain evaluate`` loads: the original's config and class table, the new weights,
    and what was done to them (``defense``)."""
    keep = {k: v for k, v in subject.ckpt.items() if k in ("config", "num_classes", "class_names", "dataset",
                                                            "total_iters", "step")}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {**keep, "model": state, "defense": defense}


def finetune_config(subject: Subject, epochs: int | None, iters: int | None, lr: float | None, batch: int | None,
                    seed: int, workers: int) -> TrainConfig:
    """The checkpoint's recipe for fine-tuning: its arch, crop, scale, optimizer; the given schedule, lr, seed."""
    r = subject.recipe
    return replace(r, iters=iters, epochs=None if iters is not None else epochs, lr=lr or r.lr,
                   batch=batch or r.batch, seed=seed, workers=workers, device=str(subject.device), resume=False,
                   stop_after=None, eval_every=None, eval_poisoned=(), quiet=True)


__all__ = ["RESULT", "Subject", "check_output", "check_sets", "choose_ids", "defended_checkpoint",
           "evaluate_model", "finetune_config", "headline", "open_subject", "parse_counts", "parse_fractions"]
