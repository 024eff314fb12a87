"""Shared fixtures. Tiny datasets of each layout are built on disk in tmp_path by tests/builders.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: to show a source is left untouched."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def run_cli():
    """Invoke a CLI app in-process: ``run_cli(app, [args])`` -> click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def _run(app, args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return _run


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A tiny synthetic Cityscapes-layout dataset (24 train, 8 val, 64x128) shared read-only by the
    integrity and bad-input tests; its hashes are checked again at the end of the session."""
    from poisongen.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate(root, train=24, val=8, size=(64, 128), seed=3, jobs=1)
    before = tree_hashes(root)
    yield root
    assert tree_hashes(root) == before, "a command modified the source dataset"
