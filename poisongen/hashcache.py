"""Opt-in cache of source files' sha256 (``--hash-cache DIR``), so that a rerun over a large source
(a grid poisons the same Cityscapes copy 20+ times) does not read every source byte again.

Like git's index: an entry is trusted only while the file's ``(size, mtime_ns, inode)`` are the ones it was
hashed with, for the same real path. It lives outside the source (one JSON file per source root under the
cache folder), is written atomically (temp file + rename), and a cache that cannot be read is ignored with
a warning and rebuilt, never trusted. Files modified less than :data:`RACY_SECONDS` before they were hashed
are not stored (they could change again within the filesystem's timestamp resolution, unseen). Only runs
that write a dataset use it; ``verify`` always re-hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from pathlib import Path

from .codecs import sha256_file

__all__ = ["ENV", "HashCache", "RACY_SECONDS", "default_dir", "open_cache"]

ENV = "POISONGEN_HASH_CACHE"
VERSION = 1
RACY_SECONDS = 2.0

Key = tuple[int, int, int]  # size, mtime_ns, inode


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/poisongen`` (default ``~/.cache/poisongen``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "poisongen"


def _key(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ino


class HashCache:
    """sha256 by real path for the files under one source root, held in memory and saved with :meth:`save`.

    Thread-safe (the copy threads share one instance)."""

    def __init__(self, folder: Path, source_root: Path):
        self.source_root = Path(source_root).resolve()
        self.path = Path(folder) / f"{hashlib.sha256(str(self.source_root).encode()).hexdigest()[:24]}.json"
        self._lock = threading.Lock()
        self._entries: dict[str, list] = self._read()
        self._new: dict[str, list] = {}
        self.hits = self.misses = 0

    def _read(self) -> dict[str, list]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"hash cache {self.path} cannot be read ({exc.strerror}); ignoring it", stacklevel=3)
            return {}
        try:
            data = json.loads(raw)
            ok = (isinstance(data, dict) and data.get("version") == VERSION
                  and data.get("root") == str(self.source_root) and isinstance(data.get("files"), dict))
            entries = data["files"] if ok else None
            if ok and all(isinstance(v, list) and len(v) == 4 and all(isinstance(x, int) for x in v[:3])
                          and isinstance(v[3], str) and len(v[3]) == 64 for v in entries.values()):
                return entries
        except (ValueError, TypeError, KeyError):
            pass
        warnings.warn(f"hash cache {self.path} is corrupt or from another version; ignoring it", stacklevel=3)
        return {}

    def lookup(self, path: Path) -> tuple[str, Key, str | None]:
        """``(real path, (size, mtime_ns, inode), cached sha256 or None)`` of ``path``, from one stat."""
        real = os.path.realpath(path)
        key = _key(os.stat(real))
        with self._lock:
            hit = self._entries.get(real)
            found = hit[3] if hit is not None and tuple(hit[:3]) == key else None
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return real, key, found

    def store(self, real: str, key: Key, digest: str) -> None:
        """Remember ``digest`` for the file at ``real`` as it was at ``key`` (from :meth:`lookup`, before it
        was read): skipped if the file changed since, or was modified less than :data:`RACY_SECONDS` ago."""
        try:
            now = os.stat(real)
        except OSError:
            return
        if _key(now) != key or time.time_ns() - now.st_mtime_ns <= RACY_SECONDS * 1e9:
            return
        with self._lock:
            self._entries[real] = self._new[real] = [*key, digest]

    def sha256(self, path: Path) -> str:
        """sha256 of ``path``: the cached digest while its (size, mtime_ns, inode) are unchanged, else hashed
        (and stored)."""
        real, key, digest = self.lookup(path)
        if digest is None:
            digest = sha256_file(real)
            self.store(real, key, digest)
        return digest

    def save(self) -> None:
        """Write the entries (merged over what another run saved meanwhile) atomically; a cache folder that
        cannot be written is a warning, never a failed run."""
        with self._lock:
            if not self._new:
                return
            merged = {**self._read_quietly(), **self._entries}
        data = {"version": VERSION, "root": str(self.source_root), "files": merged}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            warnings.warn(f"hash cache {self.path} not saved ({exc.strerror})", stacklevel=2)

    def _read_quietly(self) -> dict[str, list]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._read()


def open_cache(spec: str | Path | None, source_root: Path) -> HashCache | None:
    """The cache ``--hash-cache`` names (``"default"``: :func:`default_dir`) for ``source_root``; None = off."""
    if spec is None or str(spec) == "":
        return None
    folder = default_dir() if str(spec) == "default" else Path(spec).expanduser()
    src = Path(source_root).resolve()
    f = folder.resolve()
    if f == src or src in f.parents:
        from .errors import ConfigError

        raise ConfigError(f"--hash-cache {spec} is inside the source dataset {source_root}; the cache lives outside it")
    return HashCache(folder, source_root)
