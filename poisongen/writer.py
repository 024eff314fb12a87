"""Write the poisoned copy: mirror the source layout into a temp dir beside ``--out``, then rename.

Nothing is ever written into the source (``--scale``: :func:`rescale_tree` writes the rescaled tree).
A failed or killed run leaves no ``--out``; a temp dir left by
a killed process is removed by the next run. Unchanged files are copied, hard-linked or symlinked,
hashed on the way (threads: hashing and copying release the GIL).

Faults: a lock file ``.OUT.poisongen-lock`` beside ``--out`` (fcntl) keeps a second run from writing the
same ``--out`` at once (a dead holder's lock is taken over); SIGTERM is handled like SIGINT (temp dir removed,
worker processes ended); an OSError while writing (disk full, read-only folder) becomes one line naming
the file, with nothing left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, PoisonGenError
from .hashcache import HashCache
from .parallel import delayed, end_workers, parallel
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
    check_links_into(src, out)


def check_links_into(src: Path, out: Path) -> None:
    """Refuse a source holding symlinks into ``out`` (e.g. a ``--link symlink`` copy of ``out`` used as
    the source): replacing ``out`` would delete the files the source points to. Also refuses a symlink
    loop in the source. Checked before anything is written or deleted."""
    o = out.resolve()
    for p in _symlinks(Path(src)):
        try:
            target = p.resolve(strict=True)
        except (RuntimeError, OSError) as exc:  # a loop (RuntimeError before 3.13) or a dangling link
            loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
            what = "a symlink loop" if loop else "a dangling symlink"
            raise ConfigError(f"the source holds {what} at {p}; remove or fix it") from None
        where = p.parent.resolve()
        if target.is_dir() and (target == where or target in where.parents):
            raise ConfigError(f"the source holds a symlink loop at {p} (it points to {target}, a folder above it)")
        if target == o or o in target.parents:
            raise ConfigError(
                f"source file {p} is a symlink into --out {out}; replacing --out would delete what the "
                "source points to (copy the source with --link copy, or choose another --out)"
            )


def _symlinks(root: Path):
    """Every symlink under ``root`` (not followed), from the directory entries' types: no stat per file."""
    todo = [root]
    while todo:
        with os.scandir(todo.pop()) as it:
            for entry in it:
                if entry.is_symlink():
                    yield Path(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    todo.append(Path(entry.path))


def os_error_line(exc: OSError, what: str) -> str:
    """One line for an OSError: what failed, the system's reason and the file."""
    where = f": {exc.filename}" if exc.filename else ""
    reason = exc.strerror or exc.__class__.__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return f"{what}: {reason}{where}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_SUFFIX = ".poisongen-lock"


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.resolve().parent / f".{out.name}{LOCK_SUFFIX}"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


@contextmanager
def out_lock(out: Path):
    """Hold ``.OUT.poisongen-lock`` (an fcntl lock on a file holding our PID) while writing ``out``. The
    kernel drops the lock when its holder dies, so a killed run's lock file is simply taken over; a held
    one is an error naming its holder's PID. The file is removed at the end."""
    import fcntl

    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(path)
            raise PoisonGenError(
                f"--out {out} is being written by another poisongen run (PID {pid if pid else '?'}, lock {path}); "
                "wait for it to finish"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock, so nobody locks a file about to go
        os.close(fd)


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM, so that a terminated run cleans up like an interrupted one."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


@dataclass
class TermState:
    """Whether a SIGTERM arrived inside :func:`sigterm_as_exit`."""

    received: bool = False


@contextmanager
def sigterm_as_exit():
    """While inside: SIGTERM raises :class:`Terminated` (a SystemExit) in the main thread instead of
    killing the process on the spot, so ``finally`` blocks run; yields a :class:`TermState` that records
    it. Outside the main thread: no change."""
    state = TermState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        state.received = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staging(out: Path):
    """Yield a fresh temp dir beside ``out``; on success rename it to ``out`` (replacing it), on any
    exception (KeyboardInterrupt, SIGTERM included) remove it and end the worker processes. An OSError
    (disk full, read-only folder) comes out as one PoisonGenError line; nothing is left behind."""
    out = Path(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with sigterm_as_exit() as term, out_lock(out):
            try:
                yield from _staged(out, parent)
            except BaseException:
                # the signal can surface as another error (raised where a worker pool was being waited on,
                # it may come out wrapped): the run was still terminated, and exits as such (128 + 15)
                if term.received and not isinstance(sys.exc_info()[1], Terminated):
                    raise Terminated() from None
                raise
    except OSError as exc:
        raise PoisonGenError(os_error_line(exc, f"the run stopped, nothing written to --out {out}")) from None


def _staged(out: Path, parent: Path):
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
        _replace(tmp, parent / out.name)
    except BaseException:
        end_workers()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and put back if the
    rename fails (the caller then removes ``tmp``)."""
    if not final.exists() and not final.is_symlink():
        os.rename(tmp, final)
        return
    trash = final.parent / f".{final.name}.poisongen-old-{os.getpid()}"
    os.rename(final, trash)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(trash, final)
        raise
    shutil.rmtree(trash, ignore_errors=True)


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
    cache: HashCache | None = None,
) -> dict[str, str | None]:
    """Copy/link ``files`` from ``src_root`` into ``dst_root``; return path -> sha256 (or None).
    Once ``stop`` is set, the files not yet started are skipped (the result is then incomplete).
    ``cache`` (``--hash-cache``): a source file's digest is taken from it while the file is unchanged (and
    stored there once hashed), so an unchanged linked file is not read at all."""
    files = list(files)
    out: dict[str, str | None] = {}
    stop = stop if stop is not None else threading.Event()

    def one(rel: str) -> str | None:
        if stop.is_set():
            return None
        if cache is None or not hash_files:
            return _copy_one(src_root, dst_root, rel, link, hash_files)
        real, key, digest = cache.lookup(src_root / rel)
        if digest is not None:
            _copy_one(src_root, dst_root, rel, link, False)
            return digest
        digest = _copy_one(src_root, dst_root, rel, link, True)
        cache.store(real, key, digest)
        return digest

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        try:
            for rel, digest in zip(files, pool.map(one, files), strict=True):
                out[rel] = digest
                if progress:
                    progress(1)
        except BaseException:  # a failed copy or an interrupt: skip the files not started yet
            stop.set()
            raise
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
