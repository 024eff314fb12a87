"""``segtrain experiment CONFIG|NAME --out DIR [--results DIR] [--dry-run]`` and ``segtrain report DIR
[--markdown FILE]``: parsing and printing only; the work is in :mod:`segtrain.experiment` and
:mod:`segtrain.report`."""

# ruff: noqa: E501  (typer option declarations carry their help text on one line each, as in cli.py)
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .output import percent

console = Console(stderr=True)
# long paths stay on one line; a log file (no terminal) gets wide tables rather than rich's 80 columns
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _minutes(s: float | None) -> str:
    return "unknown" if s is None else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def print_summary(plan) -> None:
    """The rich summary table: a line per finished cell, ASR per band."""
    from .experiment import table
    from .report import summary_rows

    rows = table(plan)
    if not rows:
        out.print("no finished cell yet")
        return
    head, body = summary_rows(rows)
    t = Table(title=f"experiment {plan.grid.name} (%)")
    for h in head:
        t.add_column(h, no_wrap=True)
    for line in body:
        t.add_row(*[str(c) for c in line])
    out.print(t)


def experiment(
    config: Annotated[str, typer.Argument(help="Grid YAML, or the name of a shipped config (paper-shape-cpu, paper-cityscapes).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Experiment folder: data, runs, results (rerun to continue).")],
    results: Annotated[Path | None, typer.Option("--results", help="Results folder (cell JSONs, results.csv/json, overlays); default OUT/results. Commit it: a cell whose JSON is there is done, even in a fresh clone.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells, which are done, and the time left; run nothing.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints/--drop-checkpoints", help="Keep each finished cell's last.pt (default) or delete it to save disk.")] = True,
) -> None:
    """Run an experiment grid: poison, train and evaluate every cell not yet done (docs/experiments.md)."""
    from .experiment import load_grid, plan_grid, run_grid, status

    grid = load_grid(config)  # every key checked before anything is written
    plan = plan_grid(grid, out_dir, results, create=not dry_run, log=lambda text: console.print(text, highlight=False))
    if dry_run:
        st = status(plan)
        t = Table(title=f"experiment {grid.name}: {len(plan.cells)} training cells x {len(plan.tests)} Poisoned Tests")
        for col in ("cell", "model", "attack", "rate %", "seed"):
            t.add_column(col, overflow="fold")
        t.add_column("state", no_wrap=True, min_width=17)
        for c in plan.cells:
            state = "done" if c.hash in plan.done else "partial (resumes)" if st["partial"].get(c.hash) else "to do"
            t.add_row(c.key, c.model, c.attack, f"{100 * c.rate:g}", str(c.seed), state)
        out.print(t)
        out.print(f"{st['done']} done, {st['todo']} to do; time left about {_minutes(st['seconds_left'])} "
                  f"({st['basis']})", highlight=False)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[now]}"),
                  TimeElapsedColumn(), console=console) as bar:
        cells = bar.add_task("cells", total=len(plan.cells), now="")
        steps = bar.add_task("train", total=None, now="")

        def progress(event: str, info: dict) -> None:
            c = info["cell"]
            if event == "cell-skip":
                bar.advance(cells)
            elif event == "cell-start":
                bar.update(cells, now=c.key)
                bar.reset(steps, total=None)
            elif event == "step":
                rec = info.get("rec")
                bar.update(steps, completed=info["step"], total=info["steps"],
                           now=f"loss {rec['loss']:.3f} {rec['img_s']:.1f} img/s" if rec else bar.tasks[steps].fields["now"])
            elif event == "cell-done":
                bar.advance(cells)
                r = info["result"]["report"]
                bar.console.print(f"{c.key}: CBA {percent(r['benign']['cba'])}, ASR "
                                  + ", ".join(f"{Path(p['testset']).name.rsplit('-', 1)[0]} {percent(p['asr'])}"
                                              for p in r["poisoned"]), highlight=False)

        run_grid(plan, progress, keep_checkpoints=keep_checkpoints)
    print_summary(plan)
    out.print(f"results: {plan.results / 'results.csv'}; report: segtrain report {out_dir}", highlight=False)


def report_cmd(
    folder: Annotated[Path, typer.Argument(help="A run folder (metrics.json) or an experiment / results folder.")],
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also fill the generated part of this Markdown file (e.g. docs/results.md) with the tables and plots.")] = None,
) -> None:
    """Write DIR/report.html: tables, plots and prediction overlays, self-contained (no network)."""
    from .report import write_markdown, write_report

    path = write_report(folder)
    out.print(f"wrote {path}", highlight=False)
    if markdown is not None:
        out.print(f"wrote {write_markdown(folder, markdown)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)
    app.command("report")(report_cmd)
