"""Training and evaluation loops.

Recipe (PSPNet/DeepLab practice): SGD momentum 0.9 (or AdamW), poly LR ``lr * (1 - step/total) ** 0.9``,
weight decay, ``CrossEntropyLoss(ignore_index=255)`` on ``out`` + 0.4 x the same loss on ``aux``;
random scale 0.5-2.0, random crop (pad 0 / 255), horizontal flip. On CUDA: optional bf16 autocast and
channels_last; on CPU everything runs in fp32 and a fixed seed gives the same run.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from poisongen.datasets import open_dataset
from poisongen.errors import ConfigError, PoisonGenError

from .data import SegDataset, collate
from .metrics import IGNORE, MetricAccumulator
from .models import build_model, load_backbone_weights, resolve
from .transforms import train_transform

CKPT = "last.pt"


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "pspnet"
    backbone: str | None = None
    output_stride: int | None = None
    aux: bool = True
    iters: int | None = None
    epochs: int | None = None
    batch: int = 8
    crop: tuple[int, int] = (512, 1024)
    scale: tuple[float, float] = (0.5, 2.0)
    lr: float = 0.01
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    aux_weight: float = 0.4
    backbone_weights: str | None = None
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    workers: int = 2
    seed: int = 0
    resume: bool = False
    log_every: int = 10
    ckpt_every: int = 1000
    split: str | None = None
    victim: tuple[int, ...] = ()
    target: int | None = None
    eval_poisoned: list[str] = field(default_factory=list)
    quiet: bool = False


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device '{name}'; valid devices are {{auto, cpu, cuda}}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG third-party code may use
    torch.manual_seed(seed)


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - min(step, total) / max(total, 1)) ** power


def seg_loss(outputs: dict, target: torch.Tensor, aux_weight: float = 0.4) -> torch.Tensor:
    loss = F.cross_entropy(outputs["out"].float(), target, ignore_index=IGNORE)
    if outputs.get("aux") is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), target, ignore_index=IGNORE)
    return loss


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer '{cfg.optimizer}'; valid optimizers are {{sgd, adamw}}")


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    c = ckpt["config"]
    model = build_model(c["arch"], int(ckpt["num_classes"]), c.get("backbone"), c.get("output_stride"),
                        bool(c.get("aux", True)))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CKPT
    if not path.is_file():
        raise PoisonGenError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise PoisonGenError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise PoisonGenError(f"{path} is not a segtrain checkpoint (no model/config)")
    return ckpt


def check_classes(ckpt: dict, names: Sequence[str], where: str) -> None:
    n = int(ckpt["num_classes"])
    if n != len(names):
        raise PoisonGenError(
            f"checkpoint was trained for {n} classes but {where} has {len(names)}; use a dataset with the "
            f"same class table"
        )


def _loader_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002
    random.seed(s)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train per ``cfg``; write ``config.json``, ``log.jsonl`` and ``last.pt`` under ``cfg.out``.

    Returns ``{"model", "layout", "device", "step", "out"}``.
    """
    device = resolve_device(cfg.device)
    arch, backbone, os_ = resolve(cfg.arch, cfg.backbone, cfg.output_stride)
    cfg.arch, cfg.backbone, cfg.output_stride = arch, backbone, os_
    if cfg.batch < 2:
        raise ConfigError("--batch must be at least 2 (BatchNorm in the pooling branches needs 2 samples)")
    if (cfg.iters is None) == (cfg.epochs is None):
        raise ConfigError("give exactly one of --iters or --epochs")
    if (cfg.iters is not None and cfg.iters < 1) or (cfg.epochs is not None and cfg.epochs < 1):
        raise ConfigError("--iters / --epochs must be positive")
    layout = open_dataset(cfg.data)
    split = cfg.split or layout.train_split
    names = layout.meta.names
    out = Path(cfg.out)
    ckpt_path = out / CKPT
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise PoisonGenError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        check_classes(ckpt, names, f"dataset {cfg.data}")
        old = ckpt["config"]
        for key in ("arch", "backbone", "output_stride", "aux"):
            if old.get(key) != getattr(cfg, key):
                raise PoisonGenError(f"--resume: checkpoint has {key}={old.get(key)!r}, this run asks for "
                                     f"{getattr(cfg, key)!r}")
    out.mkdir(parents=True, exist_ok=True)

    start = int(ckpt["step"]) if ckpt else 0
    seed_everything(cfg.seed + start)
    model = build_model(arch, layout.meta.num_classes, backbone, os_, cfg.aux)
    if cfg.backbone_weights and not ckpt:
        load_backbone_weights(model, cfg.backbone_weights)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    cuda = device.type == "cuda"
    if cfg.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    if ckpt and "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])

    ds = SegDataset(layout, split, train_transform(tuple(cfg.crop), tuple(cfg.scale)))
    drop_last = len(ds) >= cfg.batch
    loader = DataLoader(
        ds, batch_size=cfg.batch, shuffle=True, drop_last=drop_last, num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0, pin_memory=cuda, collate_fn=collate,
        generator=_loader_generator(cfg.seed + start), worker_init_fn=_worker_init,
    )
    per_epoch = len(loader)
    total = cfg.iters if cfg.iters is not None else cfg.epochs * per_epoch
    (out / "config.json").write_text(json.dumps({**_jsonable(asdict(cfg)), "total_iters": total,
                                                 "num_classes": layout.meta.num_classes, "class_names": names,
                                                 "train_split": split, "train_samples": len(ds)}, indent=1) + "\n")

    def save(step: int) -> None:
        tmp = out / (CKPT + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "config": _jsonable(asdict(cfg)), "num_classes": layout.meta.num_classes,
                    "class_names": names, "dataset": layout.meta.to_dict(), "total_iters": total}, tmp)
        tmp.replace(ckpt_path)

    step = start
    model.train()
    t0, seen = time.perf_counter(), 0
    with (out / "log.jsonl").open("a") as logf:
        while step < total:
            for images, labels, _ in loader:
                if step >= total:
                    break
                lr = poly_lr(cfg.lr, step, total)
                for g in opt.param_groups:
                    g["lr"] = lr
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if cfg.channels_last and cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and cuda):
                    outputs = model(images)
                loss = seg_loss(outputs, labels, cfg.aux_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += images.shape[0]
                if step % cfg.log_every == 0 or step == total:
                    if cuda:
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                    if not math.isfinite(loss.item()):
                        raise PoisonGenError(f"loss became {loss.item()} at step {step}; lower --lr")
                    rec = {"step": step, "loss": round(loss.item(), 6), "lr": lr, "img_s": round(seen / dt, 3)}
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    if not cfg.quiet:
                        log(f"step {step}/{total} loss {rec['loss']:.4f} lr {lr:.2e} {rec['img_s']:.1f} img/s")
                    t0, seen = time.perf_counter(), 0
                if step % cfg.ckpt_every == 0 and step < total:
                    save(step)
    save(step)
    return {"model": model, "layout": layout, "device": device, "step": step, "out": out}


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, float) and math.isinf(d):
        return None
    return d


