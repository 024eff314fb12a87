"""--hash-cache: source digests reused while a file's (real path, size, mtime_ns, inode) are unchanged;
a changed file is hashed again; a corrupt cache is ignored with a warning; verify never uses it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from poisongen import hashcache, pipeline
from poisongen.attacks import resolve
from poisongen.cli import app
from poisongen.datasets.cityscapes import Cityscapes
from poisongen.errors import ConfigError
from poisongen.verify import verify

PAST = 1_600_000_000 * 10**9  # files older than RACY_SECONDS: their digests may be cached


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from poisongen.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("cache-src") / "synthetic"
    generate(root, train=10, val=2, size=(64, 128), seed=7, jobs=1)
    return root


@pytest.fixture
def src(pristine, tmp_path):
    root = tmp_path / "src"
    shutil.copytree(pristine, root)
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(Path(dirpath) / f, ns=(PAST, PAST))
    return root


def run(src: Path, out: Path, cache_dir: Path | None, link: str = "hardlink"):
    ds = Cityscapes(src)
    cfg = resolve(ds, "nni", kind="train", rate=0.3, trigger_size=(5, 5), link=link)
    cache = hashcache.open_cache(cache_dir, ds.root) if cache_dir is not None else None
    manifest, _, _ = pipeline.run(ds, cfg, out, jobs=1, hash_cache=cache)
    manifest.pop("created_at")
    return manifest, cache


def an_unchanged_file(manifest: dict) -> str:
    return sorted(p for p in manifest["unchanged_files"] if p.endswith("_gtFine_color.png"))[0]


@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_a_cached_rerun_reads_no_unchanged_file_and_gives_the_same_manifest(src, tmp_path, link):
    plain, _ = run(src, tmp_path / "plain", None, link)
    first, cache1 = run(src, tmp_path / "first", tmp_path / "cache", link)
    again, cache2 = run(src, tmp_path / "again", tmp_path / "cache", link)
    assert first == plain and again == plain
    n = len(plain["unchanged_files"])
    assert (cache1.hits, cache1.misses) == (0, n)
    assert (cache2.hits, cache2.misses) == (n, 0)
    assert verify(tmp_path / "again", src) == []


def test_touching_or_rewriting_a_source_file_invalidates_its_entry(src, tmp_path):
    first, _ = run(src, tmp_path / "first", tmp_path / "cache")
    rel = an_unchanged_file(first)
    f = src / rel
    os.utime(f, ns=(PAST + 10**9, PAST + 10**9))  # touched: same bytes, new mtime
    touched, cache = run(src, tmp_path / "touched", tmp_path / "cache")
    assert cache.misses == 1 and touched == first
    # rewritten: other bytes of the same length, given the cached size and mtime; only the inode tells
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF  # a file nothing decodes (copied as is): any bytes do
    new = tmp_path / "new.png"
    new.write_bytes(bytes(data))
    st = f.stat()
    os.utime(new, ns=(st.st_mtime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_ino != st.st_ino
    rewritten, cache = run(src, tmp_path / "rewritten", tmp_path / "cache")
    assert cache.misses == 1
    assert rewritten["unchanged_files"][rel] == hashlib.sha256(bytes(data)).hexdigest()
    assert rewritten["unchanged_files"][rel] != first["unchanged_files"][rel]


def test_a_recently_modified_file_is_not_cached(src, tmp_path):
    rel = next(str(p.relative_to(src)) for p in (src / "leftImg8bit" / "val").rglob("*.png"))
    os.utime(src / rel)  # now: within the timestamp resolution a later write could go unseen
    _, cache = run(src, tmp_path / "first", tmp_path / "cache")
    _, cache = run(src, tmp_path / "again", tmp_path / "cache")
    assert cache.misses == 1


def test_verify_never_uses_the_cache_a_wrong_entry_is_caught(src, tmp_path):
    first, _ = run(src, tmp_path / "first", tmp_path / "cache")
    rel = an_unchanged_file(first)
    cache_file = next((tmp_path / "cache").glob("*.json"))
    data = json.loads(cache_file.read_text())
    data["files"][os.path.realpath(src / rel)][3] = "0" * 64  # a wrong digest, file unchanged
    cache_file.write_text(json.dumps(data))
    bad, _ = run(src, tmp_path / "bad", tmp_path / "cache")
    assert bad["unchanged_files"][rel] == "0" * 64  # the writer trusted the cache ...
    problems = verify(tmp_path / "bad", src)  # ... verify re-hashes and rejects it
    assert f"{rel}: sha256 differs from the manifest (file changed)" in problems


def test_verify_does_not_open_the_cache(run_cli, src, tmp_path, monkeypatch):
    run(src, tmp_path / "out", tmp_path / "cache")
    monkeypatch.setenv(hashcache.ENV, str(tmp_path / "cache"))

    def refuse(*a, **kw):
        raise AssertionError("verify opened the hash cache")

    monkeypatch.setattr(hashcache.HashCache, "__init__", refuse)
    r = run_cli(app, ["verify", tmp_path / "out", "--src", src])
    assert r.exit_code == 0 and "verified" in r.output


@pytest.mark.parametrize("garbage", ["{not json", '{"version": 1, "root": "/elsewhere", "files": {}}',
                                     '{"version": 1, "files": {"/x": [1, 2]}}'])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(src, tmp_path, garbage):
    plain, _ = run(src, tmp_path / "plain", None)
    c = hashcache.open_cache(tmp_path / "cache", src)
    c.path.parent.mkdir(parents=True)
    c.path.write_text(garbage)
    with pytest.warns(UserWarning, match="hash cache .* is corrupt"):
        again, cache = run(src, tmp_path / "again", tmp_path / "cache")
    assert again == plain and cache.hits == 0
    assert json.loads(c.path.read_text())["version"] == hashcache.VERSION  # rebuilt, valid again


def test_the_cache_cannot_live_inside_the_source(src):
    with pytest.raises(ConfigError, match="is inside the source dataset"):
        hashcache.open_cache(src / "cache", src)


def test_the_cli_takes_the_cache_from_the_option_or_the_environment(run_cli, src, tmp_path, monkeypatch):
    args = ["nni", "--src", src, "--rate", "0.3", "--trigger-size", "5", "--link", "hardlink", "-q", "--jobs", "1"]
    assert run_cli(app, [*args, "--out", tmp_path / "a", "--hash-cache", tmp_path / "c1"]).exit_code == 0
    assert len(list((tmp_path / "c1").glob("*.json"))) == 1
    monkeypatch.setenv(hashcache.ENV, str(tmp_path / "c2"))
    assert run_cli(app, [*args, "--out", tmp_path / "b"]).exit_code == 0
    assert len(list((tmp_path / "c2").glob("*.json"))) == 1
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert ma["command"] == mb["command"] and ma["unchanged_files"] == mb["unchanged_files"]


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hashcache.default_dir() == tmp_path / "poisongen"


def test_the_command_line_prints_a_corrupt_cache_warning_as_one_line(tiny_synth, tmp_path):
    """The console script shows a library warning as one 'warning: ...' line, no file/line/source echo."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    args = [sys.executable, "-c", "from poisongen.cli import main; main()", "nni", "--src", str(tiny_synth),
            "--rate", "0.1", "--link", "hardlink", "--hash-cache", str(cache), "-q", "--overwrite"]
    first = subprocess.run([*args, "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    for f in cache.iterdir():
        f.write_text("corrupt")
    r = subprocess.run([*args, "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "corrupt" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: hash cache "), r.stderr
    assert "UserWarning" not in r.stderr and "HashCache(" not in r.stderr
