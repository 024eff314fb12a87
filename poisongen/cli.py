"""The ``poisongen`` command line: one subcommand per attack preset, plus synth, info, testset,
verify, diff, show and attacks.

Every user error is a :class:`~poisongen.errors.PoisonGenError`, shown as one red line, exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, PoisonGenError

class ErrorsAsOneLine(typer.core.TyperGroup):
    """Show every :class:`PoisonGenError` as one red line with exit code 2, in the console script
    and under ``CliRunner`` alike."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PoisonGenError as exc:
            Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
