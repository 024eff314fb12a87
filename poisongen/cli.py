"""The ``poisongen`` command line: one subcommand per attack preset, plus synth, info, testset, scale,
verify, diff, show and attacks.

The attack subcommands and ``testset`` take their options from the one declaration in
:mod:`poisongen.options` (plus ``--src``, ``--out`` and the run options of :mod:`poisongen.console`).
Every user error, :class:`~poisongen.errors.PoisonGenError` or a usage error, is one red line, exit code 2.
"""

import inspect
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from . import options as opts
from .config import LINKS, parse_size
from .console import (
    BackendOpt,
    ErrorsAsOneLine,
    HashCacheOpt,
    JobsOpt,
    OverwriteOpt,
    QuietOpt,
    SchedulerOpt,
    one_line_warnings,
    out,
    progress_bars,
    resolve_jobs,
    run_backend,
)
from .errors import ConfigError
from .hashcache import open_cache
from .record import attack_config, band_text

app = typer.Typer(
    cls=ErrorsAsOneLine,
    name="poisongen",
    help="Write auditable poisoned copies of segmentation datasets (for measuring and defending "
    "against training-data poisoning). Every poisoned byte is listed in the output's manifest.json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SrcOpt = Annotated[
    str,
    typer.Option(
        "--src",
        help="Dataset folder (layout auto-detected), or a known name: cityscapes, voc, ade20k, synthetic "
        "(resolved under $POISONGEN_DATA, default ./data; synthetic is generated there on first use).",
    ),
]
LayoutOpt = Annotated[
    Literal[opts.LAYOUT_CHOICES] | None,
    typer.Option("--layout", help="Force the layout (default: detected)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of options (the flags' names, dashes "
                                                "or underscores); flags given on the command line win.")]
