"""poisongen.writer: --out checks, the staging dir and its atomic rename, copying/linking with hashes."""

import hashlib
import os
import threading

import pytest

from poisongen.errors import ConfigError
from poisongen.writer import check_out, mirror, staging


def test_check_out_refuses_the_source_and_a_non_empty_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    cases = ((src, "inside the source"), (src / "x", "inside the source"), (tmp_path, "contains the source"))
    for bad, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            check_out(src, bad, overwrite=True)
    out = tmp_path / "out"
    check_out(src, out, overwrite=False)  # absent: fine
    out.mkdir()
    check_out(src, out, overwrite=False)  # empty: fine
    (out / "keep").write_text("k")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        check_out(src, out, overwrite=False)
    check_out(src, out, overwrite=True)


def test_staging_renames_on_success_and_removes_on_failure(tmp_path):
    out = tmp_path / "out"
    with staging(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".out.poisongen-tmp-{os.getpid()}"
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError), staging(out) as tmp:
        (tmp / "g").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "f").read_text() == "new"
    with staging(out) as tmp:  # replacing an existing --out
        (tmp / "h").write_text("h")
    assert sorted(p.name for p in out.iterdir()) == ["h"]


def test_staging_removes_the_temp_dir_of_a_dead_run(tmp_path):
    stale = tmp_path / ".out.poisongen-tmp-999999999"
    stale.mkdir()
    other = tmp_path / ".other.poisongen-tmp-999999999"  # another --out's: left alone
    other.mkdir()
    with staging(tmp_path / "out"):
        pass
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("link", ["copy", "hardlink", "symlink"])
def test_mirror_copies_links_and_hashes(tmp_path, link):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.bin").write_bytes(b"abc")
    (src / "b.bin").write_bytes(b"")
    got = mirror(src, dst, ["d/a.bin", "b.bin"], link, True, 2)
    assert got == {"d/a.bin": hashlib.sha256(b"abc").hexdigest(), "b.bin": hashlib.sha256(b"").hexdigest()}
    assert (dst / "d" / "a.bin").read_bytes() == b"abc"
    assert (dst / "d" / "a.bin").is_symlink() == (link == "symlink")
    if link == "hardlink":
        assert os.stat(dst / "b.bin").st_ino == os.stat(src / "b.bin").st_ino
    assert mirror(src, tmp_path / "dst2", ["b.bin"], link, False, 1) == {"b.bin": None}


def test_mirror_stops_before_the_files_not_started(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    stop = threading.Event()
    stop.set()
    assert mirror(src, tmp_path / "dst", ["a"], "copy", True, 1, stop=stop) == {"a": None}
    assert not (tmp_path / "dst" / "a").exists()
