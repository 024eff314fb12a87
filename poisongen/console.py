"""Console helpers shared by both CLIs (poisongen and segtrain): one-line errors, progress bars, the
default job count, the run options every subcommand spells the same way, and the two consoles.

Every problem a user or the machine can cause is one red line on stderr with exit code 2: the
project's own :class:`~poisongen.errors.PoisonGenError` as well as click's usage errors (a misspelled
option, ``--rate abc``, a missing argument), in the console script and under ``CliRunner`` alike.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

from . import parallel
from .errors import PoisonGenError
from .parallel import BACKENDS, default_jobs

console = Console(stderr=True)  # progress bars, errors
out = Console()  # tables and results

#: ``--jobs`` above this is refused (a typo such as 80000 would start that many processes)
MAX_JOBS = 1024


def resolve_jobs(jobs: int) -> int:
    """``--jobs``: 0 = :func:`default_jobs`; 1..MAX_JOBS as given (the option's range refuses the rest)."""
    return jobs or default_jobs()


@contextmanager
def run_backend(backend: str, scheduler: str | None, jobs: int):
    """``--backend``/``--scheduler``/``--jobs`` of a command: run its parallel maps on that backend
    (:func:`poisongen.parallel.backend`); yields the job count (``--jobs 0``: all cores, on dask the
    cluster's worker threads)."""
    with parallel.backend(backend, scheduler, jobs) as dask:
        yield jobs or (dask.threads() if dask is not None else default_jobs())


def error_line(message: str) -> None:
    """Print ``error: MESSAGE`` as one red line on stderr."""
    # escape: a path or value in the message may contain [brackets] that rich would eat
    Console(stderr=True).print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}",
                               highlight=False, soft_wrap=True)


def _usage_line(exc: ClickException) -> str:
    """click's message, naming the value that failed to convert where typer's validator holds it."""
    msg = exc.format_message().replace("Value error, ", "")
    errors = getattr(exc.__cause__, "errors", None)  # typer converts values with pydantic validators
    if callable(errors):
        try:
            got = errors()[0].get("input")
        except (IndexError, AttributeError, TypeError):
            got = None
        if isinstance(got, str) and repr(got) not in msg:
            msg = f"{msg.rstrip('.')}, got {got!r}"
    ctx = getattr(exc, "ctx", None)
    return msg + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


class ErrorsAsOneLine(typer.core.TyperGroup):
    """A typer group whose every error is one red line, exit code 2: :class:`PoisonGenError` from a
    command, and click's usage errors from parsing the command line (never a usage box or a traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PoisonGenError as exc:
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:  # a bare command prints its help
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        except ClickException as exc:
            error_line(_usage_line(exc))
            sys.exit(2)
        except typer.Abort:
            error_line("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


class progress_bars:
    """A rich progress bar per phase (planning, poisoning, copying); silent with ``quiet``.

    ``progress_bars(quiet)(desc, total)`` is a context manager yielding ``advance(n)`` (or None)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, desc: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

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


# The run options, spelled and explained the same on every subcommand that has them.
JobsOpt = Annotated[
    int,
    typer.Option("--jobs", "-j", min=0, max=MAX_JOBS,
                 help=f"Parallel workers, 0..{MAX_JOBS} (0: all cores). Never changes the output."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace a non-empty --out (only once the new copy is complete).")
]
BackendOpt = Annotated[
    Literal[BACKENDS],
    typer.Option("--backend", help="Where the parallel work runs: loky (worker processes here) or dask (the "
                 "workers of a dask.distributed cluster: --scheduler, else a local cluster of --jobs processes; "
                 "needs pip install .\\[dask]). Never changes the output."),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", metavar="tcp://HOST:PORT",
                 help="With --backend dask: the scheduler to connect to. Every worker must see the source and "
                 "--out's folder at the same paths (checked before any work)."),
]
HashCacheOpt = Annotated[
    str | None,
    typer.Option("--hash-cache", metavar="DIR", envvar="POISONGEN_HASH_CACHE",
                 help="Reuse the sha256 of unchanged source files from this cache folder ('default': "
                 "~/.cache/poisongen), keyed by path, size, mtime and inode; never read by verify. Env "
                 "POISONGEN_HASH_CACHE."),
]


def one_line_warnings() -> None:
    """Print a library warning (e.g. a corrupt hash cache being ignored) as one ``warning: ...`` line on
    stderr, without Python's file/line/source echo; called by both command lines' entry points."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
