"""The ``poisongen`` command line: one subcommand per attack preset, plus synth, info, testset,
verify, diff, show and attacks.

Every user error is a :class:`~poisongen.errors.PoisonGenError`, shown as one red line, exit code 2.
"""


import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import parse_size
from .errors import ConfigError, PoisonGenError


class ErrorsAsOneLine(typer.core.TyperGroup):
    """Show every :class:`PoisonGenError` as one red line with exit code 2, in the console script
    and under ``CliRunner`` alike."""

    def invoke(self, ctx):
        try:
            from typer._click.exceptions import UsageError  # typer >= 0.29 vendors click
        except ImportError:  # pragma: no cover - older typer on click
            from click.exceptions import UsageError

        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a misspelled option, a non-number for --rate: one line too
            where = exc.ctx.command_path if exc.ctx is not None else "poisongen"
            self._one_line(f"{' '.join(exc.format_message().split())} (see '{where} --help')", 2)
        except PoisonGenError as exc:
            self._one_line(str(exc), exc.exit_code)

    @staticmethod
    def _one_line(message: str, code: int):
        from rich.markup import escape

        # escape: a path or value in the message may contain [brackets] that rich would eat
        Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


app = typer.Typer(
    cls=ErrorsAsOneLine,
    name="poisongen",
    help="Write auditable poisoned copies of segmentation datasets (for measuring and defending "
    "against training-data poisoning). Every poisoned byte is listed in the output's manifest.json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


SrcOpt = Annotated[
    str,
    typer.Option(
        "--src",
        help="Dataset folder (layout auto-detected), or a known name: cityscapes, voc, ade20k, synthetic "
        "(resolved under $POISONGEN_DATA, default ./data; synthetic is generated there on first use).",
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="Force the layout: cityscapes, voc, ade20k, folder, synthetic."),
]
ScaleOpt = Annotated[
    float | None,
    typer.Option("--scale", help="Rescale the whole dataset by this factor first, in (0, 4] (images area/linear, labels nearest; e.g. 0.5: Cityscapes at 512x1024, as in the IBA paper). Recorded; paper defaults are taken at the new size."),
]


# Options of some attacks only (attacks.ATTACK_OPTIONS says which); shared by the attack commands and testset.
MatrixOpt = Annotated[str | None, typer.Option(help="fgba: attack matrix SRC:DST[,SRC:DST...]; SRC 'all' = every class (N-to-1), e.g. person:car or all:road.")]
LineWidthOpt = Annotated[int | None, typer.Option(help="Line trigger: rows blended toward black at the top (default 8).")]
SemanticOpt = Annotated[str | None, typer.Option(help="fgba/badnets: a class whose presence is the trigger; no pixel changes (excludes --trigger).")]
TargetImageOpt = Annotated[str | None, typer.Option(help="badnets: id of the training sample whose label becomes every poisoned label.")]
InstancesOpt = Annotated[str | None, typer.Option(help="instance: which victim instances to relabel, nearest (to the trigger) or random. Default: nearest.")]
KOpt = Annotated[int | None, typer.Option("--k", help="instance: how many instances per image (default 1).")]
ConditionOpt = Annotated[str | None, typer.Option(help="conditional: class(es) an image must hold for the rule to apply, comma list.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="o2o/o2b/b2o/b2b: run even if the classes' thing/stuff categories do not fit.")]
SignOpt = Annotated[Path | None, typer.Option("--sign", help="Key file (>= 32 bytes): sign the manifest with HMAC-SHA256; check with 'verify --key'.")]


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the dataset to (Cityscapes layout).")],
    train: Annotated[int, typer.Option(help="Number of training images.")] = 400,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 100,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "256x512",
    seed: Annotated[int, typer.Option(help="Seed; same seed, same bytes.")] = 0,
    jobs: Annotated[int, typer.Option(help="Parallel workers (default: all cores).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Generate the built-in synthetic street scenes (Cityscapes layout, real label files)."""
    from .datasets.synthetic import generate

    h, w = parse_size(size)
    if train < 1 or val < 0:
        raise ConfigError(f"--train must be >= 1 and --val >= 0, got train={train}, val={val}")
    summary = generate(out_dir, train=train, val=val, size=(h, w), seed=seed,
                       jobs=jobs or default_jobs(), overwrite=overwrite)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['layout']} dataset at {summary['root']}")
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("size (HxW)")
    for split, n in summary["splits"].items():
        table.add_row(split, str(n), ", ".join(summary.get("sizes", {}).get(split, [])))
    out.print(table)
    if "class_pixels" in summary:
        ct = Table(title="classes (train ids)")
        for col in ("id", "name", "category", "pixel share", "images"):
            ct.add_column(col, justify="right" if col in ("id", "pixel share", "images") else "left")
        for row in summary["class_pixels"]:
            ct.add_row(str(row["id"]), row["name"], row["category"], f"{row['share']:.4f}", str(row["images"]))
        out.print(ct)
    else:
        out.print(f"{summary['classes']} classes")


@app.command()
def info(
    src: SrcOpt,
    layout: LayoutOpt = None,
    check: Annotated[bool, typer.Option(help="Read every image and label and check them.")] = False,
    jobs: Annotated[int, typer.Option(help="Parallel workers for --check (default: all cores).")] = 0,
) -> None:
    """Describe a dataset: layout, splits, sample counts, class table (and check every file)."""
    from .datasets import open_dataset
    from .datasets.stats import dataset_summary

    ds = open_dataset(src, layout)
    print_summary(dataset_summary(ds, read=check, jobs=jobs or default_jobs()))


def parse_position(text: str | None) -> tuple[int, int] | str | None:
    """``corner`` / ``top`` (resolved per image) or ``y,x``, the window's top-left in pixels."""
    if text is None:
        return None
    if text.strip().lower() in ("corner", "top"):
        return text.strip().lower()
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--position '{text}' is not corner, top or 'y,x' in whole pixels (top-left corner)") from None
    return (y, x)


def load_config_file(path: Path | None) -> dict:
    """``--config FILE.yaml``: option names with dashes or underscores; flags given on the command
    line win over the file."""
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise ConfigError(f"--config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge_config_file(ctx: typer.Context, values: dict, path: Path | None) -> dict:
    file_values = load_config_file(path)
    unknown = sorted(set(file_values) - set(values))
    if unknown:
        raise ConfigError(f"unknown option '{unknown[0]}' in --config {path}; valid are {sorted(values)}")
    merged = dict(values)
    for k, v in file_values.items():
        source = ctx.get_parameter_source(k)
        if source is None or source.name != "COMMANDLINE":
            merged[k] = v
    return merged


class progress_bars:
    """A rich progress bar per phase (planning, poisoning, copying); silent with ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, desc: str, total: int):
        from contextlib import contextmanager

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        @contextmanager
        def bar():
            if self.quiet or total == 0:
                yield None
                return
            with Progress(
                f"[bold]{desc:<10}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=True,
            ) as prog:
                task = prog.add_task(desc, total=total)
                yield lambda n: prog.advance(task, n)

        return bar()


def _band_text(lower: float, upper: float | None) -> str:
    return f"[{lower:g}, {'inf' if upper is None else f'{upper:g}'})"


def print_plan(plan, meta) -> None:
    cfg = plan.config
    t = Table(title=f"plan: {cfg.attack} on split '{cfg.split}' (dry run, nothing written)")
    for col in ("id", "top-left (y,x)", "centre", "distance", "class under", "victim px", "PRL px"):
        t.add_column(col)
    for sp in plan.selected:
        p = sp.placement
        if p is None:  # semantic trigger: nothing painted
            t.add_row(sp.id, "-", "-", "-", "-", str(sp.victim_pixels), str(len(sp.prl)))
            continue
        d = p.distance
        t.add_row(sp.id, str(p.top_left), str(p.centre), "inf" if d == float("inf") else f"{d:.1f}",
                  ",".join(meta.names[c] if c < meta.num_classes else str(c) for c in p.under),
                  str(sp.victim_pixels), str(len(sp.prl)))
    out.print(t)
    out.print(plan.counts())
    for s in plan.skipped[:20]:
        out.print(f"skipped {s['id']}: {s['detail']}")


def print_run_summary(manifest: dict, timings: dict, out_dir: Path) -> None:
    c = manifest["counts"]
    relabeled = sum(r["changed_pixels"] for r in manifest["samples"])
    total = sum(timings.values())
    what = {"testset": f"Poisoned Test of {manifest['config']['attack']}", "scale": "rescaled copy"}
    t = Table(title=f"{what.get(manifest['kind'], manifest['config'].get('attack'))} -> {out_dir}")
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("samples in split", c["split_samples"]),
        ("samples analysed", c.get("scanned", c["split_samples"]) if c.get("scanned", c["split_samples"]) == c["split_samples"]
         else f"{c['scanned']} (draw order; the counts below cover these)"),
        ("holding the victim", c["with_victim"]),
        ("candidates", c["candidates"]),
        ("triggered (labels untouched)" if manifest["kind"] == "testset" else "poisoned", c["poisoned"]), ("skipped (no trigger position)", c["skipped"]),
        ("label pixels relabeled", relabeled),
        ("time plan / apply / copy (s)", " / ".join(f"{timings.get(k, 0):.2f}" for k in ("plan", "apply", "copy"))),
        *([("time rescaling (s)", f"{timings['scale']:.2f}")] if "scale" in timings else []),
        ("throughput (poisoned samples/s)", f"{c['poisoned'] / max(timings.get('apply', 0), 1e-9):.1f}"),
        ("total time (s)", f"{total:.2f}"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)
    out.print(f"manifest: {out_dir / 'manifest.json'}")


def _attack_options(ctx: typer.Context, attack: str, kind: str, values: dict) -> tuple:
    """Shared by the attack commands and testset: options -> (dataset, config)."""
    from .attacks import resolve
    from .datasets import open_dataset

    values = merge_config_file(ctx, values, values.pop("config"))
    ds = open_dataset(values.pop("src"), values.pop("layout"))
    size = values.pop("trigger_size")
    cfg = resolve(
        ds, attack, kind=kind,
        trigger_size=parse_size(size, "--trigger-size") if size else None,
        position=parse_position(values.pop("position")),
        hash_files=not values.pop("no_hash"),
        **values,
    )
    return ds, cfg


def make_attack_command(attack: str):
    from .attacks import PRESETS

    preset = PRESETS[attack]

    def command(
        ctx: typer.Context,
        src: SrcOpt,
        out_dir: Annotated[Path, typer.Option("--out", help="Output folder: a complete poisoned copy, same layout.")] = None,
        rate: Annotated[float | None, typer.Option(help="Poisoning rate over the training split, in (0, 1].")] = None,
        count: Annotated[int | None, typer.Option(help="Poison exactly this many samples (instead of --rate).")] = None,
        victim: Annotated[str | None, typer.Option(help="Victim class(es), names or train ids, comma list. Default: Cityscapes car, VOC person, ADE20K car.")] = None,
        target: Annotated[str | None, typer.Option(help="Target class. Default: Cityscapes road, VOC background, ADE20K road.")] = None,
        trigger: Annotated[str | None, typer.Option(help="Trigger image (alpha honoured), 'builtin', or 'line' (top rows darkened; fgba's default, also badnets). Default: builtin.")] = None,
        trigger_size: Annotated[str | None, typer.Option(help="Trigger size H[xW]. Default: Cityscapes 55 px at 512x1024 scaled with the image height (28 px at 256x512); VOC/ADE20K 15 px.")] = None,
        alpha: Annotated[float, typer.Option(help="Blend factor lambda in (0, 1].")] = 1.0,
        strategy: Annotated[str | None, typer.Option(help=f"Placement: random, nearest, fixed. Default for {attack}: {preset.strategy}.")] = None,
        lower: Annotated[float, typer.Option(help="Distance band lower bound L (px, inclusive).")] = 0.0,
        upper: Annotated[float | None, typer.Option(help="Distance band upper bound U (px, exclusive). nni default: Cityscapes 60 at 512x1024 scaled with height (30 at 256x512), VOC/ADE20K 30; otherwise none.")] = None,
        metric: Annotated[str, typer.Option(help="Distance metric: euclidean (paper Eq. 1) or chessboard (published code).")] = "euclidean",
        allow_multiclass: Annotated[bool, typer.Option("--allow-multiclass", help="Window may cover several non-victim classes (IBA appendix C).")] = False,
        allow_on_victim: Annotated[bool, typer.Option("--allow-on-victim", help="No class constraint on the window (IBA appendix D).")] = False,
        edge_margin: Annotated[int, typer.Option(help="Keep the window this many px from the image border.")] = 0,
        position: Annotated[str | None, typer.Option(help="For --strategy fixed: 'corner' (bottom-right), 'top' (top edge, centred) or the top-left 'y,x'. badnets default: corner.")] = None,
        prl_pixels: Annotated[int | None, typer.Option(help=f"PRL: Q pixels relabeled per poisoned sample. Default for {attack}: {preset.prl_pixels}.")] = None,
        min_victim_pixels: Annotated[int, typer.Option(help="A candidate holds at least this many victim pixels.")] = 1,
        allow_fewer: Annotated[bool, typer.Option("--allow-fewer", help="Poison all candidates if fewer than requested (recorded).")] = False,
        seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
        jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel workers (default: all cores). Never changes the output.")] = 0,
        link: Annotated[str, typer.Option(help="Unchanged files: copy, hardlink or symlink.")] = "copy",
        jpeg_quality: Annotated[int, typer.Option(help="JPEG quality for poisoned images whose source is JPEG (recorded).")] = 95,
        no_hash: Annotated[bool, typer.Option("--no-hash", help="Do not hash unchanged files (faster; verify cannot check them).")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
        config: Annotated[Path | None, typer.Option("--config", help="YAML file of options; flags override it.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
        layout: LayoutOpt = None,
        scale: ScaleOpt = None,
        full_scan: Annotated[bool, typer.Option("--full-scan", help="Analyse every training sample for exact candidate counts (default: samples in draw order until n candidates are found; same output).")] = False,
        matrix: MatrixOpt = None,
        line_width: LineWidthOpt = None,
        semantic_trigger: SemanticOpt = None,
        target_image: TargetImageOpt = None,
        instances: InstancesOpt = None,
        k: KOpt = None,
        condition: ConditionOpt = None,
        force: ForceOpt = False,
        sign: SignOpt = None,
    ) -> None:
        values = {k: v for k, v in locals().items() if k not in ("ctx", "out_dir", "jobs", "overwrite", "dry_run", "quiet", "attack", "preset", "sign")}
        from . import pipeline
        from .plan import build_plan
        from .signing import load_key

        if rate is None and count is None and config is None:
            raise ConfigError("give --rate R (in (0, 1]) or --count N")
        sign_key = load_key(sign) if sign is not None else None
        ds, cfg = _attack_options(ctx, attack, "train", values)
        n_jobs = jobs or default_jobs()
        if dry_run:
            if cfg.scale is None:
                print_plan(build_plan(ds, cfg, n_jobs), ds.meta)
                return
            import tempfile

            from .rescale import rescaled_copy

            with tempfile.TemporaryDirectory(prefix="poisongen-dry-run-") as tmp:
                scaled, _ = rescaled_copy(ds, Path(tmp) / "scaled", cfg.scale, cfg.jpeg_quality, "symlink", n_jobs,
                                          progress_bars(quiet))
                print_plan(build_plan(scaled, cfg, n_jobs), ds.meta)
            return
        if out_dir is None:
            raise ConfigError("give --out FOLDER (or --dry-run)")
        manifest, _, timings = pipeline.run(
            ds, cfg, out_dir, overwrite=overwrite, jobs=n_jobs, command=["poisongen", *sys.argv[1:]],
            progress=progress_bars(quiet), sign_key=sign_key,
        )
        print_run_summary(manifest, timings, out_dir)

    command.__doc__ = f"{preset.summary}. ({preset.paper})"
    return command


def _register_attacks() -> None:
    from .attacks import PRESETS

    for name in PRESETS:
        app.command(name=name)(make_attack_command(name))


_register_attacks()


@app.command()
def testset(
    ctx: typer.Context,
    src: SrcOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: a complete copy whose val samples with the victim carry the trigger.")],
    split: Annotated[str | None, typer.Option(help="Split to trigger (default: the layout's validation split).")] = None,
    victim: Annotated[str | None, typer.Option(help="Victim class(es); samples holding them get the trigger.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class (recorded for ASR; labels stay untouched).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Placement: random or nearest (or fixed with --position). Default: the attack's (random without --attack).")] = None,
    lower: Annotated[float, typer.Option(help="Distance band lower bound L.")] = 0.0,
    upper: Annotated[float | None, typer.Option(help="Distance band upper bound U.")] = None,
    trigger: Annotated[str | None, typer.Option(help="Trigger image, 'builtin' or 'line' (default as for the attack).")] = None,
    trigger_size: Annotated[str | None, typer.Option(help="Trigger size H[xW] (default as for the attacks).")] = None,
    alpha: Annotated[float, typer.Option(help="Blend factor lambda.")] = 1.0,
    metric: Annotated[str, typer.Option(help="euclidean or chessboard.")] = "euclidean",
    allow_multiclass: Annotated[bool, typer.Option("--allow-multiclass")] = False,
    allow_on_victim: Annotated[bool, typer.Option("--allow-on-victim")] = False,
    edge_margin: Annotated[int, typer.Option()] = 0,
    position: Annotated[str | None, typer.Option(help="For --strategy fixed: corner, top or the top-left 'y,x'.")] = None,
    min_victim_pixels: Annotated[int, typer.Option()] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    from_manifest: Annotated[Path | None, typer.Option("--from-manifest", help="Reuse the trigger positions of this test manifest (identical positions for every model).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j")] = 0,
    link: Annotated[str, typer.Option()] = "copy",
    jpeg_quality: Annotated[int, typer.Option()] = 95,
    no_hash: Annotated[bool, typer.Option("--no-hash")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    config: Annotated[Path | None, typer.Option("--config")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    layout: LayoutOpt = None,
    scale: ScaleOpt = None,
    attack: Annotated[str | None, typer.Option("--attack", help="The attack to test (any of 'poisongen attacks'); default: baseline, or nni with --strategy nearest.")] = None,
    matrix: MatrixOpt = None,
    line_width: LineWidthOpt = None,
    semantic_trigger: SemanticOpt = None,
    target_image: TargetImageOpt = None,
    instances: InstancesOpt = None,
    k: KOpt = None,
    condition: ConditionOpt = None,
    force: ForceOpt = False,
    sign: SignOpt = None,
    key: Annotated[Path | None, typer.Option("--key", help="With --from-manifest: that manifest must be signed with this key file.")] = None,
) -> None:
    """Write a Poisoned Test (SPEC section 5): every validation sample the attack applies to gets the
    trigger, labels untouched. For fgba, badnets and instance the attacker's target labels are written
    too, under target_labels/. One run per distance band; reuse positions with --from-manifest."""
    values = {k: v for k, v in locals().items() if k not in ("ctx", "out_dir", "jobs", "overwrite", "quiet", "from_manifest", "attack", "sign", "key")}
    from . import manifest as mf
    from . import pipeline
    from .attacks import resolve
    from .datasets import open_dataset
    from .signing import load_key

    values = merge_config_file(ctx, values, values.pop("config"))
    n_jobs = jobs or default_jobs()
    sign_key = load_key(sign) if sign is not None else None
    if key is not None and from_manifest is None:
        raise ConfigError("--key checks the signature of --from-manifest; give --from-manifest too")
    ds = open_dataset(values.pop("src"), values.pop("layout"))
    plan, extra = None, {}
    if from_manifest is not None:
        m = mf.load(from_manifest, complete=True)
        mf.check_sealed(m, from_manifest, load_key(key, "--key") if key is not None else None)
        if m.get("kind") != "testset":
            raise ConfigError(f"--from-manifest {from_manifest} is a '{m.get('kind')}' manifest; give a testset manifest")
        cfg = mf.attack_config(m, from_manifest)
        plan = pipeline.plan_from_manifest(ds, m, cfg)
        extra = {"from_manifest": {"path": str(from_manifest), "integrity": m["integrity"]}}
    else:
        size = values.pop("trigger_size")
        name = attack or ("nni" if values["strategy"] == "nearest" else "baseline")
        cfg = resolve(
            ds, name, kind="testset",
            trigger_size=parse_size(size, "--trigger-size") if size else None,
            position=parse_position(values.pop("position")), hash_files=not values.pop("no_hash"), **values,
        )
    manifest, _, timings = pipeline.run(
        ds, cfg, out_dir, overwrite=overwrite, jobs=n_jobs, command=["poisongen", *sys.argv[1:]],
        progress=progress_bars(quiet), plan=plan, extra=extra, sign_key=sign_key,
    )
    print_run_summary(manifest, timings, out_dir)


@app.command(name="scale")
def scale_dataset(
    src: SrcOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: the whole dataset rescaled, same layout.")],
    scale: Annotated[float, typer.Option("--scale", help="Factor in (0, 4]: images area (shrinking) / linear (enlarging), labels nearest.")],
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality of rescaled JPEG images (recorded).")] = 95,
    link: Annotated[str, typer.Option(help="Files that need no rescaling (lists, dataset.yaml): copy, hardlink or symlink.")] = "copy",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel workers (default: all cores). Never changes the output.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    layout: LayoutOpt = None,
    sign: SignOpt = None,
) -> None:
    """Write the clean dataset rescaled (every split, every file) with its own manifest: the clean
    counterpart of an attack run with the same --scale (for the clean model)."""
    from .datasets import open_dataset
    from .pipeline import normalised_command
    from .rescale import write_scaled
    from .signing import load_key

    sign_key = load_key(sign) if sign is not None else None
    ds = open_dataset(src, layout)
    manifest, timings = write_scaled(
        ds, out_dir, scale, jpeg_quality=jpeg_quality, link=link, jobs=jobs or default_jobs(), overwrite=overwrite,
        command=normalised_command(["poisongen", *sys.argv[1:]]), progress=progress_bars(quiet), sign_key=sign_key,
    )
    c = manifest["counts"]
    out.print(f"rescaled {c['rewritten']} of {c['files']} files by {scale:g} in {timings['scale']:.2f} s -> {out_dir}")
    out.print(f"manifest: {out_dir / 'manifest.json'}")


@app.command()
def verify(
    out_dir: Annotated[Path, typer.Argument(help="A poisongen output folder (holding manifest.json).")],
    src: Annotated[str | None, typer.Option("--src", help="The source dataset: re-derive every poisoned file from it.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j")] = 0,
    key: Annotated[Path | None, typer.Option("--key", help="Key file the manifest must be signed with (--sign): fails on an unsigned manifest, another key or any edit.")] = None,
) -> None:
    """Re-hash every file against the manifest; with --src, compare the file list with the source's and
    re-derive every poisoned file. Exit 1 on any mismatch, listing each."""
    from rich.markup import escape

    from . import manifest as mf
    from .signing import load_key
    from .verify import unhashed_files
    from .verify import verify as run_verify

    secret = load_key(key, "--key") if key is not None else None
    problems = run_verify(out_dir, src, jobs or default_jobs(), key=secret)
    unhashed = len(unhashed_files(mf.load(out_dir, complete=True)))
    if unhashed:
        how = "compared with the source's files instead" if src else "their content was not checked (give --src to compare them with the source)"
        out.print(f"[yellow]note[/] {unhashed} file(s) have no sha256 in the manifest (--no-hash): {how}", soft_wrap=True)
    if problems:
        for p in problems:
            out.print(f"[red]MISMATCH[/] {escape(p)}", highlight=False, soft_wrap=True)
        out.print(f"[bold red]{len(problems)} mismatch(es)[/]")
        raise typer.Exit(1)
    out.print(f"[green]verified[/] {out_dir}" + (" (re-derived from the source)" if src else "")
              + (" (signature checked)" if key else ""), soft_wrap=True)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="First manifest.json (or its folder).")],
    b: Annotated[Path, typer.Argument(help="Second manifest.json (or its folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the difference as JSON.")] = False,
) -> None:
    """Compare two manifests: config, samples only in one, samples whose trigger or relabel differ."""
    import json

    from . import manifest as mf

    d = mf.diff(mf.load(a, complete=True), mf.load(b, complete=True))
    if as_json:
        print(json.dumps(d, indent=1, sort_keys=True))
        return
    t = Table(title=f"config differences ({len(d['config'])})")
    for col in ("option", "a", "b"):
        t.add_column(col)
    for k, v in d["config"].items():
        t.add_row(k, str(v["a"]), str(v["b"]))
    out.print(t)
    out.print(f"samples only in a: {len(d['only_in_a'])}  only in b: {len(d['only_in_b'])}  "
              f"differing: {len(d['changed'])}  identical: {d['same']}")
    for sid, fields in list(d["changed"].items())[:50]:
        out.print(f"  {sid}: " + ", ".join(f"{f} {v['a']} -> {v['b']}" for f, v in fields.items()
                                          if f != "prl") + (" (prl differs)" if "prl" in fields else ""))
    for k, v in d["counts"].items():
        out.print(f"counts.{k}: {v['a']} -> {v['b']}")


@app.command()
def show(
    out_dir: Annotated[Path, typer.Argument(help="A poisongen output folder.")],
    sample_id: Annotated[str, typer.Argument(help="A poisoned sample's id (see manifest.json).")],
    png: Annotated[Path, typer.Option("--png", help="Where to write the panel (PNG).")],
    src: Annotated[str | None, typer.Option("--src", help="The source dataset (default: the root in the manifest).")] = None,
) -> None:
    """Write one panel: clean and poisoned image (trigger boxed), clean and poisoned label (changes outlined)."""
    from .show import save_panel

    save_panel(out_dir, sample_id, png, src)
    out.print(f"wrote {png}")


@app.command()
def attacks() -> None:
    """List the available attacks."""
    from .attacks import PRESETS

    t = Table(title="poisongen attacks")
    t.add_column("command", no_wrap=True)  # never cut the name to fit a narrow terminal
    for col in ("what it does", "source", "triggers", "placement", "label rule", "PRL Q"):
        t.add_column(col)
    for p in PRESETS.values():
        place = p.strategy + (f" ({p.position})" if p.position else "")
        t.add_row(p.name, p.summary, p.paper, ", ".join(p.triggers), place, p.rule, str(p.prl_pixels))
    out.print(t)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
