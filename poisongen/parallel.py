"""The one place poisongen creates joblib ``Parallel`` runs and picks their backend.

Every parallel map in poisongen (planning, poisoning, verifying, rescaling, generating the synthetic
scenes, ``info --check``) goes through :func:`parallel`, so that another backend (joblib's ``dask``
against a ``dask.distributed`` scheduler, for many machines) is added here and nowhere else. Results never
depend on the backend or the worker count: every task is a pure function of its arguments.
"""

from __future__ import annotations

import os

from joblib import Parallel, delayed

from .errors import ConfigError, choices

__all__ = ["BACKENDS", "default_jobs", "delayed", "end_workers", "parallel"]

#: backends a run may ask for; "loky" = worker processes on this machine
BACKENDS = ("loky",)


def default_jobs() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it): ``--jobs 0``."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parallel(jobs: int, *, return_as: str = "list", backend: str = "loky") -> Parallel:
    """A joblib ``Parallel`` over ``jobs`` workers: ``backend`` when ``jobs > 1``, else in this process.

    Args:
        jobs: worker count (>= 1; the CLIs turn ``--jobs 0`` into the core count first).
        return_as: ``"list"`` or ``"generator"`` (results in task order as they complete).
        backend: one of :data:`BACKENDS`.

    Raises:
        ConfigError: unknown backend.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown parallel backend '{backend}'; valid are {choices(BACKENDS)}")
    return Parallel(n_jobs=jobs, backend=backend if jobs > 1 else "sequential", return_as=return_as)


def end_workers() -> None:
    """Kill joblib's reusable loky worker processes (if any were started): after a failed or terminated run
    they must not outlive it holding the caller's pipes."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib without loky
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)
