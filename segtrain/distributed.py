"""segtrain on several processes (``torchrun`` or ``segtrain run --nproc N``): joining the process group,
rank guards, the exact reductions, and the launcher.

* :func:`init` joins the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on CUDA, each process on
  ``cuda:LOCAL_RANK``. Without that environment nothing happens and every helper below is the one-process
  identity (rank 0 of 1), so single-process runs take exactly the code paths they always took.
* Training (:func:`segtrain.engine.fit`): every process draws the same global batch of a step from
  :class:`~segtrain.sampling.StepBatches` and takes its share ``indices[rank::world]``; the loss is the
  sum over the process's pixels divided by the global count of valid (non-ignore) pixels times the world
  size, so DDP's gradient average is the gradient of one process's mean loss over the global batch.
* Evaluation: each process scores a disjoint shard of the samples (:func:`shard`) and the integer
  counters (confusion matrices, victim and changed-pixel counts, per-sample hits) are summed over the
  processes (:func:`reduce_metrics`), so distributed evaluation equals one process exactly.
* :func:`launch` is ``segtrain run --nproc N``: torchrun's own launcher (``torch.distributed.run``'s
  argument parser and elastic agent) in this process, with its log quiet and a failure of any rank
  reported as one line naming the rank and the cause (:func:`rank_main` in each rank records it).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import SegTrainError

#: the folder where ranks started by :func:`launch` record why they failed (one JSON file per rank)
FAILURE_DIR_ENV = "SEGTRAIN_FAILURE_DIR"
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: under plain torchrun, how long a rank that failed on something other than a user error waits before
#: printing, so that torchrun can stop it first when a peer's failure was the cause (1 s was too short at
#: load 17 on 2 cores)
PEER_GRACE_S = 5.0


def launched() -> bool:
    """This process was started by torchrun (or anything that sets its environment)."""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def active() -> bool:
    """A process group is initialised: fit wraps the model in DDP and the metrics are reduced."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes (run folder, logs, metrics) and prints progress."""
    return rank() == 0


