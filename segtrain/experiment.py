"""The experiment grid (``segtrain experiment CONFIG --out DIR``): a YAML of datasets, attacks, rates, models,
seeds and Poisoned Test bands becomes a list of *cells*, each identified by the hash of its fully resolved
options, run through poisongen and segtrain as libraries.

Work is shared and done once: the source data (generated synthetic scenes, or a ``--scale``d copy), one
Poisoned Test per band (reused by every model and method, so trigger positions are identical across
methods), one poisoned copy per attack/rate/seed, one clean model per model/seed (rate 0). A training cell
writes a run folder (``runs/<key>``: config.json, log.jsonl, last.pt) and, once evaluated, a small result
JSON (``results/cells/<key>.json``) that is enough to skip the cell on a rerun, even in a fresh clone where
the data and checkpoints are gone. An interrupted cell resumes exactly from its last checkpoint; a folder
whose recorded options differ from the cell's is refused. ``results/results.csv`` and ``results.json`` (a
row per cell x test set) are rebuilt from the cell JSONs of the grid.

Layout of ``--out`` (``results/`` can live elsewhere, e.g. in git, with ``--results``)::

    experiment.json            the validated, resolved grid
    data/source/               generated synthetic scenes (or data/scaled/ for dataset.scale)
    data/tests/<band>-<h8>/    Poisoned Tests
    data/poisoned/<attack>-r<rate>-s<seed>-<h8>/
    runs/<model>-<attack>-r<rate>-s<seed>-<h8>/
    results/cells/<same key>.json, results/overlays/<key>.png, results/results.{csv,json}
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from poisongen import __version__ as CODE_VERSION
from poisongen import options as opts
from poisongen.attacks import PRESETS
from poisongen.errors import ConfigError, choices

from .config import OPTIMIZERS, TrainConfig
from .errors import SegTrainError
from .output import write_json

#: bump when a change of the code changes what a finished cell means (its hash changes with it)
GRID_EPOCH = 1
SCHEMA = 1
CLEAN = "clean"  # the attack name of rate-0 cells
TOP_KEYS = ("name", "description", "dataset", "options", "attacks", "rates", "seeds", "extra_seeds", "models",
            "train", "testsets", "protocol", "overlays", "estimate_minutes_per_training")
REQUIRED = ("dataset", "attacks", "rates", "models", "train", "testsets")
DATASET_KEYS = ("src", "synthetic", "scale", "layout")
SYNTH_KEYS = {"train": int, "val": int, "size": str, "seed": int}
MODEL_KEYS = {"arch": str, "backbone": str, "output_stride": int, "aux": bool, "backbone_weights": str}
TRAIN_KEYS = {"iters": int, "epochs": int, "batch": int, "crop": str, "scale": str, "lr": float,
              "weight_decay": float, "optimizer": str, "momentum": float, "aux_weight": float, "device": str,
              "amp": bool, "channels_last": bool, "workers": int, "log_every": int, "ckpt_every": int}
# what never changes the weights, so never part of a cell's identity
NOT_HASHED = ("data", "out", "resume", "quiet", "stop_after", "eval_every", "log_every", "ckpt_every", "workers",
              "dataset", "eval_poisoned")
GRID_SET = ("rate", "count", "seed")  # attack options the grid sets itself


# --- the YAML --------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return str(name).replace("-", "_")


def _typed(value: Any, kind: type, where: str) -> Any:
    """A YAML scalar of ``kind`` (int, float, bool, str), or one line naming ``where``."""
    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[kind]
    ok = (isinstance(value, bool) if kind is bool else
          (isinstance(value, int) and not isinstance(value, bool)) if kind is int else
          (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else
          isinstance(value, (str, int, float)) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where} is {value!r}; it must be {what}")
    return float(value) if kind is float else str(value) if kind is str else value


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _known(d: dict, valid, where: str) -> dict:
    """``d`` with dashes as underscores in its keys; an unknown key is one line naming it and the valid ones."""
    out = {}
    valid = tuple(valid)
    for k, v in d.items():
        if _key(k) not in valid:
            raise ConfigError(f"unknown key '{where}.{k}'; valid are {choices(valid)}")
        out[_key(k)] = v
    return out


def _options(d: dict, scope: str, where: str, forbidden=()) -> dict:
    """poisongen options (YAML keys as in ``--config``), converted and checked by poisongen's own rules."""
    by_name = {s.name: s for s in opts.specs(scope)}
    out = {}
    for k, v in _mapping(d, where).items():
        name = _key(k)
        if name in forbidden:
            raise ConfigError(f"{where}.{k} is set by the grid (rates, seeds); remove it")
        if name not in by_name:
            valid = choices(s.key for s in opts.specs(scope) if s.name not in forbidden)
            raise ConfigError(f"unknown key '{where}.{k}'; valid are {valid}")
        out[name] = opts.convert(by_name[name], v, f"{where}.{k}")
    return out


