"""Training and evaluation loops.

Recipe (PSPNet/DeepLab practice): SGD momentum 0.9 (or AdamW), poly LR ``lr * (1 - step/total) ** 0.9``,
weight decay, ``CrossEntropyLoss(ignore_index=255)`` on ``out`` + 0.4 x the same loss on ``aux``;
random scale 0.5-2.0, random crop (pad 0 / 255), horizontal flip. On CUDA: optional bf16 autocast and
channels_last, cudnn.benchmark; on CPU everything runs in fp32.

Determinism: the batches of step ``s`` and each sample's augmentation are functions of ``(seed, s)``
alone (:class:`StepBatches`, :func:`seeded`), and the checkpoint holds the model, optimizer, step and the
main process's RNG states (dropout). So on CPU a run interrupted at any checkpoint and resumed gives
bit-identical weights to the uninterrupted run, and ``--workers`` does not change the run.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from poisongen.datasets import open_dataset
from poisongen.errors import ConfigError, PoisonGenError

from .data import SegDataset, collate, dataset_fingerprint
from .metrics import IGNORE
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
    stop_after: int | None = None
    eval_every: int | None = None
    dataset: dict = field(default_factory=dict)  # dataset_fingerprint() of the training data, filled by train()


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


def derive_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys alone (``SeedSequence`` mixing): no global state involved."""
    return int(np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1, np.uint64)[0])


# Key spaces of derive_seed, so that a permutation seed never equals a sample seed.
_PERM, _SAMPLE, _LOADER = 0, 1, 2


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation of ``range(n)`` drawn from ``(seed, epoch)`` only."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, _PERM, epoch))
    return torch.randperm(n, generator=g).tolist()