def env_rank() -> int:
    """The rank torchrun gave this process (0 when not launched by it), readable before :func:`init`."""
    return int(os.environ.get("RANK", 0)) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def local_device(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA run under torchrun (one GPU per process), ``device`` otherwise."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def init(device: torch.device) -> bool:
    """Join torchrun's process group if this process was launched by it and has not joined yet: nccl
    when the run is on CUDA (``cuda:LOCAL_RANK`` becomes the current device), gloo otherwise. Returns
    whether a process group is active."""
    if active() or not launched():
        return active()
    if device.type == "cuda":
        lr = int(os.environ["LOCAL_RANK"])
        if lr >= torch.cuda.device_count():
            raise SegTrainError(f"LOCAL_RANK {lr} but this node has {torch.cuda.device_count()} CUDA device(s); "
                                f"start at most {torch.cuda.device_count()} processes per node (--nproc)")
        torch.cuda.set_device(lr)
        dist.init_process_group("nccl", device_id=torch.device("cuda", lr))
    else:
        dist.init_process_group("gloo")
    return True


def check_batch(batch: int, nproc: int) -> None:
    """The global batch must split into equal shares of at least 2 samples (BatchNorm in the pooling
    branches needs 2 per process).

    Raises:
        SegTrainError: one line naming the batch, the process count and batches that would do.
    """
    if nproc > 1 and (batch % nproc or batch // nproc < 2):
        ok = nproc * max(2, -(-batch // nproc))
        raise SegTrainError(f"--batch {batch} does not split over {nproc} processes into equal shares of at least 2 "
                            f"samples; use a multiple of {nproc} that is at least {2 * nproc} (e.g. --batch {ok})")


def check_sync_bn(sync_bn: bool, device: torch.device, nproc: int) -> None:
    """``--sync-bn`` on several processes needs CUDA: SyncBatchNorm has no CPU kernel.

    Raises:
        SegTrainError: one line.
    """
    if sync_bn and nproc > 1 and device.type != "cuda":
        raise SegTrainError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel); leave it off on the "
                            "CPU, where each process then normalises with its own share of the batch")


def _comm_device() -> torch.device:
    """Where collectives run: nccl reduces CUDA tensors only, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes (a new tensor on ``t``'s device); ``t`` itself with one process."""
    if not active():
        return t
    dev = _comm_device()
    out = t.detach().to(dev, copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before each
    forward, so after a step the other ranks hold statistics of their own shares; evaluating (or
    returning) rank 0's model everywhere makes the sharded evaluation score the checkpoint's model."""
    if not active() or world() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def shard(dataset):
    """This process's disjoint share of a :class:`~segtrain.data.SegDataset` (samples ``rank::world``, a
    shallow copy); the dataset itself with one process."""
    if not active() or world() == 1:
        return dataset
    part = copy.copy(dataset)
    part.samples = list(dataset.samples)[rank()::world()]
    return part


def reduce_metrics(acc):
    """Sum a :class:`~segtrain.metrics.MetricAccumulator`'s counters over the processes, in place (int64,
    so the sums are exact), and merge the per-sample hits (the shards are disjoint). Returns ``acc``."""
    if not active() or world() == 1:
        return acc
    for name in ("cm", "cm_nv", "cm_t", "_hit", "_total", "_changed_hit", "_changed_total"):
        setattr(acc, name, all_reduce_sum(getattr(acc, name)))
    flags = all_reduce_sum(torch.tensor([int(acc.has_target_labels)], dtype=torch.int64))
    acc.has_target_labels = bool(flags.item())
    parts: list = [None] * world()
    dist.all_gather_object(parts, acc.per_sample)
    merged: dict = {}
    for p in parts:
        merged.update(p)
    acc.per_sample = merged
    return acc


# --- the ranks and the launcher ---------------------------------------------------------------------
def _cause(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an exception: a user error's message and exit code 2, anything else its
    type and first line, exit code 1."""
    from poisongen.errors import PoisonGenError

    if isinstance(exc, PoisonGenError):
        return " ".join(str(exc).split()), exc.exit_code
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 1


def rank_main(app, args: Sequence[str] | None = None) -> None:
    """Run the CLI ``app`` as one rank of a torchrun job. A failure is recorded for :func:`launch` (in
    ``$SEGTRAIN_FAILURE_DIR/rank-R.json``, printing nothing) or, under plain torchrun, printed as one line
    ``error: rank R: CAUSE``; the process exits with the command's exit code (a failed rank at once,
    without tearing anything down). A successful rank leaves the process group at the end."""
    import typer

    try:  # typer >= 0.2x carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException

    args = list(sys.argv[1:] if args is None else args)
    code, cause = 0, None
    try:
        group = typer.main.get_command(app)
        with group.make_context("segtrain", args) as ctx:
            # the invoke of the group's base class: a command's error reaches this function unprinted
            super(type(group), group).invoke(ctx)
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        cause, code = exc.format_message(), 2
    except Exception as exc:  # noqa: BLE001 - any failure of a rank ends the job with one line
        cause, code = _cause(exc)
    if cause is None:
        if active():
            dist.destroy_process_group()
        sys.exit(code)
    # A failed rank reports and leaves at once (no teardown of the group or the interpreter, which took
    # seconds under load): its peers' connections break at the moment torchrun sees the exit and stops them.
    r = int(os.environ.get("RANK", 0))
    folder = os.environ.get(FAILURE_DIR_ENV)
    if folder:
        rec = {"rank": r, "cause": cause, "exit_code": code, "time": time.time()}
        Path(folder, f"rank-{r}.json").write_text(json.dumps(rec))
    else:
        from poisongen.console import error_line

        if code != 2:
            # most likely a broken connection because a peer failed first: torchrun (which checks its
            # ranks every 0.1 s; seconds on a loaded machine) stops this rank meanwhile, and only the
            # peer's own line is printed
            time.sleep(PEER_GRACE_S)
        error_line(f"rank {r}: {cause}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _quiet_torchrun_log() -> None:
    """torchrun's agent logs every worker start, signal and failure; the launcher reports in one line."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            lg = logging.getLogger(name)
            lg.setLevel(logging.CRITICAL)
            lg.propagate = False


def root_cause(failures: dict, folder: Path, nproc: int) -> tuple[str, int]:
    """The one line and exit code of a failed job from torchrun's per-rank failures (``{rank:
    ProcessFailure}``) and the ranks' own records in ``folder``: a rank killed by a signal is the cause
    (its peers then fail on the broken connection; a signal other than the SIGTERM with which torchrun
    stops the survivors first); otherwise the earliest recorded failure."""
    records = {}
    for p in folder.glob("rank-*.json"):
        try:
            rec = json.loads(p.read_text())
            records[int(rec["rank"])] = rec
        except (ValueError, KeyError, OSError):
            continue
    def killed_line(r: int, f) -> tuple[str, int]:
        try:
            sig = signal.Signals(-f.exitcode).name
        except ValueError:
            sig = f"signal {-f.exitcode}"
        return f"rank {r} of {nproc} was killed by {sig}; the other ranks were stopped", 1

    killed = sorted(((getattr(f, "timestamp", 0), r, f) for r, f in failures.items()
                     if r not in records and getattr(f, "exitcode", 0) < 0), key=lambda x: x[:2])
    # torchrun stops the surviving ranks with SIGTERM: a rank killed by another signal is the cause, then a
    # rank's own record, and a SIGTERM only when nothing else is known
    for _, r, f in killed:
        if -f.exitcode != signal.SIGTERM:
            return killed_line(r, f)
    if records:
        rec = min(records.values(), key=lambda x: (x["time"], x["rank"]))
        return f"rank {rec['rank']} of {nproc} failed: {rec['cause']}", int(rec["exit_code"]) or 1
    if killed:
        return killed_line(killed[0][1], killed[0][2])
    r, f = min(failures.items()) if failures else (0, None)
    code = getattr(f, "exitcode", 1)
    return f"rank {r} of {nproc} exited with code {code} without saying why", 1


def launch(nproc: int, args: Sequence[str]) -> int:
    """``python -m torch.distributed.run --standalone --nproc_per_node NPROC -m segtrain run ARGS``: torchrun's
    own ``run`` (argument parser, rendezvous, elastic agent) in this process. Returns 0 when every rank
    succeeded.

    Raises:
        SegTrainError: one line for the first failed rank (exit code 2 for a user error in the rank, 1 for
            anything else); every other rank has been stopped by then.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    with tempfile.TemporaryDirectory(prefix="segtrain-ranks-") as tmp:
        # LOGLEVEL: the level torchrun's loggers take when they are created (torch's elastic logging)
        saved = {k: os.environ.get(k) for k in (FAILURE_DIR_ENV, "LOGLEVEL")}
        os.environ.update({FAILURE_DIR_ENV: tmp, "LOGLEVEL": "CRITICAL"})
        _quiet_torchrun_log()
        try:
            torchrun(parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "segtrain", "run", *args]))
        except ChildFailedError as exc:
            line, code = root_cause(exc.failures, Path(tmp), nproc)
            err = SegTrainError(line)
            err.exit_code = code
            raise err from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return 0