def _rate_text(rate: float) -> str:
    return f"{rate:g}"


@dataclass(frozen=True)
class Grid:
    """A validated grid (names, not yet resolved against the data)."""

    name: str
    description: str
    dataset: dict
    attacks: dict[str, dict]  # name -> poisongen attack options (incl. 'preset')
    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    extra_seeds: tuple[tuple[str, float, tuple[int, ...]], ...]
    models: dict[str, dict]
    train: dict
    testsets: dict[str, dict]  # band name -> poisongen testset options
    protocol: str = "paper"
    overlays: int = 3
    estimate_minutes: float | None = None
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "dataset": self.dataset, "attacks": self.attacks,
                "rates": list(self.rates), "seeds": list(self.seeds),
                "extra_seeds": [{"attack": a, "rate": r, "seeds": list(s)} for a, r, s in self.extra_seeds],
                "models": self.models, "train": self.train, "testsets": self.testsets, "protocol": self.protocol,
                "overlays": self.overlays, "estimate_minutes_per_training": self.estimate_minutes}


def shipped_configs() -> dict[str, Path]:
    """The configs that run by name (package data ``segtrain/configs/*.yaml``)."""
    folder = resources.files("segtrain") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_grid(config: str | Path) -> Grid:
    """Read and validate a grid YAML (a path, or the name of a shipped config). Every problem is one
    :class:`~poisongen.errors.ConfigError` line naming the key and what is allowed."""
    import yaml

    path = Path(config)
    if not path.is_file():
        shipped = shipped_configs()
        if str(config) not in shipped:
            raise ConfigError(f"experiment config '{config}' is no file and no shipped config; shipped are "
                              f"{choices(shipped)}")
        path = shipped[str(config)]
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_grid(data, where=path.name, source=str(path))