class StepBatches:
    """Batch sampler for steps ``start .. total-1`` that yields ``[(index, sample_seed), ...]`` per step.

    Step ``s`` is batch ``s % per_epoch`` of epoch ``s // per_epoch`` (the last incomplete batch of an
    epoch is dropped); each epoch's order comes from :func:`epoch_order` and each sample's augmentation
    seed from ``(seed, epoch, index)``. Any step's batch is thus known without replaying the ones before
    it (exact ``--resume``) and without any state in the workers (same run for any ``--workers``).
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int):
        self.n, self.seed, self.start, self.total = n, seed, start, total
        self.batch = min(batch, n)
        self.per_epoch = max(1, n // batch)

    def position(self, step: int) -> dict:
        """Where step ``step`` (the next one to run) lies: epoch and batch within the epoch."""
        epoch, b = divmod(step, self.per_epoch)
        return {"epoch": epoch, "batch": b, "per_epoch": self.per_epoch, "train_samples": self.n,
                "seed": self.seed}

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        cached, order = None, []
        for s in range(self.start, self.total):
            epoch, b = divmod(s, self.per_epoch)
            if epoch != cached:
                cached, order = epoch, epoch_order(self.n, self.seed, epoch)
            idx = order[b * self.batch:(b + 1) * self.batch]
            yield [(i, derive_seed(self.seed, _SAMPLE, epoch, i)) for i in idx]


@contextmanager
def seeded(seed: int):
    """Run a block with torch, NumPy (legacy global) and Python ``random`` seeded from ``seed``, and put the
    three generators back afterwards: one sample's augmentation neither reads nor disturbs the state of
    the process it runs in (the main process with ``--workers 0``, or any worker)."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party augmentations may use the legacy RNG
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` = ``dataset[index]`` drawn under :func:`seeded` ``(seed)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, s = key
        with seeded(s):
            return self.dataset[i]


@contextmanager
def preserved_rng(cuda: bool):
    """Run a block (an evaluation during training) and put every generator of the process back."""
    st = rng_state(cuda)
    try:
        yield
    finally:
        set_rng_state(st, cuda)


def rng_state(cuda: bool) -> dict:
    """The main process's generators (dropout draws from torch's)."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}  # noqa: NPY002
    if cuda:
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, cuda: bool) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])  # noqa: NPY002
    random.setstate(st["python"])
    if cuda and "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


def amp_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it (Ampere and later), float16 (with a GradScaler) otherwise."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(cfg: TrainConfig, log=print, on_step=None, on_eval=None) -> dict:
    """Train per ``cfg``; write ``config.json``, ``log.jsonl`` and ``last.pt`` under ``cfg.out``.

    ``on_step(step, total, rec)`` is called after every step; ``rec`` is the log record
    (``step, loss, lr, img_s``) on logged steps and None otherwise (reading the loss syncs the GPU).
    ``on_eval(model, step, train_seconds)`` is called every ``cfg.eval_every`` steps and at the last step
    (``train_seconds``: wall time spent training so far, evaluations excluded); it runs with every RNG
    of the process saved and restored, so evaluating never changes the run.
    Returns ``{"model", "layout", "device", "step", "total", "out"}``.
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
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise ConfigError("--stop-after must be positive")
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be 0 (load in the main process) or more, got {cfg.workers}")
    layout = open_dataset(cfg.data)
    split = cfg.split or layout.train_split
    names = layout.meta.names
    out = Path(cfg.out)
    ckpt_path = out / CKPT
    ckpt = None
    ds = SegDataset(layout, split, train_transform(tuple(cfg.crop), tuple(cfg.scale)))
    if len(ds) < 2:
        raise ConfigError(f"split '{split}' of {cfg.data} has {len(ds)} sample(s); training needs at least 2")
    cfg.dataset = dataset_fingerprint(layout)
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
        was = (ckpt.get("sampler") or {}).get("train_samples")
        if was is not None and was != len(ds):
            raise PoisonGenError(f"--resume: split '{split}' of {cfg.data} has {len(ds)} samples, the checkpoint's "
                                 f"run trained on {was}; resume on the same data")
        if not cfg.victim and cfg.target is None:  # the attack the run was started for, unless given again
            cfg.victim, cfg.target = tuple(old.get("victim") or ()), old.get("target")
        was = (old.get("dataset") or {}).get("fingerprint")
        if was is not None and was != cfg.dataset["fingerprint"]:
            raise PoisonGenError(f"--resume: {cfg.data} is not the data the checkpoint's run trained on (dataset "
                                 f"fingerprint {cfg.dataset['fingerprint'][:12]}..., the run's {was[:12]}...)")
    out.mkdir(parents=True, exist_ok=True)

    start = int(ckpt["step"]) if ckpt else 0
    seed_everything(cfg.seed)
    model = build_model(arch, layout.meta.num_classes, backbone, os_, cfg.aux)
    if cfg.backbone_weights and not ckpt:
        load_backbone_weights(model, cfg.backbone_weights)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels once
    if cfg.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    if ckpt and "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    amp = cfg.amp and cuda
    dtype = amp_dtype() if amp else torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    if ckpt and ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])

    per_epoch = max(1, len(ds) // cfg.batch)
    total = cfg.iters if cfg.iters is not None else cfg.epochs * per_epoch
    sampler = StepBatches(len(ds), cfg.batch, cfg.seed, start, total)
    # One pass over one loader for the whole run: the workers live as long as the run (persistent in
    # effect), and the loader's own generator (base seed of its workers) never touches the global RNG.
    loader = DataLoader(
        SeededSamples(ds), batch_sampler=sampler, num_workers=cfg.workers, pin_memory=cuda, collate_fn=collate,
        generator=_generator(derive_seed(cfg.seed, _LOADER)),
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
    (out / "config.json").write_text(json.dumps({**_jsonable(asdict(cfg)), "total_iters": total,
                                                 "num_classes": layout.meta.num_classes, "class_names": names,
                                                 "train_split": split, "train_samples": len(ds)}, indent=1) + "\n")
    if ckpt and "rng" in ckpt:
        set_rng_state(ckpt["rng"], cuda)
    elif ckpt:  # a checkpoint from before exact replay: reproducible, but not the uninterrupted run
        seed_everything(cfg.seed + start)

    def save(step: int) -> None:
        tmp = out / (CKPT + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "rng": rng_state(cuda), "sampler": sampler.position(step),
                    "config": _jsonable(asdict(cfg)), "num_classes": layout.meta.num_classes,
                    "class_names": names, "dataset": layout.meta.to_dict(), "total_iters": total}, tmp)
        tmp.replace(ckpt_path)

    log_path = out / "log.jsonl"
    for path in (log_path, out / "curve.jsonl"):  # a fresh run starts them anew, a resumed one at its step
        _truncate_log(path, start)
    stop = min(total, cfg.stop_after) if cfg.stop_after else total
    step = start
    model.train()
    t0, seen = time.perf_counter(), 0
    trained, t_step = 0.0, time.perf_counter()  # training wall time, evaluations excluded
    with log_path.open("a") as logf:
        for images, labels, _ in loader if step < stop else ():
            lr = poly_lr(cfg.lr, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last and cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype, enabled=amp):
                outputs = model(images)
            loss = seg_loss(outputs, labels, cfg.aux_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += images.shape[0]
            rec = None
            if step % cfg.log_every == 0 or step == total or step == stop:
                if cuda:
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                value = loss.item()
                if not math.isfinite(value):
                    raise PoisonGenError(f"loss became {value} at step {step}; lower --lr")
                rec = {"step": step, "loss": round(value, 6), "lr": lr, "img_s": round(seen / dt, 3)}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                if not cfg.quiet:
                    log(f"step {step}/{total} loss {rec['loss']:.4f} lr {lr:.2e} {rec['img_s']:.1f} img/s")
                t0, seen = time.perf_counter(), 0
            if on_step is not None:
                on_step(step, total, rec)
            if on_eval is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
                trained += time.perf_counter() - t_step
                with preserved_rng(cuda):
                    on_eval(model, step, trained)
                model.train()
                t_step = t0 = time.perf_counter()
                seen = 0
            if step >= stop:
                break
            if step % cfg.ckpt_every == 0:
                save(step)
    save(step)
    return {"model": model, "layout": layout, "device": device, "step": step, "total": total, "out": out}


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _truncate_log(path: Path, step: int) -> None:
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


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, float) and math.isinf(d):
        return None
    return d


# --- evaluation: moved to segtrain/inference.py (re-exported for existing callers) ------------------
from .inference import class_map, evaluate, predict_logits  # noqa: E402, F401
