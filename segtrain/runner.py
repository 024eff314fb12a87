"""``segtrain run`` as a library call: check everything, build the model from the registry, train it with
:func:`segtrain.engine.fit` into a run directory (``config.json``, ``log.jsonl``, ``last.pt``).

:func:`prepare` does every check that can fail (options, data, ``--out``, ``--eval-poisoned`` test sets,
memory, backbone weights, the ``--resume`` checkpoint) before anything is created, so a refused run leaves
no folder behind; :func:`train_run` then creates the run directory and trains.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from poisongen.datasets import Layout, open_dataset

from . import checkpoint, distributed
from .checkpoint import CKPT
from .config import TrainConfig
from .data import SegDataset, dataset_fingerprint
from .engine import FitResult, Hooks, fit, resolve_device, seed_everything
from .errors import SegTrainError
from .memory import check_training_memory
from .models import build_model, load_backbone_weights, load_model_weights
from .output import write_json
from .transforms import train_transform

LOG, CURVE = "log.jsonl", "curve.jsonl"


@dataclass(frozen=True)
class RunPlan:
    """A checked run: the final config (data fingerprint, victim/target filled), its data and model."""

    cfg: TrainConfig
    layout: Layout
    split: str
    train_data: SegDataset
    model: nn.Module
    device: torch.device
    resume: dict | None  # the checkpoint --resume continues from

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def prepare(cfg: TrainConfig) -> RunPlan:
    """Check a run before anything is written; build its model (seeded from ``cfg.seed``). Under torchrun
    the process joins the process group first (:func:`segtrain.distributed.init`) and the run's device is
    ``cuda:LOCAL_RANK`` on CUDA; every rank makes the same checks.

    Raises:
        SegTrainError: one line for the first problem found.
    """
    if cfg.data is None or cfg.out is None:
        raise SegTrainError("a run needs the training data (DATA) and a run directory (--out)")
    device = resolve_device(cfg.device)
    distributed.init(device)
    device = distributed.local_device(device)
    distributed.check_batch(cfg.batch, distributed.world())
    distributed.check_sync_bn(cfg.sync_bn, device, distributed.world())
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise SegTrainError(f"--out {out} is a file; give a folder (a new one, or a run directory to --resume)")
    if cfg.resume and not (out / CKPT).is_file():
        raise SegTrainError(f"--resume: no checkpoint at {out / CKPT}")
    layout = open_dataset(cfg.data)
    root = layout.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise SegTrainError(f"--out {out} is inside the training data {cfg.data}; the data is never written to, "
                            f"give a run folder outside it")
    split = cfg.split or layout.train_split
    names = layout.meta.names
    train_data = SegDataset(layout, split, train_transform(cfg.crop, cfg.scale))
    if cfg.batch > len(train_data):
        raise SegTrainError(f"--batch {cfg.batch} is larger than split '{split}' of {cfg.data} ({len(train_data)} "
                            f"samples); use --batch {len(train_data)} or less")
    check_training_memory(cfg, layout.meta.num_classes, device)
    resume = None
    if cfg.resume:
        resume = checkpoint.load(out / CKPT)
        checkpoint.check_classes(resume, names, f"dataset {cfg.data}")
        if "step" not in resume:
            raise SegTrainError(f"--resume: {out / CKPT} records no step; it cannot be resumed")
        old = resume["config"]
        for key in ("arch", "backbone", "output_stride", "aux"):
            if old.get(key) != getattr(cfg, key):
                raise SegTrainError(f"--resume: checkpoint has {key}={old.get(key)!r}, this run asks for "
                                    f"{getattr(cfg, key)!r}")
        was = (resume.get("sampler") or {}).get("train_samples")
        if was is not None and was != len(train_data):
            raise SegTrainError(f"--resume: split '{split}' of {cfg.data} has {len(train_data)} samples, the "
                                f"checkpoint's run trained on {was}; resume on the same data")
    fingerprint = dataset_fingerprint(layout)
    if resume is not None:
        old = resume["config"]
        was = (old.get("dataset") or {}).get("fingerprint")
        if was is not None and was != fingerprint["fingerprint"]:
            raise SegTrainError(f"--resume: {cfg.data} is not the data the checkpoint's run trained on (dataset "
                                f"fingerprint {fingerprint['fingerprint'][:12]}..., the run's {was[:12]}...)")
        if not cfg.victim and cfg.target is None:  # the attack the run was started for, unless given again
            cfg = replace(cfg, victim=tuple(old.get("victim") or ()), target=old.get("target"))
    cfg = replace(cfg, dataset=fingerprint)
    seed_everything(cfg.seed)  # the model's initialisation, then dropout, draw from here
    model = build_model(cfg.arch, layout.meta.num_classes, cfg.backbone, cfg.output_stride, cfg.aux)
    if cfg.backbone_weights and resume is None:
        load_backbone_weights(model, cfg.backbone_weights)
    if cfg.weights and resume is None:
        load_model_weights(model, cfg.weights)
    return RunPlan(cfg=cfg, layout=layout, split=split, train_data=train_data, model=model, device=device,
                   resume=resume)


def train_run(plan: RunPlan, on_step: Callable[[int, int, dict | None], None] | None = None,
              on_eval: Callable[[nn.Module, int, float], None] | None = None) -> FitResult:
    """Create the run directory and train: ``config.json`` first, ``log.jsonl`` one line per logged step
    (a fresh run starts it anew, a resumed one cut back to its checkpoint's step, as ``curve.jsonl``),
    ``last.pt`` every ``--ckpt-every`` steps and at the end (atomically). ``on_step``/``on_eval`` as in
    :class:`~segtrain.engine.Hooks`. Under torchrun only rank 0 writes (the other ranks train and
    evaluate)."""
    cfg, out, layout = plan.cfg, plan.out, plan.layout
    if not distributed.is_main():
        return fit(plan.model, plan.train_data, cfg, Hooks(on_eval=on_eval), resume=plan.resume)
    out.mkdir(parents=True, exist_ok=True)
    n = len(plan.train_data)
    total = cfg.total_iters(n)
    meta = {"config": cfg.to_dict(), "num_classes": layout.meta.num_classes, "class_names": layout.meta.names,
            "dataset": layout.meta.to_dict(), "total_iters": total}
    conf = {**cfg.to_dict(), "total_iters": total, "num_classes": layout.meta.num_classes,
            "class_names": layout.meta.names, "train_split": plan.split, "train_samples": n}
    write_json(out / "config.json", conf)  # atomic: never half a config.json beside a checkpoint
    start = int(plan.resume["step"]) if plan.resume else 0
    for path in (out / LOG, out / CURVE):
        truncate_log(path, start)
    with (out / LOG).open("a") as logf:

        def step_hook(step: int, total: int, rec: dict | None) -> None:
            if rec is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
            if on_step is not None:
                on_step(step, total, rec)

        hooks = Hooks(on_step=step_hook, on_eval=on_eval,
                      on_checkpoint=lambda state: checkpoint.save(out / CKPT, {**state, **meta}))
        return fit(plan.model, plan.train_data, cfg, hooks, resume=plan.resume)


def truncate_log(path: Path, step: int) -> None:
    """Drop log records after ``step``: a run stopped between two checkpoints logged steps that the
    resumed run will run (and log) again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(x + "\n" for x in keep))