def parse_grid(data: Any, where: str = "config", source: str = "") -> Grid:
    """Validate a grid given as a mapping (what :func:`load_grid` reads); nothing touches the disk."""
    d = _known(_mapping(data, where), TOP_KEYS, where)
    for k in REQUIRED:
        if k not in d:
            raise ConfigError(f"{where} has no '{k}' key; a grid needs {choices(REQUIRED)}")
    # dataset
    ds = _known(_mapping(d["dataset"], "dataset"), DATASET_KEYS, "dataset")
    if ("src" in ds) == ("synthetic" in ds):
        raise ConfigError("dataset needs exactly one of 'src' (a folder or known name) or 'synthetic' (generated)")
    dataset: dict = {"scale": None, "layout": None}
    if "synthetic" in ds:
        syn = _known(_mapping(ds["synthetic"], "dataset.synthetic"), SYNTH_KEYS, "dataset.synthetic")
        syn = {k: _typed(v, SYNTH_KEYS[k], f"dataset.synthetic.{k}") for k, v in syn.items()}
        syn = {"train": 400, "val": 100, "size": "256x512", "seed": 0, **syn}
        from poisongen.config import parse_size

        h, w = parse_size(syn["size"], "dataset.synthetic.size")
        dataset["synthetic"] = {**syn, "size": f"{h}x{w}"}
    else:
        dataset["src"] = _typed(ds["src"], str, "dataset.src")
    if ds.get("scale") is not None:
        s = _typed(ds["scale"], float, "dataset.scale")
        if not 0 < s <= 4:
            raise ConfigError(f"dataset.scale {s:g} is outside (0, 4]")
        dataset["scale"] = s
    if ds.get("layout") is not None:
        dataset["layout"] = opts.convert({s.name: s for s in opts.all_specs()}["layout"], ds["layout"],
                                         "dataset.layout")
    # common options, attacks, test sets
    common = _mapping(d.get("options") or {}, "options")
    names_both = {s.name for s in opts.specs(opts.ATTACK)} | {s.name for s in opts.specs(opts.TESTSET)}
    for k in common:
        if _key(k) in GRID_SET:
            raise ConfigError(f"options.{k} is set by the grid (rates, seeds); remove it")
        if _key(k) not in names_both:
            valid = choices(sorted(s.key for s in opts.all_specs()))
            raise ConfigError(f"unknown key 'options.{k}'; valid are {valid}")
    attack_common = {k: v for k, v in common.items() if _key(k) in {s.name for s in opts.specs(opts.ATTACK)}}
    test_common = {k: v for k, v in common.items() if _key(k) in {s.name for s in opts.specs(opts.TESTSET)}}
    attacks: dict[str, dict] = {}
    for name, body in _mapping(d["attacks"], "attacks").items():
        body = dict(_mapping(body or {}, f"attacks.{name}"))
        preset = body.pop("preset", name)
        if preset not in PRESETS:
            raise ConfigError(f"attacks.{name}: unknown attack '{preset}'; valid are {choices(PRESETS)} (set "
                              f"'preset:' for a named variant such as nni+prl)")
        if str(name) == CLEAN:
            raise ConfigError(f"attacks.{name}: '{CLEAN}' is the name of rate 0 (the clean model); pick another")
        merged = {**_options(attack_common, opts.ATTACK, "options"), **_options(body, opts.ATTACK, f"attacks.{name}",
                                                                                 GRID_SET)}
        attacks[str(name)] = {"preset": preset, **merged}
    if not attacks:
        raise ConfigError("attacks is empty; list at least one attack")
    rates = d["rates"]
    if not isinstance(rates, list) or not rates:
        raise ConfigError("rates must be a non-empty list of poisoning rates in [0, 1] (0 = the clean model)")
    rates = tuple(_typed(r, float, f"rates[{i}]") for i, r in enumerate(rates))
    for i, r in enumerate(rates):
        if not 0 <= r <= 1:
            raise ConfigError(f"rates[{i}] is {r:g}; a poisoning rate is in [0, 1] (0 = the clean model)")
    seeds = d.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError("seeds must be a non-empty list of whole numbers")
    seeds = tuple(_typed(s, int, f"seeds[{i}]") for i, s in enumerate(seeds))
    extra = []
    for i, e in enumerate(d.get("extra_seeds") or []):
        e = _known(_mapping(e, f"extra_seeds[{i}]"), ("attack", "rate", "seeds"), f"extra_seeds[{i}]")
        a = _typed(e.get("attack", CLEAN), str, f"extra_seeds[{i}].attack")
        if a not in attacks and a != CLEAN:
            raise ConfigError(f"extra_seeds[{i}].attack '{a}' is not in attacks; valid are "
                              f"{choices([*attacks, CLEAN])}")
        r = _typed(e.get("rate", 0), float, f"extra_seeds[{i}].rate")
        if r not in rates:
            raise ConfigError(f"extra_seeds[{i}].rate {r:g} is not one of the grid's rates {list(rates)}")
        s = e.get("seeds")
        if not isinstance(s, list) or not s:
            raise ConfigError(f"extra_seeds[{i}].seeds must be a non-empty list of whole numbers")
        extra.append((a, r, tuple(_typed(x, int, f"extra_seeds[{i}].seeds[{j}]") for j, x in enumerate(s))))
    models = {}
    for name, body in _mapping(d["models"], "models").items():
        m = _known(_mapping(body or {}, f"models.{name}"), MODEL_KEYS, f"models.{name}")
        models[str(name)] = {k: _typed(v, MODEL_KEYS[k], f"models.{name}.{k}") for k, v in m.items()}
    if not models:
        raise ConfigError("models is empty; list at least one model")
    train = _known(_mapping(d["train"], "train"), TRAIN_KEYS, "train")
    train = {k: _typed(v, TRAIN_KEYS[k], f"train.{k}") for k, v in train.items()}
    if train.get("optimizer") is not None and train["optimizer"].lower() not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer '{train['optimizer']}' is unknown; valid are {choices(OPTIMIZERS)}")
    testsets = {}
    for name, body in _mapping(d["testsets"], "testsets").items():
        testsets[str(name)] = {**_options(test_common, opts.TESTSET, "options"),
                               **_options(body or {}, opts.TESTSET, f"testsets.{name}", ("rate", "count"))}
    if not testsets:
        raise ConfigError("testsets is empty; list at least one Poisoned Test band")
    protocol = d.get("protocol", "paper")
    from .evaluate import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol is {protocol!r}; valid are {choices(PROTOCOLS)}")
    overlays = _typed(d.get("overlays", 3), int, "overlays")
    est = d.get("estimate_minutes_per_training")
    grid = Grid(name=str(d.get("name") or Path(source).stem or "experiment"),
                description=str(d.get("description") or ""),
                dataset=dataset, attacks=attacks, rates=rates, seeds=seeds, extra_seeds=tuple(extra), models=models,
                train=train, testsets=testsets, protocol=protocol, overlays=overlays,
                estimate_minutes=None if est is None else _typed(est, float, "estimate_minutes_per_training"),
                source=source)
    for m in models:  # every training option checked now (TrainConfig's own rules), before anything runs
        train_config(grid, m, seed=0, data="-", out="-")
    return grid


