"""Signed manifests: HMAC-SHA256 (standard library) over the same canonical body as ``integrity``.

``integrity`` is a plain sha256 that anyone who edits ``manifest.json`` can recompute, so it only
detects accidents. A signature made with a secret key cannot be recomputed without that key: whoever
verifies with ``verify --key`` knows the manifest was written by a holder of the key and not edited
since. HMAC is symmetric: the verifier needs the same key and could sign too (docs/poisongen.md,
"Signed manifests").
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from .errors import ConfigError

ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32  # the digest size: a shorter key makes HMAC-SHA256 weaker than its output
FIELD = "signature"


def load_key(path: str | Path, option: str = "--sign") -> bytes:
    """Read a key file: its bytes, less one trailing newline (so ``echo``/editors do not change the
    key), at least 32 bytes. Raises ConfigError naming the file and the rule it breaks."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{option} key file not found (or not a file): {path}")
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{option} key file {path} cannot be read: {exc.strerror}") from None
    key = key[:-2] if key.endswith(b"\r\n") else key[:-1] if key.endswith(b"\n") else key
    if not key:
        raise ConfigError(f"{option} key file {path} is empty; make a key with: head -c 32 /dev/urandom > {path}")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{option} key file {path} holds {len(key)} bytes; an HMAC-SHA256 key needs at least {MIN_KEY_BYTES} "
            f"(make one with: head -c 32 /dev/urandom > {path})"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (first 16 hex digits of its sha256), recorded beside the signature so
    that a wrong key can be told from an edited manifest. It reveals nothing usable about a 32-byte key."""
    return hashlib.sha256(b"poisongen-key-id:" + key).hexdigest()[:16]


def signature(body: bytes, key: bytes) -> dict:
    """The ``signature`` record of a manifest whose canonical body (``manifest.signed_body``) is ``body``."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key), "value": hmac.new(key, body, hashlib.sha256).hexdigest()}


def check(body: bytes, record: object, key: bytes) -> str | None:
    """None if ``record`` is a valid signature of ``body`` under ``key``, else one line saying why not."""
    if record is None:
        return "manifest.json: not signed, but --key was given (an unsigned manifest cannot be trusted under --key)"
    fields = ("algorithm", "key_id", "value")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in fields):
        return "manifest.json: the signature record is malformed"
    if record["algorithm"] != ALGORITHM:
        return f"manifest.json: signature algorithm '{record['algorithm']}' is not {ALGORITHM}"
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, record["value"]):
        return None
    if record["key_id"] != key_id(key):
        return (f"manifest.json: signed with another key (key id {record['key_id']}, --key has {key_id(key)}), "
                "or the manifest was edited")
    return "manifest.json: signature does not match its content (the manifest was edited after signing)"
