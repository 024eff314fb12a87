"""``segtrain run --nproc N``: the command line of this ``run`` again, without ``--nproc``, for torchrun.

The launcher itself is :func:`segtrain.distributed.launch`; this module only turns the parsed options
back into arguments (those the user gave, as click parsed them), so the ranks parse exactly what the
launcher checked.
"""

from __future__ import annotations

from . import distributed
from .errors import SegTrainError


def given_args(ctx, drop: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The arguments of ``ctx``'s command that came from the command line, in declaration order, as a
    list click parses back to the same values (``drop``: parameter names left out)."""
    out: list[str] = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if p.name in drop or getattr(source, "name", None) != "COMMANDLINE":
            continue
        value = ctx.params[p.name]
        if p.param_type_name == "argument":
            out += [str(v) for v in value] if p.multiple or p.nargs != 1 else [str(value)]
        elif p.is_flag:
            if p.secondary_opts:
                out.append(p.opts[0] if value else p.secondary_opts[0])
            elif value:
                out.append(p.opts[0])
        elif p.multiple:
            for v in value:
                out += [p.opts[0], str(v)]
        else:
            out += [p.opts[0], str(value)]
    return out


def run_on_processes(ctx, nproc: int, batch: int, sync_bn: bool = False, device: str = "auto") -> None:
    """Check ``--nproc``/``--batch``/``--sync-bn`` and run this ``segtrain run`` on ``nproc`` processes of
    this node.

    Raises:
        SegTrainError: ``--nproc`` below 1, a batch that does not split over the processes, ``--sync-bn``
            without CUDA, or the first failed rank (one line each)."""
    from .engine import resolve_device

    if nproc < 1:
        raise SegTrainError(f"--nproc {nproc} is not allowed; it must be a whole number >= 1 (processes on this "
                            f"node, one per GPU on CUDA)")
    distributed.check_batch(batch, nproc)
    distributed.check_sync_bn(sync_bn, resolve_device(device), nproc)
    distributed.launch(nproc, given_args(ctx))