def train_config(grid: Grid, model: str, seed: int, data: str, out: str, **extra) -> TrainConfig:
    """The TrainConfig of one training cell (the grid's ``train`` and ``models.<model>``)."""
    from poisongen.config import parse_size

    t = dict(grid.train)
    if "crop" in t:
        t["crop"] = parse_size(t["crop"], "train.crop")
    if "scale" in t:
        from .cli import parse_scale

        t["scale"] = parse_scale(t["scale"])
    if t.get("iters") is None and t.get("epochs") is None:
        raise ConfigError("train needs 'iters' or 'epochs'")
    try:
        return TrainConfig(data=data, out=out, seed=seed, **grid.models[model], **t, quiet=True, **extra)
    except SegTrainError as exc:
        raise ConfigError(f"train / models.{model}: {exc}") from None


# --- hashing ---------------------------------------------------------------------------------------
def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (the identity of a cell)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def code_identity() -> dict:
    """What of the code is part of every cell's identity: the package version and the grid epoch (bumped
    when a change of the code changes results), the synthetic generator's version."""
    from poisongen.datasets.synthetic import VERSION

    return {"segbackdoor": CODE_VERSION, "grid_epoch": GRID_EPOCH, "synthetic": VERSION}


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> dict:
    """Recorded with every result (never hashed, so that a fix elsewhere does not rerun the grid): the git
    commit, if any, and the sha256 of the two packages' Python sources. Taken once per process, when the grid
    starts (:func:`run_grid`), so a commit made while a grid runs is not credited with the cells that the
    already-loaded code trains."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("poisongen", "segtrain"):
        for p in sorted((root / pkg).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"git_commit": commit, "sources_sha256": h.hexdigest()}


# --- cells -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestCell:
    band: str
    key: str
    hash: str
    identity: dict
    options: dict


@dataclass(frozen=True)
class PoisonCell:
    attack: str
    rate: float
    seed: int
    key: str
    hash: str
    identity: dict
    options: dict


@dataclass(frozen=True)
class TrainCell:
    model: str
    attack: str  # CLEAN for rate 0
    rate: float
    seed: int
    key: str
    hash: str
    identity: dict
    poison: PoisonCell | None


@dataclass
class Plan:
    """A grid resolved against its data: every cell with its hash, and where everything lives."""

    grid: Grid
    out: Path
    results: Path
    source: Path  # the clean data every cell reads (generated / rescaled / given)
    data_identity: dict
    victim_target: tuple[tuple[int, ...], int | None]
    tests: list[TestCell]
    poisons: list[PoisonCell]
    cells: list[TrainCell]
    done: dict[str, dict] = field(default_factory=dict)  # cell hash -> its result JSON

    def cell_json(self, cell: TrainCell) -> Path:
        return self.results / "cells" / f"{cell.key}.json"

    def run_dir(self, cell: TrainCell) -> Path:
        return self.out / "runs" / cell.key

    def test_dir(self, t: TestCell) -> Path:
        return self.out / "data" / "tests" / t.key

    def poison_dir(self, p: PoisonCell) -> Path:
        return self.out / "data" / "poisoned" / p.key


def data_identity(grid: Grid) -> dict:
    ds = grid.dataset
    if "synthetic" in ds:
        return {"synthetic": ds["synthetic"], "scale": ds["scale"]}
    return {"src": str(Path(ds["src"]).resolve()) if Path(ds["src"]).exists() else ds["src"], "scale": ds["scale"],
            "layout": ds["layout"]}


def source_root(grid: Grid, out: Path, create: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The clean data of the grid, generated / rescaled into ``out/data`` on first use (``create``);
    ``log`` is told what is being made."""
    log = log or (lambda text: None)
    from poisongen.datasets import open_dataset

    ds = grid.dataset
    if "synthetic" in ds:
        from poisongen.datasets.synthetic import VERSION, generate
        from poisongen.parallel import default_jobs

        root = out / "data" / "source"
        syn = ds["synthetic"]
        want = {"train": syn["train"], "val": syn["val"], "size": [int(v) for v in syn["size"].split("x")],
                "seed": syn["seed"], "version": VERSION}
        meta = root / "synthetic.json"
        have = json.loads(meta.read_text()) if meta.is_file() else {}
        if {k: have.get(k) for k in want} != want:
            if not create:
                return root
            log(f"generating {syn['train']} + {syn['val']} synthetic scenes at {syn['size']} into {root} (once)")
            generate(root, train=syn["train"], val=syn["val"], size=tuple(want["size"]), seed=syn["seed"],
                     jobs=default_jobs(), overwrite=True)
    else:
        root = open_dataset(ds["src"], ds["layout"]).root
    if ds["scale"] is None:
        return root
    from poisongen.pipeline import write_scaled

    scaled = out / "data" / f"scaled-{ds['scale']:g}"
    if not (scaled / "manifest.json").is_file() and create:
        log(f"rescaling {root} by {ds['scale']:g} into {scaled} (once)")
        write_scaled(open_dataset(root, ds["layout"]), scaled, ds["scale"], overwrite=True)
    return scaled


