"""Frozen, fully resolved attack configurations: the single place parameters are checked.

A config is resolved against a dataset (class names -> train ids, per-layout defaults, trigger size)
before planning; the resolved config is what the manifest records and what ``verify`` replays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import ConfigError, choices
from .placement import CONSTRAINTS, METRICS, STRATEGIES
from .record import bound_from_json, bound_to_json
from .rescale import check_scale

LINKS = ("copy", "hardlink", "symlink")
KINDS = ("train", "testset")
TRIGGER_KINDS = ("pattern", "line", "semantic")
RULES = ("victim_to_target", "matrix", "image_target", "instance", "none")
INSTANCE_MODES = ("nearest", "random")
NAMED_POSITIONS = ("corner", "top")
PROTOCOLS = ("paper", "iba-code")  # placement rules: the paper's text, or the published IBA code's
ALL = -1  # source of an N-to-1 row of the attack matrix: every non-ignore class


@dataclass(frozen=True)
class TriggerSpec:
    """``kind``: ``pattern`` (``source`` = ``builtin`` or an image path, pasted at a window of ``size``
    (h, w) px), ``line`` (the top ``size[0]`` rows blended toward black; ``size`` = (width, 0), 0 = the
    image's full width) or ``semantic`` (no image change: the presence of ``semantic_class`` is the
    trigger; ``size`` = (0, 0)). ``alpha`` lambda in (0, 1]."""

    source: str = "builtin"
    size: tuple[int, int] = (15, 15)
    alpha: float = 1.0
    sha256: str = ""  # of the resized RGBA pattern (or of the line/semantic description), filled when resolved
    kind: str = "pattern"
    semantic_class: int | None = None

    def check(self) -> None:
        if self.kind not in TRIGGER_KINDS:
            raise ConfigError(f"unknown trigger kind '{self.kind}'; valid are {choices(TRIGGER_KINDS)}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"--alpha {self.alpha} is outside (0, 1]")
        if self.kind == "pattern" and min(self.size) <= 0:
            raise ConfigError(f"--trigger-size {self.size} must be positive")
        if self.kind == "line" and self.size[0] <= 0:
            raise ConfigError(f"--line-width {self.size[0]} must be >= 1")
        if (self.kind == "semantic") != (self.semantic_class is not None):
            raise ConfigError("a semantic trigger needs its class (--semantic-trigger CLASS), and only it")


@dataclass(frozen=True)
class PlacementSpec:
    strategy: str = "random"
    lower: float = 0.0
    upper: float = math.inf
    metric: str = "euclidean"
    constraint: str = "single"
    edge_margin: int = 0
    position: tuple[int, int] | str | None = None  # top-left (y, x), or 'corner' / 'top' resolved per sample

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
        if isinstance(self.position, str) and self.position not in NAMED_POSITIONS:
            raise ConfigError(f"unknown --position '{self.position}'; valid are {choices(NAMED_POSITIONS)} or y,x")


@dataclass(frozen=True)
class RelabelSpec:
    """``rule`` (SPEC section 4): ``victim_to_target`` (IBA, BADSEG coarse vectors, conditional),
    ``matrix`` (fine-grained: ``matrix`` rows ``(source, target)``, source ``ALL`` = every non-ignore
    class; explicit rows win over ``ALL``), ``image_target`` (BadNets: the whole label becomes the
    label of ``target_image`` of split ``target_split``), ``instance`` (only the ``k`` victim instances
    chosen by ``instances`` are relabeled) or ``none`` (a Poisoned Test of the IBA kind).
    ``condition``: the rule applies only to samples holding every one of these classes.
    ``prl_pixels``: Q pixels of Pixel Random Labeling per poisoned sample (0 = off)."""

    rule: str = "victim_to_target"
    prl_pixels: int = 0
    matrix: tuple[tuple[int, int], ...] = ()
    target_image: str | None = None
    target_split: str | None = None
    instances: str | None = None
    k: int = 1
    condition: tuple[int, ...] = ()

    def check(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown relabel rule '{self.rule}'; valid are {choices(RULES)}")
        if self.prl_pixels < 0:
            raise ConfigError(f"--prl-pixels {self.prl_pixels} must be >= 0")
        if self.rule == "matrix" and not self.matrix:
            raise ConfigError("the fine-grained attack needs --matrix SRC:DST[,...] (e.g. person:car or all:road)")
        if self.rule == "image_target" and self.target_image is None:
            raise ConfigError("the image-level attack needs --target-image ID (a training sample's id)")
        if self.rule == "instance":
            if self.instances not in INSTANCE_MODES:
                raise ConfigError(f"unknown --instances '{self.instances}'; valid are {choices(INSTANCE_MODES)}")
            if self.k < 1:
                raise ConfigError(f"--k {self.k} must be >= 1")

    def lut(self) -> dict[int, int]:
        """The explicit rows of the matrix as source -> target (the ``ALL`` row excluded)."""
        return {s: t for s, t in self.matrix if s != ALL}

    @property
    def all_target(self) -> int | None:
        """The target of the matrix's ``ALL`` row (N-to-1), if any."""
        return next((t for s, t in self.matrix if s == ALL), None)


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
    protocol: str = "paper"  # "iba-code": the published code's placement, resolved into `placement` (SPEC 6b)

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
            if self.target is None and self.relabel.rule == "victim_to_target":
                raise ConfigError("a training attack needs --target")
        if self.target is None and self.relabel.rule == "instance":
            raise ConfigError("the instance attack needs --target")
        if self.target is not None and self.target in self.victim:
            raise ConfigError(f"victim and target must differ, both include class {self.target}")
        if not self.victim and self.relabel.rule != "image_target":
            raise ConfigError("--victim names no class")
        if self.min_victim_pixels < 1:
            raise ConfigError(f"--min-victim-pixels {self.min_victim_pixels} must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality {self.jpeg_quality} is outside 1..100")
        if self.link not in LINKS:
            raise ConfigError(f"unknown --link '{self.link}'; valid are {choices(LINKS)}")
        if self.scale is not None:
            check_scale(self.scale)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown --protocol '{self.protocol}'; valid are {choices(PROTOCOLS)}")
        self.trigger.check()
        self.placement.check()
        self.relabel.check()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["placement"]["upper"] = bound_to_json(self.placement.upper)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AttackConfig:
        d = dict(d)
        p = dict(d.pop("placement"))
        p["upper"] = bound_from_json(p.get("upper"))
        p["position"] = p.get("position")
        if isinstance(p["position"], list):
            p["position"] = tuple(p["position"])
        t = dict(d.pop("trigger"))
        t["size"] = tuple(t["size"])
        r = dict(d.pop("relabel"))
        r["matrix"] = tuple(tuple(row) for row in r.get("matrix", ()))
        r["condition"] = tuple(r.get("condition", ()))
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
