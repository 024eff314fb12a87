"""The one place poisongen creates joblib ``Parallel`` runs and picks their backend.

Every parallel map in poisongen (planning, poisoning, verifying, rescaling, generating the synthetic
scenes, ``info --check``) goes through :func:`parallel`. The backend is ``loky`` (worker processes on this
machine) unless a command runs inside :func:`backend` with ``"dask"``: then every map goes to the workers of
a ``dask.distributed`` cluster through joblib's ``dask`` backend. Results never depend on the backend or
the worker count: every task is a pure function of its arguments.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from joblib import Parallel, delayed, parallel_config

from .errors import ConfigError, PoisonGenError, choices

__all__ = ["BACKENDS", "DaskSession", "backend", "check_workers_see", "default_jobs", "delayed", "end_workers",
           "parallel", "scratch_dir", "session"]

#: backends a run may ask for; "loky" = worker processes on this machine, "dask" = a dask.distributed cluster
BACKENDS = ("loky", "dask")
#: seconds to wait for a ``--scheduler`` to answer before giving up with one line
CONNECT_TIMEOUT = 10.0
#: seconds a failed run waits for tasks still running on dask workers before removing its temp dir
DRAIN_TIMEOUT = 120.0
SCHEDULER_RE = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")
INSTALL_DASK = "pip install .[dask]"


def default_jobs() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it): ``--jobs 0``."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass
class DaskSession:
    """A connected ``dask.distributed`` client (and the ``LocalCluster`` started for it, if any)."""

    client: object
    cluster: object | None
    address: str

    def threads(self) -> int:
        """Worker threads of the cluster (its parallelism), at least 1."""
        return max(1, sum(self.client.nthreads().values()))


_session: DaskSession | None = None


def session() -> DaskSession | None:
    """The dask session of the command running now (inside :func:`backend`), else None."""
    return _session


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--backend dask needs dask.distributed, which is not installed: {INSTALL_DASK}") from None
    return distributed


def _connect(scheduler: str | None, jobs: int) -> DaskSession:
    distributed = _import_distributed()
    if scheduler is None:
        # no scheduler given: a cluster of local worker processes, one thread each (for trying the backend)
        cluster = distributed.LocalCluster(n_workers=jobs or default_jobs(), threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
        return DaskSession(distributed.Client(cluster, set_as_default=True), cluster, cluster.scheduler_address)
    if not SCHEDULER_RE.match(scheduler):
        raise ConfigError(f"--scheduler '{scheduler}' is not a dask scheduler address; give tcp://HOST:PORT")
    try:
        client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise PoisonGenError(f"cannot reach the dask scheduler at {scheduler} within {CONNECT_TIMEOUT:g} s "
                             f"({type(exc).__name__}); is 'dask scheduler' running there?") from None
    return DaskSession(client, None, scheduler)


@contextmanager
def backend(name: str = "loky", scheduler: str | None = None, jobs: int = 0):
    """Run the parallel maps inside on backend ``name``; yields the :class:`DaskSession` (or None).

    ``"dask"`` connects to ``scheduler`` (``tcp://HOST:PORT``), or without one starts a ``LocalCluster`` of
    ``jobs`` (0: :func:`default_jobs`) single-threaded worker processes on 127.0.0.1; it is closed at the end.

    Raises:
        ConfigError: unknown backend, ``--scheduler`` without dask, a malformed address, dask not installed.
        PoisonGenError: the scheduler cannot be reached.
    """
    global _session
    if name not in BACKENDS:
        raise ConfigError(f"unknown parallel backend '{name}'; valid are {choices(BACKENDS)}")
    if name == "loky":
        if scheduler is not None:
            raise ConfigError("--scheduler needs --backend dask")
        yield None
        return
    if _session is not None:
        raise ConfigError("a dask backend is already active in this process")
    _session = _connect(scheduler, jobs)
    try:
        yield _session
    finally:
        s, _session = _session, None
        s.client.close()
        if s.cluster is not None:
            s.cluster.close()


def _dask_errors() -> tuple[type[BaseException], ...]:
    from distributed import CancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return KilledWorker, CommClosedError, CancelledError


class _DaskRun:
    """A joblib ``Parallel`` on the dask backend whose cluster failures (a worker that died, a lost
    scheduler) come out as one :class:`PoisonGenError` line."""

    def __init__(self, par: Parallel, address: str):
        self._par, self._address = par, address

    def __getattr__(self, name):
        return getattr(self._par, name)

    def _failed(self, exc: BaseException) -> PoisonGenError:
        name = type(exc).__name__
        if name == "KilledWorker":
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            return PoisonGenError(
                f"a dask worker died while running a task ({exc.allowed_failures + 1} worker(s) died running it, "
                f"the last {last}; scheduler {self._address}); the run stopped, see that worker's log")
        what = {"CommClosedError": "the connection to a dask worker or the scheduler was lost",
                "CancelledError": "the dask cluster cancelled a task"}.get(name, name)
        detail = " ".join(str(exc).split())[:200]
        return PoisonGenError(f"{what} (scheduler {self._address}): {detail}; the run stopped")

    def __call__(self, tasks):
        errors = _dask_errors()
        try:
            result = self._par(tasks)
        except errors as exc:
            raise self._failed(exc) from None
        if self._par.return_as == "list":
            return result
        return self._guarded(result, errors)

    def _guarded(self, gen, errors):
        try:
            yield from gen
        except errors as exc:
            raise self._failed(exc) from None


def _dask_backend():
    """joblib's dask backend, told of tasks that fail outside the task itself.

    joblib 1.6's ``DaskDistributedBackend`` hands a failed dask future's exception (``KilledWorker``: the
    task's workers died) to its own future only, never to ``Parallel``'s completion callback, so
    ``Parallel`` waits for that task forever; here the callback is also given the exception, which
    ``Parallel`` then raises as it raises a task's own error. An aborted run (a failed task, Ctrl-C)
    cancels its dask tasks not yet run, which joblib leaves to run on. And a cluster of one worker thread
    (or one left while another restarts) is never taken for ``n_jobs=1``, which would run the tasks in
    this process instead of on the cluster."""
    from joblib._dask import DaskDistributedBackend

    class Backend(DaskDistributedBackend):
        def submit(self, func, callback=None):
            future = super().submit(func, callback)
            if callback is not None:
                def failed(f):
                    if not f.cancelled() and f.exception() is not None:
                        callback(f.exception())

                future.add_done_callback(failed)
            return future

        def effective_n_jobs(self, n_jobs):
            return max(2, super().effective_n_jobs(n_jobs))

        def abort_everything(self, ensure_ready=True):
            pending = list(self._results)
            if pending:
                self.client.cancel(pending)
            super().abort_everything(ensure_ready)

    return Backend()


def parallel(jobs: int, *, return_as: str = "list", backend: str = "loky") -> Parallel:
    """A joblib ``Parallel`` over ``jobs`` workers: ``backend`` when ``jobs > 1``, else in this process.
    Inside :func:`backend` ``("dask", ...)`` every map runs on the cluster's workers whatever ``jobs``.

    Args:
        jobs: worker count (>= 1; the CLIs turn ``--jobs 0`` into the core count first).
        return_as: ``"list"`` or ``"generator"`` (results in task order as they complete).
        backend: ``"loky"`` (the dask backend is chosen with :func:`backend`, for a whole command).

    Raises:
        ConfigError: unknown backend.
    """
    if backend not in BACKENDS or backend == "dask":
        raise ConfigError(f"unknown parallel backend '{backend}'; valid are {{loky}} (dask: parallel.backend)")
    if _session is not None:
        with parallel_config(backend=_dask_backend()):
            return _DaskRun(Parallel(n_jobs=-1, return_as=return_as), _session.address)
    return Parallel(n_jobs=jobs, backend=backend if jobs > 1 else "sequential", return_as=return_as)


def _sees(folder: str | None, token_name: str, token: str, files: list[str]) -> str | None:
    """On a worker: why it cannot use ``folder`` (read the token back, write beside it) or see ``files``."""
    if folder is not None:
        try:
            if Path(folder, token_name).read_text() != token:
                return f"finds another check file in the staging folder {folder} (not the same folder)"
            probe = Path(folder, f"{token_name}.{os.getpid()}.{uuid.uuid4().hex}")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"cannot use the staging folder {folder} ({exc.strerror or type(exc).__name__})"
    for f in files:
        if not os.path.isfile(f):
            return f"cannot see the file {f}"
    return None


def check_workers_see(folder: Path | None, *files: Path | None) -> None:
    """With the dask backend: every worker must read back a token file written in ``folder`` (the staging
    folder; None: no folder to write) and see each of ``files`` (e.g. a source image); no-op otherwise.
    Checked before any work is sent.

    Raises:
        PoisonGenError: no workers, or the first worker that cannot (named, with the path).
    """
    if _session is None:
        return
    paths = [str(Path(f).resolve()) for f in files if f is not None]
    name, token = f".poisongen-workers-check-{uuid.uuid4().hex}", uuid.uuid4().hex
    where = str(Path(folder).resolve()) if folder is not None else None
    if where is not None:
        Path(where, name).write_text(token)
    try:
        answers = _session.client.run(_sees, where, name, token, paths)
    finally:
        if where is not None:
            Path(where, name).unlink(missing_ok=True)
    if not answers:
        raise PoisonGenError(f"the dask scheduler at {_session.address} has no workers")
    for worker, problem in sorted(answers.items()):
        if problem is not None:
            raise PoisonGenError(f"dask worker {worker} {problem}: --out and the source must be on a filesystem "
                                 "every worker mounts at the same path; nothing written")


def scratch_dir(near: Path) -> Path | None:
    """Where a temp dir the workers write into goes: beside ``near`` on the dask backend (a filesystem they
    share), else the system's temp folder (None)."""
    return Path(near).resolve().parent if _session is not None else None


def _executing(dask_worker=None) -> int:
    return len(getattr(dask_worker.state, "executing", ())) if dask_worker is not None else 0


def _drain(s: DaskSession) -> None:
    """Wait (at most :data:`DRAIN_TIMEOUT`) until no dask worker is still running a task: cancelled tasks
    keep running, and one of them could write into a temp dir that is about to be removed."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if not any(s.client.run(_executing).values()):
                return
        except Exception:  # noqa: BLE001 - the cluster itself is failing: nothing more to wait for
            return
        time.sleep(0.1)


def end_workers() -> None:
    """End what a failed or terminated run started: joblib's reusable loky worker processes (they must not
    outlive it holding the caller's pipes), and on the dask backend wait until the workers are idle."""
    if _session is not None:
        _drain(_session)
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib without loky
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)
