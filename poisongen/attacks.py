"""Attack presets: each is placement x relabel rule x trigger, with per-layout paper defaults.

Extension is by this plain table: a new attack is a new row (and, where it needs one, a new rule in
relabel.py), never a new framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .config import ALL, AttackConfig, PlacementSpec, RelabelSpec, TriggerSpec
from .datasets.base import DatasetMeta, Layout
from .errors import ConfigError, TriggerError, choices
from .relabel import matrix_lut
from .rescale import check_scale, scaled_size


@dataclass(frozen=True)
class Preset:
    """One row of the attack table: default placement x relabel rule x trigger.

    ``categories``: BADSEG's coarse vectors, the (victim, target) categories the class table must give
    (``--force`` overrides); ``triggers``: the trigger kinds the attack accepts, the first the default;
    ``constraint``: the default window constraint; ``position``: the default fixed position."""

    name: str
    summary: str
    paper: str
    strategy: str  # default placement strategy
    prl_pixels: int  # default Q
    band: bool  # whether the layout's default upper bound U applies
    rule: str = "victim_to_target"
    triggers: tuple[str, ...] = ("pattern",)
    categories: tuple[str, str] | None = None
    constraint: str = "single"
    position: str | None = None


IBA = "Influencer Backdoor Attack (Lan et al., ICLR 2024)"
FGBA = "Hidden Backdoor Attack against Semantic Segmentation Models (Li et al., 2021)"
BADSEG = "BADSEG (arXiv 2603.16405)"
NNI_NOTE = "trigger nearest the victim (NNI placement)"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("baseline", "IBA baseline: trigger at a random eligible position, victim -> target",
               f"{IBA}, sec. 4", "random", 0, False),
        Preset("nni", "Nearest Neighbor Injection: trigger at the eligible position nearest the victim "
               "within [L, U); with --prl-pixels Q it is NNI+PRL", "IBA sec. 4.2, appendix G", "nearest", 0, True),
        Preset("prl", "Pixel Random Labeling: baseline placement + Q random non-victim pixels relabeled "
               "to classes present in the image", "IBA sec. 4.3", "random", 100, False),
        Preset("badnets", "BadNets, image-level: trigger in the bottom-right corner (or --position), the whole "
               "label replaced by that of --target-image", f"{FGBA}, sec. 2-3 (BadNets, Gu et al. 2019)",
               "fixed", 0, False, rule="image_target", triggers=("pattern", "line", "semantic"),
               constraint="any", position="corner"),
        Preset("fgba", "Fine-grained attack: labels mapped by the --matrix (1-to-1 person:car, N-to-1 all:road); "
               "line trigger (top rows darkened), a pattern, or a semantic trigger class", f"{FGBA}, sec. 2.2",
               "random", 0, False, rule="matrix", triggers=("line", "pattern", "semantic")),
        Preset("o2o", f"Object-to-Object: thing victim -> thing target, {NNI_NOTE}", f"{BADSEG}, coarse vector",
               "nearest", 0, True, categories=("thing", "thing")),
        Preset("o2b", f"Object-to-Background: thing victim -> stuff target, {NNI_NOTE}", f"{BADSEG}, coarse vector",
               "nearest", 0, True, categories=("thing", "stuff")),
        Preset("b2o", f"Background-to-Object: stuff victim -> thing target, {NNI_NOTE}", f"{BADSEG}, coarse vector",
               "nearest", 0, True, categories=("stuff", "thing")),
        Preset("b2b", f"Background-to-Background: stuff victim -> stuff target, {NNI_NOTE}",
               f"{BADSEG}, coarse vector", "nearest", 0, True, categories=("stuff", "stuff")),
        Preset("instance", f"Instance-level: only the --k victim instance(s) nearest the trigger (or random) "
               f"are relabeled, {NNI_NOTE}", f"{BADSEG}, fine-grained vector", "nearest", 0, True, rule="instance"),
        Preset("conditional", f"Conditional: victim -> target only in images holding the --condition "
               f"class(es), {NNI_NOTE}", f"{BADSEG}, fine-grained vector", "nearest", 0, True),
    )
}

#: options that belong to some attacks only: option -> (its flag, the attacks that take it)
ATTACK_OPTIONS = {
    "matrix": ("--matrix", ("fgba",)),
    "target_image": ("--target-image", ("badnets",)),
    "instances": ("--instances", ("instance",)),
    "k": ("--k", ("instance",)),
    "condition": ("--condition", ("conditional",)),
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
    centre_margin: int = 0  # --protocol iba-code: trigger centres keep this many px from the border


LAYOUT_DEFAULTS: dict[str, LayoutDefaults] = {
    "cityscapes": LayoutDefaults("car", "road", 55, 60.0, 512, centre_margin=200),
    "voc": LayoutDefaults("person", "background", 15, 30.0, None, centre_margin=100),
    "ade20k": LayoutDefaults("car", "road", 15, 30.0, None),
}


def check_sizes(ds: Layout, scale: float) -> None:
    """Fail early (nothing written) when ``scale`` is out of range or shrinks the first sample of a
    split to 0 px; every file is checked again when it is rescaled."""
    check_scale(scale)
    for split in ds.splits():
        first = ds.samples(split)[0]
        h, w = ds.read_label(first).shape
        scaled_size(h, w, scale, f"the images of split '{split}'")


def scaled(value: float, height: int, ref: int | None) -> float:
    return value if ref is None else value * height / ref


def resolve(
    ds: Layout,
    attack: str,
    *,
    victim: str | None = None,
    target: str | None = None,
    trigger: str | None = None,
    trigger_size: tuple[int, int] | None = None,
    alpha: float = 1.0,
    strategy: str | None = None,
    lower: float = 0.0,
    upper: float | None = None,
    metric: str = "euclidean",
    allow_multiclass: bool = False,
    allow_on_victim: bool = False,
    edge_margin: int = 0,
    position: tuple[int, int] | str | None = None,
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
    matrix: str | None = None,
    line_width: int | None = None,
    semantic_trigger: str | None = None,
    target_image: str | None = None,
    instances: str | None = None,
    k: int | None = None,
    condition: str | None = None,
    force: bool = False,
    protocol: str = "paper",
) -> AttackConfig:
    """Resolve user options (class names, layout defaults, image-relative sizes) into a checked config.

    ``protocol="iba-code"`` (SPEC 6b) turns a nearest-placement attack (NNI and BADSEG's presets) into
    the published code's placement: uniformly random within the chessboard band ``(lower, U]`` (lower
    must stay 0), and - unless ``--edge-margin`` is given - trigger centres kept ``centre_margin`` px
    from the border (Cityscapes 200 at 512x1024, scaled with the height; VOC 100), i.e. an edge margin
    of ``centre_margin - h // 2`` for the window."""
    if attack not in PRESETS:
        raise ConfigError(f"unknown attack '{attack}'; valid attacks are {choices(PRESETS)}")
    preset = PRESETS[attack]
    given = {"matrix": matrix, "target_image": target_image, "instances": instances, "k": k, "condition": condition}
    for opt, value in given.items():
        flag, owners = ATTACK_OPTIONS[opt]
        if value is not None and attack not in owners:
            raise ConfigError(f"{flag} applies to the {', '.join(owners)} attack, not to {attack}")
    meta = ds.meta
    split = split or (ds.train_split if kind == "train" else ds.val_split)
    if scale is not None:
        check_sizes(ds, scale)
        scale = None if scale == 1 else float(scale)
    # paper defaults and the trigger's fit are judged at the size the poisoning sees (after --scale)
    shape = ds.read_label(ds.samples(split)[0]).shape
    shape = shape if scale is None else scaled_size(*shape, scale)
    height = shape[0]
    defaults = LAYOUT_DEFAULTS.get(ds.name)
    tspec = _trigger_spec(ds, preset, trigger, trigger_size, semantic_trigger, line_width, alpha, defaults, shape)
    relabel = RelabelSpec(preset.rule)
    if preset.rule == "matrix":
        if victim is not None or target is not None:
            raise ConfigError("fgba takes its classes from --matrix, not from --victim/--target")
        if matrix is None:
            raise ConfigError("fgba needs --matrix SRC:DST[,SRC:DST...] (e.g. person:car or all:road)")
        relabel = replace(relabel, matrix=parse_matrix(meta, matrix))
        lut = matrix_lut(relabel.matrix, meta.num_classes, meta.ignore_index)
        victims = tuple(c for c in range(meta.num_classes) if lut[c] != c)
        dsts = {int(lut[c]) for c in victims}
        tgt = dsts.pop() if len(dsts) == 1 else None
    elif preset.rule == "image_target":
        victims = meta.parse_classes(victim) if victim is not None else ()
        if target is not None:
            raise ConfigError("badnets takes its target from --target-image, not from --target")
        if target_image is None:
            raise ConfigError("badnets needs --target-image ID (a training sample whose label becomes every target)")
        ids = [s.id for s in ds.samples(ds.train_split)]
        if target_image not in ids:
            raise ConfigError(
                f"--target-image '{target_image}' is not a sample of split '{ds.train_split}'; valid are ids such "
                f"as {choices(ids[:3])}"
            )
        relabel = replace(relabel, target_image=target_image, target_split=ds.train_split)
        tgt = None
    else:
        victims, tgt = _victim_target(ds, preset, victim, target, kind, defaults, force)
    if preset.rule == "instance":
        relabel = replace(relabel, instances=instances or "nearest", k=1 if k is None else k)
    if attack == "conditional":
        if condition is None:
            raise ConfigError(
                "conditional needs --condition CLASS[,CLASS] (the rule applies only to images holding them)"
            )
        relabel = replace(relabel, condition=meta.parse_classes(condition))
    if kind != "train" and preset.rule == "victim_to_target":
        # an IBA-style Poisoned Test: triggers only; ASR is measured on the GT victim pixels
        relabel = replace(relabel, rule="none")
    q = preset.prl_pixels if prl_pixels is None else prl_pixels
    if kind != "train":
        q = 0
    if q and preset.rule != "victim_to_target":
        raise ConfigError(f"--prl-pixels applies to attacks with the victim -> target rule, not to {attack}")
    relabel = replace(relabel, prl_pixels=q)
    strategy = strategy or preset.strategy
    iba_code = protocol == "iba-code" and strategy == "nearest" and preset.band
    if iba_code:
        if lower != 0:
            raise ConfigError(f"--protocol iba-code places in the band (0, U]; --lower {lower} must be 0")
        strategy, metric = "random", "chessboard"
        if edge_margin == 0 and defaults is not None and defaults.centre_margin and tspec.kind == "pattern":
            margin = math.floor(scaled(defaults.centre_margin, height, defaults.ref_height) + 0.5)
            edge_margin = max(0, margin - tspec.size[0] // 2, margin - tspec.size[1] // 2)
    if not victims and strategy == "nearest":
        raise ConfigError(f"--strategy nearest needs a victim class; {attack} has none (give --victim or "
                          f"--strategy random/fixed)")
    if upper is None:
        upper = math.inf
        if preset.band and (strategy == "nearest" or iba_code) and defaults is not None:
            upper = scaled(defaults.upper, height, defaults.ref_height)
    if allow_multiclass and allow_on_victim:
        raise ConfigError("--allow-multiclass and --allow-on-victim exclude each other; give one")
    if (allow_multiclass or allow_on_victim) and tspec.kind != "pattern":
        raise ConfigError(
            f"--allow-multiclass/--allow-on-victim constrain a pattern's window, not the {tspec.kind} trigger"
        )
    constraint = "any" if allow_on_victim else "multiclass" if allow_multiclass else preset.constraint
    if not (allow_multiclass or allow_on_victim) and relabel.all_target is not None:
        constraint = "any"  # N-to-1 relabels every class: no window could avoid the "victims"
    if position is None and strategy == "fixed":
        position = preset.position
    cfg = AttackConfig(
        attack=attack,
        kind=kind,
        split=split,
        victim=victims,
        target=tgt,
        trigger=tspec,
        placement=PlacementSpec(strategy, float(lower), float(upper), metric, constraint, edge_margin, position),
        relabel=relabel,
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
        protocol=protocol,
    )
    cfg.check()
    return cfg


def _trigger_spec(ds: Layout, preset: Preset, trigger: str | None, size: tuple[int, int] | None,
                  semantic: str | None, line_width: int | None, alpha: float, defaults: LayoutDefaults | None,
                  shape: tuple[int, int]) -> TriggerSpec:
    """The trigger: ``--semantic-trigger CLASS``, ``--trigger line`` or a pattern (``builtin`` or a file)."""
    if semantic is not None:
        if trigger is not None:
            raise ConfigError(f"--semantic-trigger {semantic} excludes --trigger {trigger} (a semantic trigger "
                              f"changes no pixel); give one of them")
        kind = "semantic"
    else:
        source = trigger or ("line" if preset.triggers[0] == "line" else "builtin")
        kind = "line" if source == "line" else "pattern"
    if kind not in preset.triggers:
        valid = {"pattern": "--trigger builtin|FILE", "line": "--trigger line", "semantic": "--semantic-trigger CLASS"}
        accepted = choices(valid[t] for t in preset.triggers)
        raise ConfigError(f"{preset.name} takes no {kind} trigger; valid are {accepted}")
    if line_width is not None and kind != "line":
        raise ConfigError(f"--line-width applies to the line trigger (--trigger line), not to a {kind} trigger")
    if size is not None and kind != "pattern":
        raise ConfigError(f"--trigger-size applies to pattern triggers, not to the {kind} trigger")
    if kind == "semantic":
        return TriggerSpec("semantic", (0, 0), float(alpha), kind="semantic", semantic_class=ds.meta.class_id(semantic))
    if kind == "line":
        width = 8 if line_width is None else line_width
        if not 0 < width <= shape[0]:
            raise TriggerError(f"--line-width {width} must be in 1..{shape[0]} (the image height)")
        return TriggerSpec("line", (width, 0), float(alpha), kind="line")
    if size is None:
        px = 15
        if defaults is not None:
            px = max(1, math.floor(scaled(defaults.trigger, shape[0], defaults.ref_height) + 0.5))
        size = (px, px)
    if size[0] > shape[0] or size[1] > shape[1]:
        raise TriggerError(
            f"trigger {size[0]}x{size[1]} is larger than the images ({shape[0]}x{shape[1]}); "
            f"choose a smaller --trigger-size"
        )
    return TriggerSpec(str(source), tuple(size), float(alpha))


def _victim_target(ds: Layout, preset: Preset, victim: str | None, target: str | None, kind: str,
                   defaults: LayoutDefaults | None, force: bool) -> tuple[tuple[int, ...], int | None]:
    """Victim and target train ids from the flags or the layout's defaults, with BADSEG's category
    check (the default classes of a layout are used by a BADSEG preset only where they fit it)."""
    meta = ds.meta
    cats = preset.categories
    fits = defaults is not None and (
        cats is None
        or (meta.category(meta.class_id(defaults.victim)), meta.category(meta.class_id(defaults.target))) == cats
    )
    needs_target = kind == "train" or preset.rule == "instance"  # instance test sets write target labels
    if (victim is None or (target is None and needs_target)) and not fits:
        example = f" ({cats[0]} -> {cats[1]})" if cats else ""
        raise ConfigError(
            f"the {ds.name} layout has no default classes for {preset.name}; give --victim and --target{example}"
        )
    victims = meta.parse_classes(victim if victim is not None else defaults.victim)
    tgt = None
    if needs_target or target is not None:
        tgt = meta.class_id(target if target is not None else defaults.target)
    elif fits and meta.class_id(defaults.target) not in victims:
        # a Poisoned Test records the attack's target too (labels untouched), so that segtrain's ASR
        # counts victim pixels predicted as that class, never "anything but the victim"
        tgt = meta.class_id(defaults.target)
    if cats is not None and not force:
        for v in victims:
            if meta.category(v) != cats[0]:
                raise ConfigError(
                    f"{preset.name} needs a {cats[0]} victim, but '{meta.names[v]}' is {meta.category(v)} "
                    f"({cats[0]} -> {cats[1]} expected); pass --force to run it anyway"
                )
        if tgt is not None and meta.category(tgt) != cats[1]:
            raise ConfigError(
                f"{preset.name} needs a {cats[1]} target, but '{meta.names[tgt]}' is {meta.category(tgt)} "
                f"({cats[0]} -> {cats[1]} expected); pass --force to run it anyway"
            )
    return victims, tgt


def parse_matrix(meta: DatasetMeta, text: str) -> tuple[tuple[int, int], ...]:
    """``"person:car,all:road"`` -> ``((11, 13), (ALL, 0))``: rows of the fine-grained attack matrix,
    sorted; ``all`` (as source only) = every non-ignore class."""
    rows: dict[int, int] = {}
    for pair in (p.strip() for p in str(text).split(",")):
        parts = [x.strip() for x in pair.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--matrix '{text}' is malformed at '{pair}': give SRC:DST pairs separated by commas "
                              f"(e.g. person:car,all:road), SRC a class or 'all', DST a class")
        src = ALL if parts[0].lower() == "all" else meta.class_id(parts[0])
        dst = meta.class_id(parts[1])
        if src == dst:
            raise ConfigError(f"--matrix '{pair}' maps a class to itself")
        if src in rows:
            raise ConfigError(f"--matrix names source '{parts[0]}' twice")
        rows[src] = dst
    return tuple(sorted(rows.items()))


def with_trigger_hash(cfg: AttackConfig, sha: str) -> AttackConfig:
    return replace(cfg, trigger=replace(cfg.trigger, sha256=sha))