SignOpt = Annotated[Path | None, typer.Option("--sign", help="Key file (>= 32 bytes): sign the manifest with HMAC-SHA256; check with 'verify --key'.")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Key file the manifest must be signed with (--sign): fails on an unsigned manifest, another key or any edit.")]


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the dataset to (Cityscapes layout).")],
    train: Annotated[int, typer.Option(help="Number of training images.")] = 400,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 100,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "256x512",
    seed: Annotated[int, typer.Option(help="Seed; same seed, same bytes.")] = 0,
    jobs: JobsOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate the built-in synthetic street scenes (Cityscapes layout, real label files)."""
    from .datasets.synthetic import generate

    h, w = parse_size(size)
    if train < 1 or val < 0:
        raise ConfigError(f"--train must be >= 1 and --val >= 0, got train={train}, val={val}")
    summary = generate(out_dir, train=train, val=val, size=(h, w), seed=seed,
                       jobs=resolve_jobs(jobs), overwrite=overwrite)
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
    jobs: JobsOpt = 0,
) -> None:
    """Describe a dataset: layout, splits, sample counts, class table (and check every file)."""
    from .datasets import open_dataset
    from .datasets.stats import dataset_summary

    ds = open_dataset(src, layout)
    print_summary(dataset_summary(ds, read=check, jobs=resolve_jobs(jobs)))


def print_plan(plan, meta) -> None:
    cfg = plan.config
    band = band_text(cfg.placement.lower, cfg.placement.upper)
    t = Table(title=f"plan: {cfg.attack} on split '{cfg.split}', band {band} (dry run, nothing written)")
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


def _options(ctx: typer.Context, scope: str, values: dict, config: Path | None) -> opts.AttackOptions:
    """The run's options: the flags given (``values``, with their defaults) over ``--config``."""
    given = {name for name in values if (src := ctx.get_parameter_source(name)) is not None
             and src.name == "COMMANDLINE"}
    return opts.merge(scope, values, given, opts.read_config_file(config, scope))


def _with_parameters(body, scope: str, leading: list[inspect.Parameter], trailing: list[inspect.Parameter],
                     preset=None):
    """``body(**kwargs)`` as a typer command whose parameters are ``leading``, every option of ``scope``
    (declared once in :mod:`poisongen.options`), then ``trailing``."""
    params = [*leading, *opts.typer_parameters(scope, preset), *trailing]

    def command(**kwargs):
        return body(**kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _param(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _run_parameters(*, out_help: str, out_required: bool) -> tuple[list, list]:
    """The parameters around the options: context, --src, --out first; the run options last."""
    out_opt = Annotated[Path | None if not out_required else Path, typer.Option("--out", help=out_help)]
    leading = [_param("ctx", typer.Context), _param("src", SrcOpt),
               _param("out_dir", out_opt, inspect.Parameter.empty if out_required else None)]
    trailing = [_param("config", ConfigOpt, None), _param("jobs", JobsOpt, 0),
                _param("backend", BackendOpt, "loky"), _param("scheduler", SchedulerOpt, None),
                _param("hash_cache", HashCacheOpt, None),
                _param("overwrite", OverwriteOpt, False), _param("quiet", QuietOpt, False),
                _param("sign", SignOpt, None)]
    return leading, trailing


def _open(src: str, o: opts.AttackOptions):
    from .datasets import open_dataset

    return open_dataset(src, o.layout)


def _dry_run_plan(ds, cfg, jobs: int, quiet: bool):
    """``--dry-run``: the plan, on a rescaled copy in a temp dir for ``--scale``."""
    from .plan import build_plan

    if cfg.scale is None:
        return build_plan(ds, cfg, jobs)
    import tempfile

    from .pipeline import rescaled_copy

    with tempfile.TemporaryDirectory(prefix="poisongen-dry-run-") as tmp:
        scaled, _ = rescaled_copy(ds, Path(tmp) / "scaled", cfg.scale, cfg.jpeg_quality, "symlink", jobs,
                                  progress_bars(quiet))
        return build_plan(scaled, cfg, jobs)


def make_attack_command(attack: str):
    from .attacks import PRESETS, resolve

    preset = PRESETS[attack]

    def body(ctx: typer.Context, src: str, out_dir: Path | None, config: Path | None, jobs: int, backend: str,
             scheduler: str | None, hash_cache: str | None, overwrite: bool, quiet: bool, sign: Path | None,
             dry_run: bool, **values) -> None:
        from . import pipeline
        from .signing import load_key

        o = _options(ctx, opts.ATTACK, values, config)
        if o.rate is None and o.count is None:
            raise ConfigError("give --rate R (in (0, 1]) or --count N")
        sign_key = load_key(sign) if sign is not None else None
        ds = _open(src, o)
        cfg = resolve(ds, attack, kind="train", **o.resolve_kwargs(opts.ATTACK))
        if not dry_run and out_dir is None:
            raise ConfigError("give --out FOLDER (or --dry-run)")
        cache = open_cache(hash_cache, ds.root) if not dry_run else None
        with run_backend(backend, scheduler, jobs) as n_jobs:
            if dry_run:
                print_plan(_dry_run_plan(ds, cfg, n_jobs, quiet), ds.meta)
                return
            manifest, _, timings = pipeline.run(
                ds, cfg, out_dir, overwrite=overwrite, jobs=n_jobs, command=["poisongen", *sys.argv[1:]],
                progress=progress_bars(quiet), extra={"options": o.record(opts.ATTACK)}, sign_key=sign_key,
                hash_cache=cache,
            )
        print_run_summary(manifest, timings, out_dir)

    leading, trailing = _run_parameters(out_help="Output folder: a complete poisoned copy, same layout.",
                                        out_required=False)
    dry = _param("dry_run", Annotated[bool, typer.Option("--dry-run", help="Print the plan and write nothing.")],
                 False)
    command = _with_parameters(body, opts.ATTACK, leading, [*trailing, dry], preset)
    command.__doc__ = f"{preset.summary}. ({preset.paper})"
    return command


def _register_attacks() -> None:
    from .attacks import PRESETS

    for name in PRESETS:
        app.command(name=name)(make_attack_command(name))


_register_attacks()


def _testset(ctx: typer.Context, src: str, out_dir: Path, config: Path | None, jobs: int, backend: str,
             scheduler: str | None, hash_cache: str | None, overwrite: bool, quiet: bool, sign: Path | None,
             from_manifest: Path | None, key: Path | None, **values) -> None:
    from . import manifest as mf
    from . import pipeline
    from .attacks import resolve
    from .signing import load_key

    o = _options(ctx, opts.TESTSET, values, config)
    sign_key = load_key(sign) if sign is not None else None
    if key is not None and from_manifest is None:
        raise ConfigError("--key checks the signature of --from-manifest; give --from-manifest too")
    ds = _open(src, o)
    plan, extra = None, {"options": o.record(opts.TESTSET)}
    if from_manifest is not None:
        m = mf.load(from_manifest, complete=True)
        mf.check_sealed(m, from_manifest, load_key(key, "--key") if key is not None else None)
        if m.get("kind") != "testset":
            raise ConfigError(f"--from-manifest {from_manifest} is a '{m.get('kind')}' manifest; give a testset manifest")
        cfg = attack_config(m, str(from_manifest))
        plan = pipeline.plan_from_manifest(ds, m, cfg)
        extra["from_manifest"] = {"path": str(from_manifest), "integrity": m["integrity"]}
    else:
        name = o.attack or ("nni" if o.strategy == "nearest" else "baseline")
        cfg = resolve(ds, name, kind="testset", **o.resolve_kwargs(opts.TESTSET))
    cache = open_cache(hash_cache, ds.root)
    with run_backend(backend, scheduler, jobs) as n_jobs:
        manifest, _, timings = pipeline.run(
            ds, cfg, out_dir, overwrite=overwrite, jobs=n_jobs, command=["poisongen", *sys.argv[1:]],
            progress=progress_bars(quiet), plan=plan, extra=extra, sign_key=sign_key, hash_cache=cache,
        )
    print_run_summary(manifest, timings, out_dir)


def _register_testset() -> None:
    leading, trailing = _run_parameters(
        out_help="Output folder: a complete copy whose val samples with the victim carry the trigger.",
        out_required=True)
    reuse = _param("from_manifest", Annotated[Path | None, typer.Option(
        "--from-manifest", help="Reuse the trigger positions of this test manifest (identical positions for every "
        "model).")], None)
    key = _param("key", Annotated[Path | None, typer.Option(
        "--key", help="With --from-manifest: that manifest must be signed with this key file.")], None)
    command = _with_parameters(_testset, opts.TESTSET, leading, [*trailing, reuse, key])
    command.__doc__ = """Write a Poisoned Test (SPEC section 5): every validation sample the attack applies to gets the
    trigger, labels untouched. For fgba, badnets and instance the attacker's target labels are written
    too, under target_labels/. One run per distance band; reuse positions with --from-manifest."""
    app.command(name="testset")(command)


_register_testset()


@app.command(name="scale")
def scale_dataset(
    src: SrcOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: the whole dataset rescaled, same layout.")],
    scale: Annotated[float, typer.Option("--scale", help="Factor in (0, 4]: images area (shrinking) / linear (enlarging), labels nearest.")],
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality of rescaled JPEG images (recorded).")] = 95,
    link: Annotated[Literal[LINKS], typer.Option(
        help="Files that need no rescaling (lists, dataset.yaml): copied, hard-linked or symlinked.")] = "copy",
    layout: LayoutOpt = None,
    jobs: JobsOpt = 0,
    backend: BackendOpt = "loky",
    scheduler: SchedulerOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    sign: SignOpt = None,
) -> None:
    """Write the clean dataset rescaled (every split, every file) with its own manifest: the clean
    counterpart of an attack run with the same --scale (for the clean model)."""
    from .datasets import open_dataset
    from .pipeline import normalised_command, write_scaled
    from .signing import load_key

    sign_key = load_key(sign) if sign is not None else None
    ds = open_dataset(src, layout)
    with run_backend(backend, scheduler, jobs) as n_jobs:
        manifest, timings = write_scaled(
            ds, out_dir, scale, jpeg_quality=jpeg_quality, link=link, jobs=n_jobs, overwrite=overwrite,
            command=normalised_command(["poisongen", *sys.argv[1:]]), progress=progress_bars(quiet),
            sign_key=sign_key,
        )
    c = manifest["counts"]
    out.print(f"rescaled {c['rewritten']} of {c['files']} files by {scale:g} in {timings['scale']:.2f} s -> {out_dir}")
    out.print(f"manifest: {out_dir / 'manifest.json'}")


@app.command()
def verify(
    out_dir: Annotated[Path, typer.Argument(help="A poisongen output folder (holding manifest.json).")],
    src: Annotated[str | None, typer.Option("--src", help="The source dataset: re-derive every poisoned file from it.")] = None,
    jobs: JobsOpt = 0,
    backend: BackendOpt = "loky",
    scheduler: SchedulerOpt = None,
    key: KeyOpt = None,
) -> None:
    """Re-hash every file against the manifest; with --src, compare the file list with the source's and
    re-derive every poisoned file. Exit 1 on any mismatch, listing each."""
    from rich.markup import escape

    from . import manifest as mf
    from .signing import load_key
    from .verify import unhashed_files
    from .verify import verify as run_verify

    secret = load_key(key, "--key") if key is not None else None
    m = mf.load(out_dir, complete=True)
    with run_backend(backend, scheduler, jobs) as n_jobs:
        problems = run_verify(out_dir, src, n_jobs, key=secret, manifest=m)
    unhashed = len(unhashed_files(m))
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
    one_line_warnings()
    app()


if __name__ == "__main__":
    main()