# --- evaluation -------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, num_classes: int, crop: tuple[int, int] | None = None,
                   overlap: float = 1 / 3) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` for a normalised batch: whole image, or - when the image is larger than
    ``crop`` - a sliding window with the given overlap, averaging the logits where windows overlap."""
    H, W = image.shape[-2:]
    if crop is None or (H <= crop[0] and W <= crop[1]):
        return model(image)["out"].float()
    th, tw = min(crop[0], H), min(crop[1], W)
    sh, sw = max(1, int(th * (1 - overlap))), max(1, int(tw * (1 - overlap)))

    def starts(size, win, stride):
        s = list(range(0, size - win + 1, stride))
        if s[-1] + win < size:
            s.append(size - win)
        return s

    acc = image.new_zeros((image.shape[0], num_classes, H, W), dtype=torch.float32)
    cnt = image.new_zeros((1, 1, H, W), dtype=torch.float32)
    for y in starts(H, th, sh):
        for x in starts(W, tw, sw):
            acc[..., y:y + th, x:x + tw] += model(image[..., y:y + th, x:x + tw])["out"].float()
            cnt[..., y:y + th, x:x + tw] += 1
    return acc / cnt


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegDataset, device: torch.device | str, num_classes: int,
             victim: Sequence[int] = (), target: int | None = None, crop: tuple[int, int] | None = None,
             overlap: float = 1 / 3, workers: int = 0, amp: bool = False) -> MetricAccumulator:
    """Run ``model`` over ``dataset`` (one image at a time, any size) and accumulate the metrics
    (confusion matrix, victim counters, per-sample victim counts for clean ASR on subsets)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes, victim, target, device)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    for images, labels, ids in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = predict_logits(model, images, num_classes, crop, overlap)
        acc.update(logits.argmax(1), labels.to(device), ids=ids)
    model.train(was_training)
    return acc
