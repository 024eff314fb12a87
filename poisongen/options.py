"""Every attack option, declared once and typed: :class:`AttackOptions`.

The attack subcommands and ``testset`` get their options from this declaration (:func:`typer_parameters`),
``--config FILE.yaml`` is read against it with the same conversion and checks (:func:`read_config_file`),
and the options a run was given are recorded in its manifest (:meth:`AttackOptions.record`, the
manifest's ``options``). :meth:`AttackOptions.resolve_kwargs` turns them into the keyword arguments of
:func:`poisongen.attacks.resolve`, which resolves class names, layout defaults and sizes into the
frozen :class:`~poisongen.config.AttackConfig` (the manifest's ``config``).

A field's metadata (:func:`option`) holds its help, its flags, which commands have it (``attack``:
every attack subcommand, ``testset``) and its choices; its annotation is its type (``bool``, ``int``,
``float`` or ``str``, ``| None`` where "not given" is a value of its own).
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from .attacks import PRESETS
from .config import INSTANCE_MODES, LINKS, NAMED_POSITIONS, PROTOCOLS, parse_size
from .datasets import LAYOUTS
from .errors import ConfigError, choices
from .placement import METRICS, STRATEGIES

ATTACK, TESTSET = "attack", "testset"
BOTH = (ATTACK, TESTSET)
LAYOUT_CHOICES = (*LAYOUTS, "synthetic")  # synthetic: read as Cityscapes


def option(default: Any, help: str, *, flag: str | None = None, scopes: tuple[str, ...] = BOTH,
           choices: tuple[str, ...] | None = None, testset_help: str | None = None):
    """A field of :class:`AttackOptions`: its default and its metadata (see :class:`OptionSpec`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "scopes": scopes, "choices": choices,
                                            "testset_help": testset_help})


