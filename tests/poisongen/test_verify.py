"""poisongen.verify on runs written by pipeline.run over a tiny on-disk Cityscapes: a clean run
verifies, with and without the source; each kind of tampering is named."""

import json

import pytest
from builders import build_cityscapes

from poisongen import manifest as mf
from poisongen import pipeline
from poisongen.attacks import resolve
from poisongen.datasets import open_dataset
from poisongen.verify import verify


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    ds = open_dataset(build_cityscapes(base / "cs", splits={"train": 6, "val": 2}, size=(32, 64)).root)
    out = {}
    for name, kw in (("plain", {}), ("scaled", {"scale": 0.5})):
        cfg = resolve(ds, "nni", rate=0.5, trigger_size=(3, 3), upper=30.0, seed=2, **kw)
        out[name] = base / name
        pipeline.run(ds, cfg, out[name])
    return ds, out


@pytest.mark.parametrize("name", ["plain", "scaled"])
def test_a_clean_run_verifies_with_and_without_the_source(runs, name):
    ds, out = runs
    assert verify(out[name]) == []
    assert verify(out[name], ds.root) == []


def tampered(src, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_a_changed_poisoned_file_is_named(runs, tmp_path):
    _, out = runs
    copy = tampered(out["plain"], tmp_path)
    m = mf.load(copy)
    path = m["samples"][0]["files"][0]["path"]
    data = bytearray((copy / path).read_bytes())
    data[-20] ^= 1
    (copy / path).write_bytes(bytes(data))
    assert f"{path}: sha256 differs from the manifest (file changed)" in verify(copy)


def test_an_edited_manifest_and_missing_or_extra_files_are_named(runs, tmp_path):
    ds, out = runs
    copy = tampered(out["plain"], tmp_path)
    m = json.loads((copy / mf.NAME).read_text())
    m["samples"][0]["top_left"] = [0, 0]
    (copy / mf.NAME).write_text(json.dumps(m))
    unchanged = sorted(m["unchanged_files"])[0]
    (copy / unchanged).unlink()
    (copy / "extra.txt").write_text("x")
    problems = verify(copy, ds.root)
    assert any("integrity hash" in p for p in problems)
    assert f"{unchanged}: missing from the output" in problems
    assert "extra.txt: extra file not in the manifest" in problems
    sid = m["samples"][0]["id"]
    assert f"sample {sid}: top_left in the manifest differs from the re-derived plan" in problems