def _resolved(layout, preset: str, kind: str, options: dict, scope: str, **grid_set) -> dict:
    from poisongen.attacks import resolve

    o = opts.AttackOptions(**{**options, **grid_set})
    return resolve(layout, preset, kind=kind, **o.resolve_kwargs(scope)).to_dict()


def plan_grid(grid: Grid, out: Path, results: Path | None = None, create: bool = True,
              log: Callable[[str], None] | None = None) -> Plan:
    """Resolve every cell against the data (generating the source data on first use unless not ``create``)
    and read which cells are done. Raises a ConfigError (one line) for options the data refuses."""
    from poisongen.datasets import open_dataset

    out = Path(out)
    results = Path(results) if results else out / "results"
    ident = data_identity(grid)
    src = source_root(grid, out, create, log)
    with _resolvable(grid, src) as probe:
        return _plan(grid, out, results, ident, src, open_dataset(probe, grid.dataset["layout"]))


@contextmanager
def _resolvable(grid: Grid, src: Path):
    """The data to resolve the cells against: the source; for a dry run before synthetic scenes exist, a
    throw-away set of 3 scenes of the same size and seed (resolution reads the class table and the image
    size only), so that a dry run writes nothing."""
    if src.is_dir():
        yield src
        return
    if "synthetic" not in grid.dataset or grid.dataset["scale"] is not None:
        raise ConfigError(f"the grid's data {src} does not exist yet; run without --dry-run once to create it")
    import tempfile

    from poisongen.datasets.synthetic import generate

    syn = grid.dataset["synthetic"]
    with tempfile.TemporaryDirectory(prefix="segtrain-dry-run-") as tmp:
        generate(Path(tmp) / "probe", train=2, val=1, size=tuple(int(v) for v in syn["size"].split("x")),
                 seed=syn["seed"])
        yield Path(tmp) / "probe"


