"""segtrain.checkpoint: atomic save, checked load (weights_only, RNG states included), class-table and
state-dict checks, the model of a checkpoint, and RNG save/restore."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from segtrain import checkpoint
from segtrain.errors import CheckpointError, SegTrainError
from segtrain.models import build_model


def _payload(model=None) -> dict:
    model = model or torch.nn.Conv2d(3, 4, 1)
    return {"model": model.state_dict(), "config": {"arch": "pspnet", "backbone": "resnet18", "output_stride": 8,
                                                    "aux": True},
            "num_classes": 4, "class_names": ["a", "b", "c", "d"], "step": 3, "rng": checkpoint.rng_state(False)}


def test_save_is_atomic_and_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, _payload())
    good = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        checkpoint.save(path, {**_payload(), "bad": lambda: 0})  # cannot be pickled, fails half-way
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_load_round_trips_rng_states_under_weights_only(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    checkpoint.save(tmp_path / "last.pt", _payload())
    expect = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    ck = checkpoint.load(tmp_path)  # a run directory works too
    assert ck["step"] == 3 and isinstance(ck["rng"]["numpy"][1], np.ndarray)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002
    checkpoint.set_rng_state(ck["rng"], cuda=False)
    got = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    assert torch.equal(got[0], expect[0]) and got[1:] == expect[1:]


def test_load_refuses_what_is_no_segtrain_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "none.pt")
    torch.save({"model": {}, "config": {}, "num_classes": "19"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="num_classes '19'"):
        checkpoint.load(tmp_path / "c.pt")
    torch.save({"model": [], "config": {}, "num_classes": 19}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="must be dicts"):
        checkpoint.load(tmp_path / "c.pt")
    assert issubclass(CheckpointError, SegTrainError)


def test_check_classes_compares_count_and_names():
    ck = _payload()
    checkpoint.check_classes(ck, ["a", "b", "c", "d"], "data")
    checkpoint.check_classes({k: v for k, v in ck.items() if k != "class_names"}, list("wxyz"), "data")  # count only
    with pytest.raises(CheckpointError, match="trained for 4 classes but data has 3"):
        checkpoint.check_classes(ck, ["a", "b", "c"], "data")
    with pytest.raises(CheckpointError, match=r"differs from data's in 2 class\(es\) \(1: 'b' vs 'x', 3: 'd' vs 'y'\)"):
        checkpoint.check_classes(ck, ["a", "x", "c", "y"], "data")


def test_model_from_checkpoint_and_state_dict_mismatches():
    torch.manual_seed(0)
    model = build_model("pspnet", 4, "resnet18", 8)
    ck = {**_payload(model)}
    rebuilt = checkpoint.model_from_checkpoint(ck)
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    sd = dict(ck["model"])
    sd.pop("head.0.weight" if "head.0.weight" in sd else next(iter(sd)))
    sd["extra.weight"] = torch.zeros(1)
    fits = r"does not fit the PSPNet model: 1 missing .*; 1 unexpected \(extra.weight\)"
    with pytest.raises(CheckpointError, match=fits):
        checkpoint.model_from_checkpoint({**ck, "model": sd})


def test_preserved_rng_puts_every_generator_back():
    torch.manual_seed(1)
    ref = torch.get_rng_state()
    with checkpoint.preserved_rng(cuda=False):
        torch.rand(10)
        np.random.rand()  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), ref)


class _RunsCode:
    """A pickle payload that would run a command when unpickled (a malicious 'checkpoint')."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": _RunsCode(marker), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(tmp_path / "evil.pt")
    assert "weights-only loader" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
