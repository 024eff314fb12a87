"""Checkpoints: atomic save, checked load, the model of a checkpoint, and the state of exact resume.

A checkpoint (``last.pt``) is a dict: ``model`` (state dict), ``optimizer``, ``scaler``, ``step``,
``sampler`` (the position of :class:`~segtrain.sampling.StepBatches`), ``rng`` (the main process's torch /
CUDA / NumPy / Python generator states), ``config`` (:meth:`TrainConfig.to_dict`), ``num_classes``,
``class_names``, ``dataset`` (class table) and ``total_iters``. It is read with ``weights_only=True`` (plus
the NumPy types of the RNG state), so loading a file never runs code from it.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

CKPT = "last.pt"
#: what every segtrain checkpoint holds; resuming needs ``step`` too
REQUIRED = ("model", "config", "num_classes")


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically: a temp file beside it, then a rename, so a killed run
    leaves the previous checkpoint (or none), never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _numpy_globals() -> list:
    """The NumPy types pickled inside ``np.random.get_state()`` (an ndarray of uint32), allowed on load."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)]
    return found


#: the boilerplate lines of torch's weights-only refusal, around the one line that says what was refused
_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation of torch.load")


def _load_failure(exc: Exception) -> str:
    """The reason torch gives for an unreadable file, in a few words. A weights-only refusal (an opcode, or
    a global such as ``posix.system`` the file would run) is named on a line of its own between torch's
    boilerplate; other errors on their first line."""
    text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith(_TORCH_BOILERPLATE[0]):
        text = text.split("WeightsUnpickler error:", 1)[-1]
        reasons = [ln.strip() for ln in text.splitlines()
                   if ln.strip() and not ln.strip().startswith(_TORCH_BOILERPLATE)]
        return "refused by the weights-only loader: " + (reasons[0][:160] if reasons else "unsupported content")
    return lines[0][:160] if lines else type(exc).__name__


def load(path: str | Path) -> dict:
    """Read and check a checkpoint (a file, or a run directory holding ``last.pt``).

    Raises:
        CheckpointError: no such file, not a torch file, truncated, or not a segtrain checkpoint (one line).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CKPT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # a pickle of another protocol makes torch warn on stderr; the error below says what is wrong
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        reason = _load_failure(exc)
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, or not a file written by torch.save): "
                              f"{type(exc).__name__}: {reason}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a segtrain checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a segtrain checkpoint: missing {', '.join(missing)} (a segtrain "
                              f"checkpoint holds {', '.join(REQUIRED)})")
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path} is not a segtrain checkpoint: 'model' and 'config' must be dicts")
    if not isinstance(ckpt["num_classes"], int) or ckpt["num_classes"] < 1:
        raise CheckpointError(f"{path} is not a segtrain checkpoint: num_classes {ckpt['num_classes']!r}")
    return ckpt


def check_classes(ckpt: dict, names: Sequence[str], where: str) -> None:
    """The checkpoint's class table must be ``names`` (count, and names where the checkpoint records them).

    Raises:
        CheckpointError: another number of classes, or the same number under other names.
    """
    n = int(ckpt["num_classes"])
    if n != len(names):
        raise CheckpointError(f"checkpoint was trained for {n} classes but {where} has {len(names)}; use a dataset "
                              f"with the same class table")
    theirs = ckpt.get("class_names")
    if theirs is not None and list(theirs) != list(names):
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(theirs, names, strict=True)) if a != b]
        shown = ", ".join(f"{i}: '{a}' vs '{b}'" for i, a, b in diff[:3])
        raise CheckpointError(f"checkpoint's class table differs from {where}'s in {len(diff)} class(es) ({shown}); "
                              f"use a dataset with the same class table")


def state_mismatch(own: dict, state: dict, shown: int = 3) -> str | None:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``own``: the counts
    of missing, unexpected and wrongly shaped keys with up to ``shown`` of each (``...`` when more), in one
    line; None when it fits."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(v)} {what} ({', '.join(v[:shown])}{', ...' if len(v) > shown else ''})" for what, v in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", shape)) if v]
    return "; ".join(parts) or None


def load_model_state(model: nn.Module, state: dict, where: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming up to three bad keys."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{where} does not fit the {type(model).__name__} model: {problem}")
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    """Build the checkpoint's model from the registry (arch/backbone/output stride/aux of its config)
    and load its weights."""
    from .models import build_model

    c = ckpt["config"]
    model = build_model(c["arch"], int(ckpt["num_classes"]), c.get("backbone"), c.get("output_stride"),
                        bool(c.get("aux", True)))
    load_model_state(model, ckpt["model"], "checkpoint")
    return model.to(device)


# --- the process's generators (exact resume; evaluations during training) --------------------------
def rng_state(cuda: bool) -> dict:
    """The main process's generators (dropout draws from torch's)."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}  # noqa: NPY002
    if cuda:
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, cuda: bool) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])  # noqa: NPY002
    random.setstate(st["python"])
    if cuda and "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


@contextmanager
def preserved_rng(cuda: bool):
    """Run a block (an evaluation during training) and put every generator of the process back."""
    st = rng_state(cuda)
    try:
        yield
    finally:
        set_rng_state(st, cuda)
