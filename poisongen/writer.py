"""Write the poisoned copy: mirror the source layout into a temp dir beside ``--out``, then rename.

Nothing is ever written into the source (``--scale``: :func:`rescale_tree` writes the rescaled tree).
A failed or killed run leaves no ``--out``; a temp dir left by
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
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .parallel import delayed, parallel
from .rescale import check_scale, rescale_bytes

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


def rescale_file(
    src_root: Path, dst_root: Path, rel: str, kind: str, scale: float, jpeg_quality: int, link: str
) -> tuple[str, str, str]:
    """Rescale (or copy/link, per ``link``) ``src_root/rel`` to ``dst_root/rel``; return
    ``(rel, sha256 of the source, sha256 of the output)``."""
    src, dst = src_root / rel, dst_root / rel
    data = src.read_bytes()
    src_sha = hashlib.sha256(data).hexdigest()
    new = rescale_bytes(data, rel, kind, scale, jpeg_quality)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if new is not None:
        dst.write_bytes(new)
        return rel, src_sha, hashlib.sha256(new).hexdigest()
    if link == "hardlink":
        os.link(src, dst)
    elif link == "symlink":
        os.symlink(src.resolve(), dst)
    else:
        dst.write_bytes(data)
    return rel, src_sha, src_sha


# --- --scale: the whole tree rescaled ---------------------------------------------------------------
@dataclass
class RescaledTree:
    """What :func:`rescale_tree` wrote: sha256 per file of the source and of the output, and which
    files were rewritten (the others are copies)."""

    source_files: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)


def _batch(src_root, dst_root, items, scale, jpeg_quality, link) -> list[tuple[str, str, str]]:
    import cv2

    cv2.setNumThreads(1)  # the parallelism is across files; OpenCV's own threads would oversubscribe
    return [rescale_file(src_root, dst_root, rel, kind, scale, jpeg_quality, link) for rel, kind in items]


def rescale_tree(
    src_root: Path,
    file_kind: Callable[[str], str],
    files: list[str],
    dst_root: Path,
    scale: float,
    jpeg_quality: int,
    link: str = "copy",
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> RescaledTree:
    """Write every file of ``files`` (relative paths under ``src_root``) rescaled into ``dst_root``;
    ``file_kind`` is the layout's (``Layout.file_kind``). Every file's kind is decided before anything is
    written, so an unknown image fails early."""
    check_scale(scale)
    kinds = [(rel, file_kind(rel)) for rel in files]
    # files in batches of similar work, so that process start-up and pickling stay small
    chunks = [kinds[i : i + 16] for i in range(0, len(kinds), 16)]
    results = parallel(jobs, return_as="generator")(
        delayed(_batch)(src_root, dst_root, chunk, scale, jpeg_quality, link) for chunk in chunks
    )
    tree = RescaledTree()
    for chunk in results:
        for rel, src_sha, out_sha in chunk:
            tree.source_files[rel] = src_sha
            tree.files[rel] = out_sha
            if src_sha != out_sha:
                tree.rewritten.append(rel)
        if progress:
            progress(len(chunk))
    tree.rewritten.sort()
    return tree
