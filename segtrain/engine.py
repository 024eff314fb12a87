"""The training loop: :func:`fit` trains a model it is given (a fresh one from the registry, or an existing
one to fine-tune) on a training dataset, under a frozen :class:`~segtrain.config.TrainConfig`; plus the
evaluation loops at the bottom.

Recipe (PSPNet/DeepLab practice): SGD momentum 0.9 (or AdamW), poly LR ``lr * (1 - step/total) ** 0.9``,
weight decay, ``CrossEntropyLoss(ignore_index=255)`` on ``out`` + 0.4 x the same loss on ``aux``;
random scale 0.5-2.0, random crop (pad 0 / 255), horizontal flip. On CUDA: optional bf16 autocast and
channels_last, cudnn.benchmark; on CPU everything runs in fp32.

Determinism: the batches of step ``s`` and each sample's augmentation are functions of ``(seed, s)``
alone (:mod:`segtrain.sampling`), and a checkpoint holds the model, optimizer, step and the main
process's RNG states (dropout) (:mod:`segtrain.checkpoint`). So on CPU a run interrupted at any checkpoint
and resumed gives bit-identical weights to the uninterrupted run, and ``--workers`` does not change the run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import load_model_state, preserved_rng, rng_state, set_rng_state
from .config import TrainConfig
from .data import collate
from .errors import SegTrainError
from .metrics import IGNORE
from .sampling import SeededSamples, StepBatches, loader_generator


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SegTrainError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise SegTrainError(f"unknown device '{name}'; valid devices are {{auto, cpu, cuda}}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG third-party code may use
    torch.manual_seed(seed)


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - min(step, total) / max(total, 1)) ** power


def seg_loss(outputs: dict, target: torch.Tensor, aux_weight: float = 0.4,
             normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on ``out`` (+ ``aux_weight`` x on ``aux``), ignore pixels not counted: the mean over
    the valid pixels, or with ``normaliser`` their sum divided by it (the distributed loss, :func:`fit`)."""
    if normaliser is None:
        loss = F.cross_entropy(outputs["out"].float(), target, ignore_index=IGNORE)
        if outputs.get("aux") is not None and aux_weight:
            loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), target, ignore_index=IGNORE)
        return loss
    loss = F.cross_entropy(outputs["out"].float(), target, ignore_index=IGNORE, reduction="sum")
    if outputs.get("aux") is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), target, ignore_index=IGNORE,
                                                   reduction="sum")
    return loss / normaliser


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # the config allows no other


def amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it (Ampere and later), float16 (with a GradScaler) otherwise."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class Hooks:
    """Callbacks of :func:`fit`, each optional.

    Under torchrun (:mod:`segtrain.distributed`) ``on_step`` and ``on_checkpoint`` are called on rank 0
    only (the one process that writes) and ``on_eval`` on every rank (evaluation is sharded and reduced).

    * ``on_step(step, total, rec)``: after every step; ``rec`` is the log record ``{"step", "loss", "lr",
      "img_s"}`` on logged steps (every ``cfg.log_every``, the last step and the ``--stop-after`` step) and
      None otherwise (reading the loss syncs the GPU).
    * ``on_eval(model, step, train_seconds)``: every ``cfg.eval_every`` steps and at the last step
      (``train_seconds``: training wall time so far, evaluations excluded); it runs with every RNG of the
      process saved and restored, and the model is put back in training mode after it, so evaluating never
      changes the run.
    * ``on_checkpoint(state)``: every ``cfg.ckpt_every`` steps and when :func:`fit` returns; ``state`` is
      ``{"model", "optimizer", "scaler", "step", "rng", "sampler"}`` (state dicts), what
      ``fit(..., resume=state)`` continues from bit for bit (:func:`segtrain.checkpoint.save` writes it).
    * ``loss(outputs, labels, ids, step) -> scalar tensor``: the loss of a step in place of
      :func:`seg_loss` (``ids``: the sample ids of the batch; ``step``: 0-based): a defense's modified loss,
      e.g. ABL's local gradient ascent or gradient ascent on an isolated set (``segtrain.defenses.abl``), or a
      record of which samples were served. ``cfg.aux_weight`` is the hook's to apply.
    """

    on_step: Callable[[int, int, dict | None], None] | None = None
    on_eval: Callable[[nn.Module, int, float], None] | None = None
    on_checkpoint: Callable[[dict], None] | None = None
    loss: Callable[[dict, torch.Tensor, list, int], torch.Tensor] | None = None


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: the trained model (the one it was given), the step reached, the schedule's
    total, the device, and the training wall time (evaluations excluded)."""

    model: nn.Module
    step: int
    total: int
    device: torch.device
    train_seconds: float

    @property
    def finished(self) -> bool:
        """The schedule ran to its end (not stopped early by ``--stop-after``)."""
        return self.step >= self.total


def fit(model: nn.Module, train_data: Dataset, cfg: TrainConfig, hooks: Hooks | None = None,
        resume: dict | None = None) -> FitResult:
    """Train ``model`` (any module returning ``{"out": (B, K, H, W) logits[, "aux": ...]}``) on
    ``train_data`` (items ``(image float32 (3, h, w), label int64 (h, w), id)`` of the crop size, drawn
    with torch's RNG, e.g. :class:`~segtrain.data.SegDataset` with :func:`~segtrain.transforms.train_transform`)
    for ``cfg.total_iters(len(train_data))`` steps.

    Reads of ``cfg``: the schedule (``iters``/``epochs``, ``batch``, ``stop_after``), the optimizer
    (``optimizer``, ``lr``, ``momentum``, ``weight_decay``), ``aux_weight``, ``seed`` (batches and
    augmentation), ``device``, ``amp``, ``channels_last``, ``workers``, ``log_every``, ``ckpt_every``,
    ``eval_every``. Dropout draws from torch's global generator as it stands when ``fit`` is called (seed
    it first, e.g. with :func:`seed_everything`, for a reproducible run); ``resume`` (a checkpoint or the
    ``state`` of ``on_checkpoint``) restores weights, optimizer, scaler, step and generators, and the
    run continues as if never interrupted. The model is moved to ``cfg.device`` and left in training mode.

    Distributed (a process group initialised, e.g. by :func:`segtrain.distributed.init` under torchrun):
    the model is wrapped in DistributedDataParallel (``cfg.sync_bn``: SyncBatchNorm first, CUDA only),
    each process trains on ``cuda:LOCAL_RANK`` (or the CPU) on its share ``[rank::world]`` of each global
    batch of ``cfg.batch`` samples, and the loss is normalised by the global count of valid pixels, so
    a step is one process's step on the global batch (exactly so for models without BatchNorm or
    dropout; BatchNorm normalises with per-process statistics unless ``sync_bn``). Resume keeps working
    for the same number of processes (the RNG state saved is rank 0's, which every rank shares).

    Raises:
        SegTrainError: ``cfg.batch`` larger than ``train_data`` or not a multiple (>= 2 each) of the number
            of processes; ``sync_bn`` on the CPU; a ``resume`` state of a run on another number of samples
            or of another model; a loss that is not finite.
    """
    hooks = hooks or Hooks()
    device = distributed.local_device(resolve_device(cfg.device))
    world, main = distributed.world(), distributed.is_main()
    distributed.check_batch(cfg.batch, world)
    n = len(train_data)
    if cfg.batch > n:
        raise SegTrainError(f"--batch {cfg.batch} is larger than the training data ({n} samples); use --batch {n} "
                            f"or less")
    start = 0
    if resume is not None:
        if "step" not in resume or "model" not in resume:
            raise SegTrainError("resume: the state holds no step or model; pass a checkpoint or an on_checkpoint state")
        was = (resume.get("sampler") or {}).get("train_samples")
        if was is not None and was != n:
            raise SegTrainError(f"resume: the training data has {n} samples, the checkpoint's run trained on {was}; "
                                f"resume on the same data")
        start = int(resume["step"])
        load_model_state(model, resume["model"], "checkpoint")
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels once
    if cfg.sync_bn and world > 1:
        distributed.check_sync_bn(cfg.sync_bn, device, world)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BN layers inside ``model``
    if cfg.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    if resume is not None and resume.get("optimizer"):
        opt.load_state_dict(resume["optimizer"])
    amp = cfg.amp and cuda
    dtype = amp_dtype() if amp else torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    if resume is not None and resume.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(resume["scaler"])

    total = cfg.total_iters(n)
    sampler = StepBatches(n, cfg.batch, cfg.seed, start, total, distributed.rank(), world)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                      find_unused_parameters=not cfg.aux_weight)
    # One pass over one loader for the whole run: the workers live as long as the run (persistent in
    # effect), and the loader's own generator (base seed of its workers) never touches the global RNG.
    loader = DataLoader(
        SeededSamples(train_data), batch_sampler=sampler, num_workers=cfg.workers, pin_memory=cuda,
        collate_fn=collate, generator=loader_generator(cfg.seed), prefetch_factor=4 if cfg.workers > 0 else None,
    )
    if resume is not None and "rng" in resume:
        set_rng_state(resume["rng"], cuda)
    elif resume is not None:  # a checkpoint from before exact replay: reproducible, but not the uninterrupted run
        seed_everything(cfg.seed + start)

    def state(step: int) -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_state(cuda), "sampler": sampler.position(step)}

    stop = min(total, cfg.stop_after) if cfg.stop_after else total
    step = start
    model.train()
    t0, seen = time.perf_counter(), 0
    trained, t_step = 0.0, time.perf_counter()  # training wall time, evaluations excluded
    for images, labels, ids in loader if step < stop else ():
        lr = poly_lr(cfg.lr, step, total)
        for g in opt.param_groups:
            g["lr"] = lr
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if cfg.channels_last and cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            outputs = net(images)
        if hooks.loss is not None:  # a defense's objective (e.g. ABL's unlearning); its own normalisation
            loss = hooks.loss(outputs, labels, ids, step)
        elif world > 1:  # sum over this share / (global valid pixels / world): DDP's mean is the global mean
            valid = distributed.all_reduce_sum((labels != IGNORE).sum())  # int64: exact for any batch
            loss = seg_loss(outputs, labels, cfg.aux_weight, normaliser=valid.to(torch.float32) / world)
        else:
            loss = seg_loss(outputs, labels, cfg.aux_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        seen += images.shape[0] * world
        rec = None
        if step % cfg.log_every == 0 or step == total or step == stop:
            if cuda:
                torch.cuda.synchronize()
            value = (distributed.all_reduce_sum(loss.detach()) / world).item() if world > 1 else loss.item()
            if not math.isfinite(value):
                raise SegTrainError(f"loss became {value} at step {step}; lower --lr (now {cfg.lr:g})")
            img_s = round(seen / (time.perf_counter() - t0), 3)
            rec = {"step": step, "loss": round(value, 6), "lr": lr, "img_s": img_s}
            t0, seen = time.perf_counter(), 0
        if hooks.on_step is not None and main:
            hooks.on_step(step, total, rec)
        if hooks.on_eval is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
            trained += time.perf_counter() - t_step
            distributed.sync_buffers(model)  # every rank evaluates rank 0's (the checkpoint's) model
            with preserved_rng(cuda):
                hooks.on_eval(model, step, trained)
            model.train()
            t_step = t0 = time.perf_counter()
            seen = 0
        if step >= stop:
            break
        if hooks.on_checkpoint is not None and main and step % cfg.ckpt_every == 0:
            hooks.on_checkpoint(state(step))
    distributed.sync_buffers(model)
    if hooks.on_checkpoint is not None and main:
        hooks.on_checkpoint(state(step))
    trained += time.perf_counter() - t_step
    return FitResult(model=model, step=step, total=total, device=device, train_seconds=trained)