def _plan(grid: Grid, out: Path, results: Path, ident: dict, src: Path, layout) -> Plan:
    code = code_identity()
    tests = []
    for band, o in grid.testsets.items():
        name = o.get("attack") or ("nni" if o.get("strategy") == "nearest" else "baseline")
        conf = _resolved(layout, name, "testset", {k: v for k, v in o.items()}, opts.TESTSET)
        identity = {"kind": "testset", "data": ident, "config": conf, "code": code}
        h = digest(identity)
        tests.append(TestCell(band, f"{band}-{h[:8]}", h, identity, o))
    victim = tuple(tests[0].identity["config"]["victim"])
    target = tests[0].identity["config"]["target"]
    poisons: dict[tuple, PoisonCell] = {}
    cells = []
    combos = [(a, r, s) for r in grid.rates for a in (grid.attacks if r > 0 else [CLEAN]) for s in grid.seeds]
    for a, r, seeds in grid.extra_seeds:
        for s in seeds:
            if r == 0:
                a = CLEAN
            if (a, r, s) not in combos:
                combos.append((a, r, s))
    for a, r, s in combos:
        pc = None
        if r > 0:
            if (a, r, s) not in poisons:
                o = grid.attacks[a]
                conf = _resolved(layout, o["preset"], "train", {k: v for k, v in o.items() if k != "preset"},
                                 opts.ATTACK, rate=r, seed=s)
                identity = {"kind": "poisoned", "data": ident, "attack": a, "config": conf, "code": code}
                h = digest(identity)
                poisons[(a, r, s)] = PoisonCell(a, r, s, f"{a}-r{_rate_text(r)}-s{s}-{h[:8]}", h, identity, o)
            pc = poisons[(a, r, s)]
        for m in grid.models:
            cfg = train_config(grid, m, seed=s, data="-", out="-")
            tc = {k: v for k, v in cfg.to_dict().items() if k not in NOT_HASHED}
            identity = {"kind": "train", "model": m, "train": tc, "data": pc.hash if pc else ident,
                        "victim_target": [list(victim), target], "tests": [t.hash for t in tests],
                        "protocol": grid.protocol, "code": code}
            h = digest(identity)
            key = f"{m}-{a}-r{_rate_text(r)}-s{s}-{h[:8]}".replace("+", "_")
            cells.append(TrainCell(m, a, r, s, key, h, identity, pc))
    plan = Plan(grid, out, results, src, ident, (victim, target), tests, list(poisons.values()), cells)
    for c in cells:
        p = plan.cell_json(c)
        if p.is_file():
            rec = json.loads(p.read_text())
            if rec.get("hash") != c.hash:
                raise ConfigError(f"{p} was written for other options (hash {str(rec.get('hash'))[:12]}..., this "
                                  f"cell's {c.hash[:12]}...); remove it or write the results elsewhere")
            plan.done[c.hash] = rec
    return plan


# --- running ---------------------------------------------------------------------------------------
Progress = Callable[[str, dict], None]  # (event, info): "cell-start", "cell-done", "cell-skip", "step", "stage"


def _check_folder(folder: Path, identity_hash: str, what: str) -> None:
    """A folder of a cell records the hash it was made for in ``cell.json``; another hash is refused."""
    rec = folder / "cell.json"
    if rec.is_file():
        was = json.loads(rec.read_text()).get("hash")
        if was != identity_hash:
            raise ConfigError(f"{what} {folder} was made with other options (hash {str(was)[:12]}..., this cell's "
                              f"{identity_hash[:12]}...); remove it or use another --out")


def ensure_testset(plan: Plan, t: TestCell) -> Path:
    from poisongen import pipeline
    from poisongen.datasets import open_dataset
    from poisongen.record import attack_config

    d = plan.test_dir(t)
    _check_folder(d, t.hash, "test set")
    if (d / "manifest.json").is_file() and (d / "cell.json").is_file():
        return d
    layout = open_dataset(plan.source, plan.grid.dataset["layout"])
    cfg = attack_config({"config": t.identity["config"]}, str(d))
    o = opts.AttackOptions(**t.options)
    pipeline.run(layout, cfg, d, overwrite=True, jobs=_jobs(), command=["segtrain", "experiment", plan.grid.name],
                 extra={"options": o.record(opts.TESTSET)})
    write_json(d / "cell.json", {"hash": t.hash, "identity": t.identity})
    return d


def ensure_poisoned(plan: Plan, p: PoisonCell) -> tuple[Path, float]:
    from poisongen import pipeline
    from poisongen.datasets import open_dataset
    from poisongen.record import attack_config

    d = plan.poison_dir(p)
    _check_folder(d, p.hash, "poisoned copy")
    if (d / "manifest.json").is_file() and (d / "cell.json").is_file():
        return d, 0.0
    t0 = time.perf_counter()
    layout = open_dataset(plan.source, plan.grid.dataset["layout"])
    cfg = attack_config({"config": p.identity["config"]}, str(d))
    o = opts.AttackOptions(**{k: v for k, v in p.options.items() if k != "preset"}, rate=p.rate, seed=p.seed)
    pipeline.run(layout, cfg, d, overwrite=True, jobs=_jobs(), command=["segtrain", "experiment", plan.grid.name],
                 extra={"options": o.record(opts.ATTACK)})
    write_json(d / "cell.json", {"hash": p.hash, "identity": p.identity})
    return d, time.perf_counter() - t0


def _jobs() -> int:
    from poisongen.parallel import default_jobs

    return default_jobs()