@dataclass(frozen=True)
class AttackOptions:
    """The options of an attack run or a Poisoned Test as the user gave them (names, not train ids)."""

    rate: float | None = option(None, "Poisoning rate over the training split, in (0, 1].", scopes=(ATTACK,))
    count: int | None = option(None, "Poison exactly this many samples (instead of --rate).", scopes=(ATTACK,))
    victim: str | None = option(
        None, "Victim class(es), names or train ids, comma list. Default: Cityscapes car, VOC person, ADE20K car.",
        testset_help="Victim class(es); samples holding them get the trigger.")
    target: str | None = option(
        None, "Target class. Default: Cityscapes road, VOC background, ADE20K road.",
        testset_help="Target class, recorded for ASR (labels stay untouched). Default: the layout's paper default "
        "(Cityscapes and synthetic road, VOC background, ADE20K road).")
    trigger: str | None = option(
        None, "Trigger image (alpha honoured), 'builtin', or 'line' (top rows darkened; fgba's default, also "
        "badnets). Default: builtin.")
    trigger_size: str | None = option(
        None, "Trigger size H or HxW. Default: Cityscapes 55 px at 512x1024 scaled with the image height (28 px at "
        "256x512); VOC/ADE20K 15 px.")
    alpha: float = option(1.0, "Blend factor lambda in (0, 1].")
    strategy: str | None = option(
        None, "Placement. Default for {attack}: {strategy}.", choices=STRATEGIES,
        testset_help="Placement (fixed needs --position). Default: the attack's (random without --attack).")
    lower: float = option(0.0, "Distance band lower bound L (px; inclusive, exclusive with --metric chessboard).")
    upper: float | None = option(
        None, "Distance band upper bound U (px; exclusive, inclusive with --metric chessboard: the published "
        "code's (L, U]). nni default: Cityscapes 60 at 512x1024 scaled with height (30 at 256x512), VOC/ADE20K "
        "30; otherwise none.")
    metric: str = option("euclidean", "Distance metric: euclidean (paper Eq. 1, band [L, U)) or chessboard "
                         "(published code, band (L, U]).", choices=METRICS)
    allow_multiclass: bool = option(False, "Window may cover several non-victim classes (IBA appendix C).")
    allow_on_victim: bool = option(False, "No class constraint on the window (IBA appendix D).")
    edge_margin: int = option(0, "Keep the window this many px from the image border.")
    position: str | None = option(
        None, "For --strategy fixed: 'corner' (bottom-right), 'top' (top edge, centred) or the top-left 'y,x'. "
        "badnets default: corner.")
    prl_pixels: int | None = option(None, "PRL: Q pixels relabeled per poisoned sample. Default for {attack}: "
                                    "{prl_pixels}.", scopes=(ATTACK,))
    min_victim_pixels: int = option(1, "A candidate holds at least this many victim pixels.")
    allow_fewer: bool = option(False, "Poison all candidates if fewer than requested (recorded).", scopes=(ATTACK,))
    seed: int = option(0, "Seed of every random choice.")
    link: str = option("copy", "Unchanged files: copied, hard-linked or symlinked.", choices=LINKS)
    jpeg_quality: int = option(95, "JPEG quality for poisoned images whose source is JPEG (recorded).")
    no_hash: bool = option(False, "Do not hash unchanged files (faster; verify cannot check them).")
    layout: str | None = option(None, "Force the layout (default: detected).", choices=LAYOUT_CHOICES)
    scale: float | None = option(
        None, "Rescale the whole dataset by this factor first, in (0, 4] (images area/linear, labels nearest; e.g. "
        "0.5: Cityscapes at 512x1024, as in the IBA paper). Recorded; paper defaults are taken at the new size.")
    full_scan: bool = option(
        False, "Analyse every training sample for exact candidate counts (default: samples in draw order until n "
        "candidates are found; same output).", scopes=(ATTACK,))
    split: str | None = option(None, "Split to trigger (default: the layout's validation split).", scopes=(TESTSET,))
    attack: str | None = option(
        None, "The attack to test; default: baseline, or nni with --strategy nearest.", scopes=(TESTSET,),
        choices=tuple(PRESETS))
    matrix: str | None = option(
        None, "fgba: attack matrix SRC:DST, comma list; SRC 'all' = every class (N-to-1), e.g. person:car or "
        "all:road.")
    line_width: int | None = option(None, "Line trigger: rows blended toward black at the top (default 8).")
    semantic_trigger: str | None = option(
        None, "fgba/badnets: a class whose presence is the trigger; no pixel changes (excludes --trigger).")
    target_image: str | None = option(
        None, "badnets: id of the training sample whose label becomes every poisoned label.")
    instances: str | None = option(
        None, "instance: which victim instances to relabel, nearest (to the trigger) or random. Default: nearest.",
        choices=INSTANCE_MODES)
    k: int | None = option(None, "instance: how many instances per image (default 1).", flag="--k")
    condition: str | None = option(
        None, "conditional: class(es) an image must hold for the rule to apply, comma list.")
    force: bool = option(False, "o2o/o2b/b2o/b2b: run even if the classes' thing/stuff categories do not fit.")
    protocol: str = option(
        "paper", "Placement rules: paper, or iba-code (the published IBA code: NNI's trigger uniformly random "
        "within the chessboard band (0, U], centres kept 200 px from the border at 512x1024 / 100 px on VOC "
        "unless --edge-margin is given).", choices=PROTOCOLS)

    def record(self, scope: str) -> dict:
        """The manifest's ``options``: every option of ``scope`` as given (or defaulted), by name."""
        return {s.name: getattr(self, s.name) for s in specs(scope)}

    def resolve_kwargs(self, scope: str) -> dict:
        """Keyword arguments of :func:`poisongen.attacks.resolve` (``kind`` aside): sizes and positions
        parsed, ``--no-hash`` as ``hash_files``; ``layout`` and ``attack`` pick the dataset and preset."""
        kw = {s.name: getattr(self, s.name) for s in specs(scope) if s.name not in ("layout", "attack")}
        kw["hash_files"] = not kw.pop("no_hash")
        kw["trigger_size"] = parse_size(self.trigger_size, "--trigger-size") if self.trigger_size else None
        kw["position"] = parse_position(self.position)
        return kw


@dataclass(frozen=True)
class OptionSpec:
    """One field of :class:`AttackOptions` with its type read from the annotation."""

    name: str
    type: type  # bool, int, float or str
    nullable: bool  # None ("not given") is a value of its own
    default: Any
    help: str
    flag: str
    scopes: tuple[str, ...]
    choices: tuple[str, ...] | None
    testset_help: str | None

    @property
    def key(self) -> str:
        """The YAML key (the flag without its dashes; underscores are accepted too)."""
        return self.flag[2:]

    def allowed(self) -> str:
        """What values are allowed, in words, for error messages."""
        if self.choices:
            what = f"one of {choices(self.choices)}"
        else:
            what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[self.type]
        return what + (" (or empty: not given)" if self.nullable else "")


