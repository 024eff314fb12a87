"""Frozen, fully resolved attack configurations: the single place parameters are checked.

A config is resolved against a dataset (class names -> train ids, per-layout defaults, trigger size)
before planning; the resolved config is what the manifest records and what ``verify`` replays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import ConfigError, choices
from .placement import CONSTRAINTS, METRICS, STRATEGIES
from .rescale import check_scale

LINKS = ("copy", "hardlink", "symlink")
KINDS = ("train", "testset")


@dataclass(frozen=True)
class TriggerSpec:
    """``source``: ``builtin`` or an image path; ``size`` (h, w) in pixels; ``alpha`` lambda in (0, 1]."""

    source: str = "builtin"
    size: tuple[int, int] = (15, 15)
    alpha: float = 1.0
    sha256: str = ""  # of the resized RGBA pattern, filled when resolved

    def check(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"--alpha {self.alpha} is outside (0, 1]")
        if min(self.size) <= 0:
            raise ConfigError(f"--trigger-size {self.size} must be positive")


@dataclass(frozen=True)
class PlacementSpec:
    strategy: str = "random"
    lower: float = 0.0
    upper: float = math.inf
    metric: str = "euclidean"
    constraint: str = "single"
    edge_margin: int = 0
    position: tuple[int, int] | None = None

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy '{self.strategy}'; valid are {choices(STRATEGIES)}")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown --metric '{self.metric}'; valid are {choices(METRICS)}")
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(f"unknown window constraint '{self.constraint}'; valid are {choices(CONSTRAINTS)}")
        if self.lower < 0:
            raise ConfigError(f"--lower {self.lower} must be >= 0")
        if not self.lower < self.upper:
            raise ConfigError(f"distance band needs --lower < --upper, got L={self.lower}, U={self.upper}")
        if self.edge_margin < 0:
            raise ConfigError(f"--edge-margin {self.edge_margin} must be >= 0")
        if self.strategy == "fixed" and self.position is None:
            raise ConfigError("strategy 'fixed' needs --position y,x")


@dataclass(frozen=True)
class RelabelSpec:
    """``rule``: ``victim_to_target`` (IBA) or ``none`` (a Poisoned Test: labels untouched).
    ``prl_pixels``: Q pixels of Pixel Random Labeling per poisoned sample (0 = off)."""

    rule: str = "victim_to_target"
    prl_pixels: int = 0

    def check(self) -> None:
        if self.rule not in ("victim_to_target", "none"):
            raise ConfigError(f"unknown relabel rule '{self.rule}'; valid are {{victim_to_target, none}}")
        if self.prl_pixels < 0:
            raise ConfigError(f"--prl-pixels {self.prl_pixels} must be >= 0")


@dataclass(frozen=True)
class AttackConfig:
    """Everything that decides the output bytes, resolved to train ids and pixels."""

    attack: str
    kind: str  # "train" (poisoned training set) or "testset" (Poisoned Test, labels untouched)
    split: str
    victim: tuple[int, ...]
    target: int | None
    trigger: TriggerSpec = field(default_factory=TriggerSpec)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    relabel: RelabelSpec = field(default_factory=RelabelSpec)
    rate: float | None = None
    count: int | None = None
    allow_fewer: bool = False
    min_victim_pixels: int = 1
    seed: int = 0
    jpeg_quality: int = 95
    link: str = "copy"
    hash_files: bool = True
    scale: float | None = None  # the whole dataset rescaled by this factor first (None: as it is)
    full_scan: bool = False  # analyse every sample of the split, not just the draw order up to n candidates

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown manifest kind '{self.kind}'; valid are {choices(KINDS)}")
        if self.kind == "train":
            if (self.rate is None) == (self.count is None):
                raise ConfigError("give exactly one of --rate and --count")
            if self.rate is not None and not 0.0 < self.rate <= 1.0:
                raise ConfigError(f"--rate {self.rate} is outside (0, 1]")
            if self.count is not None and self.count < 1:
                raise ConfigError(f"--count {self.count} must be >= 1")
            if self.target is None:
                raise ConfigError("a training attack needs --target")
            if self.target in self.victim:
                raise ConfigError(f"victim and target must differ, both include class {self.target}")
        if not self.victim:
            raise ConfigError("--victim names no class")
        if self.min_victim_pixels < 1:
            raise ConfigError(f"--min-victim-pixels {self.min_victim_pixels} must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality {self.jpeg_quality} is outside 1..100")
        if self.link not in LINKS:
            raise ConfigError(f"unknown --link '{self.link}'; valid are {choices(LINKS)}")
        if self.scale is not None:
            check_scale(self.scale)
        self.trigger.check()
        self.placement.check()
        self.relabel.check()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["placement"]["upper"] = None if math.isinf(self.placement.upper) else self.placement.upper
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AttackConfig:
        d = dict(d)
        p = dict(d.pop("placement"))
        p["upper"] = math.inf if p.get("upper") is None else float(p["upper"])
        p["position"] = tuple(p["position"]) if p.get("position") is not None else None
        t = dict(d.pop("trigger"))
        t["size"] = tuple(t["size"])
        r = dict(d.pop("relabel"))
        d["victim"] = tuple(d["victim"])
        return cls(trigger=TriggerSpec(**t), placement=PlacementSpec(**p), relabel=RelabelSpec(**r), **d)


def parse_size(text: str, what: str = "--size") -> tuple[int, int]:
    """``"256x512"`` -> (256, 512); ``"55"`` -> (55, 55)."""
    parts = text.lower().split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{what} '{text}' is not H or HxW in whole pixels (e.g. 256x512)") from None
    if len(vals) == 1:
        vals = (vals[0], vals[0])
    if len(vals) != 2 or min(vals) <= 0:
        raise ConfigError(f"{what} '{text}' must be H or HxW with positive integers (e.g. 256x512)")
    return vals  # type: ignore[return-value]
