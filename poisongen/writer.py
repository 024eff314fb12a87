"""Write the poisoned copy: mirror the source layout into a temp dir beside ``--out``, then rename.

Nothing is ever written into the source. A failed or killed run leaves no ``--out``; a temp dir left by
a killed process is removed by the next run. Unchanged files are copied, hard-linked or symlinked,
hashed on the way (threads: hashing and copying release the GIL).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

TMP_RE = re.compile(r"^\.(?P<name>.+)\.poisongen-tmp-(?P<pid>\d+)$")


def check_out(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse ``--out`` equal to/inside the source (or containing it), and a non-empty one without
    ``--overwrite``."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise ConfigError(f"--out {out} is inside the source dataset {src}; choose a folder outside it")
    if o in s.parents:
        raise ConfigError(f"--out {out} contains the source dataset {src}; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staging(out: Path):
    """Yield a fresh temp dir beside ``out``; on success rename it to ``out`` (replacing it), on any
    exception (KeyboardInterrupt included) remove it."""
    out = Path(out)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.iterdir():  # left by a killed run (SIGKILL cannot clean up after itself)
        m = TMP_RE.match(stale.name)
        if m and m["name"] == out.name and not _pid_alive(int(m["pid"])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{out.name}.poisongen-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:  # mkdir inside: an interrupt right after it must still remove the dir
        tmp.mkdir()
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = parent / out.name
    if final.exists():
        trash = parent / f".{out.name}.poisongen-old-{os.getpid()}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def _copy_one(src_root: Path, dst_root: Path, rel: str, link: str, hash_files: bool) -> str | None:
    src, dst = src_root / rel, dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link == "copy":
        if not hash_files:
            shutil.copyfile(src, dst)
            return None
        h = hashlib.sha256()
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            while block := fi.read(1 << 22):
                h.update(block)
                fo.write(block)
        return h.hexdigest()
    if link == "hardlink":
        os.link(src, dst)
    else:
        os.symlink(src.resolve(), dst)
    if not hash_files:
        return None
    from .codecs import sha256_file

    return sha256_file(src)


def mirror(
    src_root: Path,
    dst_root: Path,
    files: Iterable[str],
    link: str,
    hash_files: bool,
    threads: int,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, str | None]:
    """Copy/link ``files`` from ``src_root`` into ``dst_root``; return path -> sha256 (or None).
    Once ``stop`` is set, the files not yet started are skipped (the result is then incomplete)."""
    files = list(files)
    out: dict[str, str | None] = {}

    def one(rel: str) -> str | None:
        if stop is not None and stop.is_set():
            return None
        return _copy_one(src_root, dst_root, rel, link, hash_files)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for rel, digest in zip(files, pool.map(one, files), strict=True):
            out[rel] = digest
            if progress:
                progress(1)
    return out
