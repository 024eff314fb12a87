"""The frozen training configuration: every option of a training run, checked in one place.

Nothing changes a :class:`TrainConfig` once it is built; a changed copy is made with
:func:`dataclasses.replace` (which checks it again). Each bad value is one line naming the option, the value
and what is allowed (:class:`~segtrain.errors.SegTrainError`, exit code 2 in the CLI).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from poisongen.errors import choices

from .errors import SegTrainError

OPTIMIZERS = ("sgd", "adamw")


def _positive_int(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SegTrainError(f"{name} {value!r} is not allowed; it must be a whole number >= 1")


def _number(name: str, value, low: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise SegTrainError(f"{name} {value!r} is not allowed; it must be a finite number {'>' if strict else '>='} "
                            f"{low:g}")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (the CLI's ``run`` options, by field name).

    ``data``/``out`` only describe where the run reads and writes (recorded in ``config.json``);
    :func:`segtrain.engine.fit` reads neither. ``arch``/``backbone``/``output_stride`` are resolved
    against the model registry (defaults filled, aliases expanded) when the config is built.
    ``dataset`` is the training data's fingerprint (:func:`segtrain.data.dataset_fingerprint`).
    """

    data: str | None = None
    out: str | None = None
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
    weights: str | None = None  # the whole model's starting weights (--weights)
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    workers: int = 2
    seed: int = 0
    resume: bool = False
    log_every: int = 10
    ckpt_every: int = 1000
    split: str | None = None
    victim: tuple[int, ...] = ()
    target: int | None = None
    eval_poisoned: tuple[str, ...] = ()
    quiet: bool = False
    stop_after: int | None = None
    eval_every: int | None = None
    dataset: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        from .models import resolve

        # normalise the container types once, at construction (the object is not yet in use)
        set_ = object.__setattr__
        set_(self, "crop", tuple(self.crop))
        set_(self, "scale", tuple(self.scale))
        set_(self, "victim", tuple(int(v) for v in self.victim))
        set_(self, "eval_poisoned", tuple(str(p) for p in self.eval_poisoned))
        set_(self, "optimizer", str(self.optimizer).lower())
        set_(self, "dataset", dict(self.dataset))
        arch, backbone, os_ = resolve(self.arch, self.backbone, self.output_stride)
        set_(self, "arch", arch)
        set_(self, "backbone", backbone)
        set_(self, "output_stride", os_)
        self.validate()

    def validate(self) -> None:
        """Check every value; raise one :class:`SegTrainError` line for the first bad one."""
        if (self.iters is None) == (self.epochs is None):
            given = "both" if self.iters is not None else "neither"
            raise SegTrainError(f"give exactly one of --iters or --epochs (got {given})")
        _positive_int("--iters", self.iters)
        _positive_int("--epochs", self.epochs)
        if not isinstance(self.batch, int) or self.batch < 2:
            raise SegTrainError(f"--batch {self.batch!r} is not allowed; it must be >= 2 (BatchNorm in the pooling "
                                f"branches needs 2 samples)")
        if len(self.crop) != 2 or not all(isinstance(v, int) and v >= 1 for v in self.crop):
            raise SegTrainError(f"--crop {self.crop!r} is not allowed; it must be two whole numbers HxW, each >= 1")
        if len(self.scale) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.scale):
            raise SegTrainError(f"--scale {self.scale!r} is not allowed; it must be two finite numbers LO,HI")
        lo, hi = self.scale
        if lo <= 0 or lo > hi:
            raise SegTrainError(f"--scale {lo:g},{hi:g} is not allowed; it must be LO,HI with 0 < LO <= HI "
                                f"(e.g. 0.5,2.0)")
        _number("--lr", self.lr, 0, strict=True)
        _number("--weight-decay", self.weight_decay, 0, strict=False)
        _number("momentum", self.momentum, 0, strict=False)
        _number("aux weight", self.aux_weight, 0, strict=False)
        if self.optimizer not in OPTIMIZERS:
            raise SegTrainError(f"unknown optimizer '{self.optimizer}'; valid optimizers are {choices(OPTIMIZERS)}")
        dev = str(self.device).lower()
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise SegTrainError(f"unknown device '{self.device}'; valid devices are {{auto, cpu, cuda, cuda:N}}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise SegTrainError(f"--workers {self.workers!r} is not allowed; it must be 0 (load in the main "
                                f"process) or more")
        _positive_int("--log-every", self.log_every)
        _positive_int("--ckpt-every", self.ckpt_every)
        _positive_int("--stop-after", self.stop_after)
        _positive_int("--eval-every", self.eval_every)

    def per_epoch(self, samples: int) -> int:
        """Steps per epoch on ``samples`` training samples (the last incomplete batch is dropped)."""
        return max(1, samples // self.batch)

    def total_iters(self, samples: int) -> int:
        """``--iters``, or ``--epochs`` x steps per epoch."""
        return self.iters if self.iters is not None else self.epochs * self.per_epoch(samples)

    def to_dict(self) -> dict:
        """JSON-ready: tuples as lists (what ``config.json`` and the checkpoint hold)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, float) and math.isinf(d):
        return None
    return d
