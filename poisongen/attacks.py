"""Attack presets: each is placement x relabel rule x trigger, with per-layout paper defaults.

Extension is by this plain table: a new attack is a new row (and, where it needs one, a new rule in
relabel.py), never a new framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .config import AttackConfig, PlacementSpec, RelabelSpec, TriggerSpec
from .datasets.base import Layout
from .errors import ConfigError, TriggerError, choices
from .rescale import check_sizes, scaled_size


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    paper: str
    strategy: str  # default placement strategy
    prl_pixels: int  # default Q
    band: bool  # whether the layout's default upper bound U applies


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("baseline", "IBA baseline: trigger at a random eligible position, victim -> target",
               "Influencer Backdoor Attack (Lan et al., ICLR 2024), sec. 4", "random", 0, False),
        Preset("nni", "Nearest Neighbor Injection: trigger at the eligible position nearest the victim "
               "within [L, U); with --prl-pixels Q it is NNI+PRL", "IBA sec. 4.2, appendix G", "nearest", 0, True),
        Preset("prl", "Pixel Random Labeling: baseline placement + Q random non-victim pixels relabeled "
               "to classes present in the image", "IBA sec. 4.3", "random", 100, False),
    )
}


@dataclass(frozen=True)
class LayoutDefaults:
    """The paper's defaults for a layout. With ``ref_height`` set, ``trigger`` and ``upper`` are
    pixels at that image height and are scaled to the dataset's height (Cityscapes: the paper's
    55 px and U=60 at 512x1024 become 28 px and U=30 at 256x512)."""

    victim: str
    target: str
    trigger: int
    upper: float
    ref_height: int | None


LAYOUT_DEFAULTS: dict[str, LayoutDefaults] = {
    "cityscapes": LayoutDefaults("car", "road", 55, 60.0, 512),
    "voc": LayoutDefaults("person", "background", 15, 30.0, None),
    "ade20k": LayoutDefaults("car", "road", 15, 30.0, None),
}


def scaled(value: float, height: int, ref: int | None) -> float:
    return value if ref is None else value * height / ref


def resolve(
    ds: Layout,
    attack: str,
    *,
    victim: str | None = None,
    target: str | None = None,
    trigger: str = "builtin",
    trigger_size: tuple[int, int] | None = None,
    alpha: float = 1.0,
    strategy: str | None = None,
    lower: float = 0.0,
    upper: float | None = None,
    metric: str = "euclidean",
    allow_multiclass: bool = False,
    allow_on_victim: bool = False,
    edge_margin: int = 0,
    position: tuple[int, int] | None = None,
    prl_pixels: int | None = None,
    rate: float | None = None,
    count: int | None = None,
    allow_fewer: bool = False,
    min_victim_pixels: int = 1,
    seed: int = 0,
    jpeg_quality: int = 95,
    link: str = "copy",
    hash_files: bool = True,
    kind: str = "train",
    split: str | None = None,
    scale: float | None = None,
    full_scan: bool = False,
) -> AttackConfig:
    """Resolve user options (class names, layout defaults, image-relative sizes) into a checked config."""
    if attack not in PRESETS:
        raise ConfigError(f"unknown attack '{attack}'; valid attacks are {choices(PRESETS)}")
    preset = PRESETS[attack]
    defaults = LAYOUT_DEFAULTS.get(ds.name)
    if defaults is None and (victim is None or (target is None and kind == "train")):
        raise ConfigError(f"the {ds.name} layout has no default classes; give --victim and --target")
    meta = ds.meta
    victims = meta.parse_classes(victim if victim is not None else defaults.victim)
    tgt = None
    if kind == "train" or target is not None:
        tgt = meta.class_id(target if target is not None else defaults.target)
    split = split or (ds.train_split if kind == "train" else ds.val_split)
    if scale is not None:
        check_sizes(ds, scale)
        scale = None if scale == 1 else float(scale)
    # paper defaults and the trigger's fit are judged at the size the poisoning sees (after --scale)
    shape = ds.read_label(ds.samples(split)[0]).shape
    shape = shape if scale is None else scaled_size(*shape, scale)
    height = shape[0]
    if trigger_size is None:
        px = 15 if defaults is None else max(1, math.floor(scaled(defaults.trigger, height, defaults.ref_height) + 0.5))
        trigger_size = (px, px)
    if trigger_size[0] > shape[0] or trigger_size[1] > shape[1]:
        raise TriggerError(
            f"trigger {trigger_size[0]}x{trigger_size[1]} is larger than the images ({shape[0]}x{shape[1]}); "
            f"choose a smaller --trigger-size"
        )
    strategy = strategy or preset.strategy
    if upper is None:
        upper = math.inf
        if preset.band and strategy == "nearest" and defaults is not None:
            upper = scaled(defaults.upper, height, defaults.ref_height)
    if allow_multiclass and allow_on_victim:
        raise ConfigError("--allow-multiclass and --allow-on-victim exclude each other; give one")
    constraint = "any" if allow_on_victim else "multiclass" if allow_multiclass else "single"
    q = preset.prl_pixels if prl_pixels is None else prl_pixels
    cfg = AttackConfig(
        attack=attack,
        kind=kind,
        split=split,
        victim=victims,
        target=tgt,
        trigger=TriggerSpec(str(trigger), tuple(trigger_size), float(alpha)),
        placement=PlacementSpec(strategy, float(lower), float(upper), metric, constraint, edge_margin, position),
        relabel=RelabelSpec("victim_to_target" if kind == "train" else "none", q if kind == "train" else 0),
        rate=rate,
        count=count,
        allow_fewer=allow_fewer,
        min_victim_pixels=min_victim_pixels,
        seed=seed,
        jpeg_quality=jpeg_quality,
        link=link,
        hash_files=hash_files,
        scale=scale,
        full_scan=full_scan,
    )
    cfg.check()
    return cfg


def with_trigger_hash(cfg: AttackConfig, sha: str) -> AttackConfig:
    return replace(cfg, trigger=replace(cfg.trigger, sha256=sha))