@cache
def all_specs() -> tuple[OptionSpec, ...]:
    hints = typing.get_type_hints(AttackOptions)
    out = []
    for f in fields(AttackOptions):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) == 1 and type(None) in typing.get_args(hint)
        out.append(OptionSpec(f.name, args[0] if nullable else hint, nullable, f.default, f.metadata["help"],
                              f.metadata["flag"] or "--" + f.name.replace("_", "-"), f.metadata["scopes"],
                              f.metadata["choices"], f.metadata["testset_help"]))
    assert all(f.default is not MISSING for f in fields(AttackOptions))
    return tuple(out)


def specs(scope: str) -> tuple[OptionSpec, ...]:
    """The options of ``scope`` (``attack`` or ``testset``), in declaration order."""
    if scope not in BOTH:
        raise ValueError(f"unknown scope {scope!r}")
    return tuple(s for s in all_specs() if scope in s.scopes)


# --- parsing values of the command line and of YAML --------------------------------------------------
TRUE = ("true", "yes", "on", "1", "y", "t")
FALSE = ("false", "no", "off", "0", "n", "f")


def parse_position(text: str | None) -> tuple[int, int] | str | None:
    """``corner`` / ``top`` (resolved per image) or ``y,x``, the window's top-left in pixels."""
    if text is None:
        return None
    if text.strip().lower() in NAMED_POSITIONS:
        return text.strip().lower()
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--position '{text}' is not corner, top or 'y,x' in whole pixels (top-left corner)"
        ) from None
    return (y, x)


def convert(spec: OptionSpec, value: Any, where: str) -> Any:
    """A YAML value of ``spec`` converted as the command line converts its text, or a ConfigError
    naming ``where`` (the file and key) and what is allowed. Lists and mappings are never a value."""

    def bad(got: str):
        return ConfigError(f"{where} is {got}; allowed: {spec.allowed()}")

    if value is None:
        if spec.nullable:
            return None
        raise bad("empty")
    if isinstance(value, (list, tuple, dict, set)):
        raise bad(f"a {'list' if isinstance(value, (list, tuple, set)) else 'mapping'}")
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise bad(repr(value))
    if isinstance(value, bool):  # YAML's yes/no/true/false are no number or text here
        raise bad(repr(value))
    if spec.type in (int, float):  # a YAML float is no whole number (seed: 1.7 is refused, not cut to 1)
        if isinstance(value, int) or (spec.type is float and isinstance(value, float)):
            return spec.type(value)
        if isinstance(value, str):
            try:
                return spec.type(value.strip())
            except ValueError:
                pass
        raise bad(repr(value))
    # text: a YAML number is its text (victim: 13, trigger-size: 55)
    if isinstance(value, (int, float)):
        value = f"{value:g}" if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise bad(repr(value))
    if spec.choices and value not in spec.choices:
        raise bad(repr(value))
    return value


def read_config_file(path: Path | None, scope: str) -> dict[str, Any]:
    """``--config FILE.yaml``: a mapping of option (dashes or underscores) to value, each converted and
    checked as on the command line. Returns field name -> value."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option: value, not a {type(data).__name__}")
    by_key = {s.name: s for s in specs(scope)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        spec = by_key.get(name)
        if spec is None:
            valid = choices(s.key for s in specs(scope))
            raise ConfigError(f"unknown option '{key}' in --config {path}; valid are {valid}")
        if name in out:
            raise ConfigError(f"option '{spec.key}' is given twice in --config {path}")
        out[name] = convert(spec, value, f"--config {path}: {spec.key}")
    return out


def merge(scope: str, cli_values: dict[str, Any], on_command_line: set[str],
          file_values: dict[str, Any]) -> AttackOptions:
    """The options of a run: flags given on the command line win over ``--config``, which wins over
    the defaults (``cli_values`` holds the parsed flags with their defaults)."""
    values = {}
    for s in specs(scope):
        if s.name in on_command_line or s.name not in file_values:
            values[s.name] = cli_values[s.name]
        else:
            values[s.name] = file_values[s.name]
    return AttackOptions(**values)


# --- the typer side ---------------------------------------------------------------------------------
def typer_parameters(scope: str, preset=None) -> list[inspect.Parameter]:
    """One keyword parameter per option of ``scope``, annotated for typer (help with the preset's
    defaults, choices as click choices); the default is the declared one."""
    import typer

    params = []
    for s in specs(scope):
        text = s.testset_help if scope == TESTSET and s.testset_help else s.help
        if preset is not None:
            text = text.format(attack=preset.name, strategy=preset.strategy, prl_pixels=preset.prl_pixels)
        annotation = Literal[s.choices] if s.choices else s.type  # a Literal: typer shows and checks the choices
        if s.nullable:
            annotation = annotation | None
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default,
                                        annotation=Annotated[annotation, typer.Option(s.flag, help=text)]))
    return params