def run_cell(plan: Plan, cell: TrainCell, on_step: Callable[[int, int, dict | None], None] | None = None) -> dict:
    """Poison (if needed), train (resuming an interrupted run exactly), evaluate on every Poisoned Test,
    write the cell's result JSON (last, atomically: a killed cell has none) and return it."""
    from .evaluate import ModelPredictor, backdoor_report, get_protocol
    from .runner import prepare, train_run

    grid = plan.grid
    tests = [str(ensure_testset(plan, t)) for t in plan.tests]
    poison_s = 0.0
    data = plan.source
    if cell.poison is not None:
        data, poison_s = ensure_poisoned(plan, cell.poison)
    run = plan.run_dir(cell)
    _check_folder(run, cell.hash, "run folder")
    victim, target = plan.victim_target
    resume = (run / "last.pt").is_file()
    cfg = train_config(grid, cell.model, cell.seed, str(data), str(run), victim=victim, target=target,
                       resume=resume)
    prep = prepare(cfg)
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "cell.json", {"hash": cell.hash, "identity": cell.identity})
    t0 = time.perf_counter()
    result = train_run(prep, on_step=on_step)
    train_wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    proto = get_protocol(grid.protocol)
    t0 = time.perf_counter()
    predict = ModelPredictor(result.model, result.device, cfg.crop, 0, cfg.amp, flip=proto.flip)
    report = backdoor_report(predict, str(plan.source), tests, proto, None, None, (victim, target))
    eval_s = time.perf_counter() - t0
    write_json(run / "metrics.json", {**report, "step": result.step, "checkpoint": str(run / "last.pt")})
    if grid.overlays > 0:
        from poisongen.codecs import encode_rgb, write_bytes

        from .report import overlay_panel

        panel = overlay_panel(result.model, result.device, str(plan.source), tests[0], grid.overlays, cfg.crop)
        if panel is not None:
            write_bytes(plan.results / "overlays" / f"{cell.key}.png", encode_rgb(panel, ".png"))
    from poisongen.datasets import open_dataset

    from .data import dataset_fingerprint

    rec = {
        "schema": SCHEMA,
        "experiment": grid.name,
        "key": cell.key,
        "hash": cell.hash,
        "cell": {"model": cell.model, "attack": cell.attack, "rate": cell.rate, "seed": cell.seed},
        "identity": cell.identity,
        "poison": None if cell.poison is None else {"key": cell.poison.key, "hash": cell.poison.hash,
                                                    "config": cell.poison.identity["config"]},
        "tests": [{"band": t.band, "key": t.key, "hash": t.hash} for t in plan.tests],
        "steps": result.step,
        "times": {"poison_s": round(poison_s, 2), "train_s": round(result.train_seconds, 2),
                  "train_wall_s": round(train_wall, 2), "eval_s": round(eval_s, 2),
                  "resumed_from": int(prep.resume["step"]) if prep.resume else 0,
                  "img_s": log[-1].get("img_s") if log else None},
        "fingerprints": {"train_data": dataset_fingerprint(open_dataset(data)).get("fingerprint"),
                         "testsets": {Path(p["testset"]).name: p.get("fingerprint") for p in report["poisoned"]},
                         "code": code_fingerprint()},
        "report": report,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(plan.cell_json(cell), rec)
    plan.done[cell.hash] = rec
    return rec


def run_grid(plan: Plan, progress: Progress | None = None,
             on_step: Callable[[int, int, dict | None], None] | None = None, keep_checkpoints: bool = True) -> None:
    """Run every cell not yet done, in order; write the results table after each cell."""
    progress = progress or (lambda event, info: None)
    code_fingerprint()  # now, before any cell: the code this process loaded
    write_json(plan.out / "experiment.json", {"grid": plan.grid.to_dict(), "source": plan.grid.source,
                                                "results": str(plan.results.resolve()),
                                                "data": plan.data_identity, "code": code_identity()})
    for i, cell in enumerate(plan.cells):
        info = {"index": i, "total": len(plan.cells), "cell": cell}
        if cell.hash in plan.done:
            progress("cell-skip", info)
            continue
        progress("cell-start", info)

        def step(s, total, rec, info=info):
            if on_step:
                on_step(s, total, rec)
            progress("step", {**info, "step": s, "steps": total, "rec": rec})

        rec = run_cell(plan, cell, step)
        if not keep_checkpoints:
            (plan.run_dir(cell) / "last.pt").unlink(missing_ok=True)
        write_tables(plan)
        progress("cell-done", {**info, "result": rec})
    write_tables(plan)


# --- results ---------------------------------------------------------------------------------------
COLUMNS = ("experiment", "model", "attack", "rate", "seed", "testset", "band", "band_lower", "band_upper",
           "samples", "cba", "pba", "asr", "clean_asr", "benign_clean_asr", "victim_pixels", "steps", "poison_s",
           "train_s", "eval_s", "hash", "key", "train_data_fingerprint", "testset_fingerprint", "git_commit")


def rows(rec: dict) -> list[dict]:
    """The tidy rows of one cell's result JSON: one per Poisoned Test."""
    rep, c = rec["report"], rec["cell"]
    out = []
    by_key = {t["key"]: t["band"] for t in rec["tests"]}
    for p in rep["poisoned"]:
        name = by_key.get(Path(p["testset"]).name, Path(p["testset"]).name)
        if p.get("subset"):  # a conditional test set is scored twice
            name += f" [{p['subset']}]"
        band = p.get("band") or [None, None]
        out.append({
            "experiment": rec["experiment"], "model": c["model"], "attack": c["attack"], "rate": c["rate"],
            "seed": c["seed"], "testset": name, "band": p.get("band_label"), "band_lower": band[0],
            "band_upper": band[1], "samples": p["samples"], "cba": rep["benign"]["cba"], "pba": p["pba"],
            "asr": p["asr"], "clean_asr": p["clean_asr"], "benign_clean_asr": rep["benign"].get("clean_asr"),
            "victim_pixels": p.get("victim_pixels"), "steps": rec["steps"], "poison_s": rec["times"]["poison_s"],
            "train_s": rec["times"]["train_s"], "eval_s": rec["times"]["eval_s"], "hash": rec["hash"],
            "key": rec["key"], "train_data_fingerprint": rec["fingerprints"]["train_data"],
            "testset_fingerprint": p.get("fingerprint"), "git_commit": rec["fingerprints"]["code"]["git_commit"],
        })
    return out


def table(plan: Plan) -> list[dict]:
    """Every row of the grid's finished cells, in cell order."""
    return [r for c in plan.cells if c.hash in plan.done for r in rows(plan.done[c.hash])]


def write_tables(plan: Plan) -> tuple[Path, Path]:
    """``results.csv`` and ``results.json`` from the cell JSONs (the JSON also holds the grid)."""
    rs = table(plan)
    csv_path, json_path = plan.results / "results.csv", plan.results / "results.json"
    plan.results.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".results.csv.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rs:
            w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    tmp.replace(csv_path)
    write_json(json_path, {"experiment": plan.grid.name, "grid": plan.grid.to_dict(), "columns": list(COLUMNS),
                             "rows": rs, "cells": len(plan.cells), "done": len(plan.done)})
    return csv_path, json_path


def read_csv(path: Path) -> list[dict]:
    """results.csv back as rows with numbers as numbers (empty = None)."""
    out = []
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = int(v) if k in ("seed", "samples", "steps", "victim_pixels") else float(v) \
                        if k not in ("experiment", "model", "attack", "testset", "band", "hash", "key",
                                     "train_data_fingerprint", "testset_fingerprint", "git_commit") else v
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def status(plan: Plan) -> dict:
    """For ``--dry-run``: every cell, done or not, and an estimate of the time left (the mean wall time of
    the finished cells, else the config's ``estimate_minutes_per_training``)."""
    done = [plan.done[c.hash] for c in plan.cells if c.hash in plan.done]
    todo = [c for c in plan.cells if c.hash not in plan.done]
    if done:
        per = sum(r["times"]["train_s"] + r["times"]["eval_s"] + r["times"]["poison_s"] for r in done) / len(done)
        basis = f"mean of {len(done)} finished cell(s)"
    elif plan.grid.estimate_minutes is not None:
        per, basis = plan.grid.estimate_minutes * 60, "the config's estimate_minutes_per_training"
    else:
        per, basis = None, "no finished cell and no estimate_minutes_per_training in the config"
    partial = {c.hash: (plan.run_dir(c) / "last.pt").is_file() for c in todo}
    return {"cells": plan.cells, "done": len(done), "todo": len(todo), "partial": partial,
            "seconds_left": None if per is None else per * len(todo), "basis": basis}

