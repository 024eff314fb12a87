"""The manifest: the source of truth for every poisoned byte (DESIGN.md, "The manifest").

``manifest.json`` is written last into the output root, with sorted keys and records in id order so
that ``diff`` is meaningful. ``integrity`` is the sha256 of the manifest's canonical JSON without that
field, ``created_at`` and ``signature``: any edit of any other value shows up in ``verify``, and two runs
of the same command differ in ``created_at`` alone. ``integrity`` detects accidents only (anyone can
recompute it); ``signature`` (``--sign KEYFILE``, poisongen/signing.py) is an HMAC of the same body that
nobody without the key can recompute.

``load`` refuses anything that is not a manifest of this schema (a JSON list, NaN, missing or
wrong-typed keys) with one line naming the key, so that verify, diff, show and testset never fail
with a traceback on a hostile file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from . import __version__, signing
from .errors import PoisonGenError
from .record import DIFF_FIELDS

SCHEMA_VERSION = 1
NAME = "manifest.json"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


UNSEALED = ("integrity", "created_at", signing.FIELD)  # what the integrity hash and the signature leave out


def signed_body(manifest: dict) -> bytes:
    """The canonical bytes the integrity hash and the signature cover."""
    return canonical({k: v for k, v in manifest.items() if k not in UNSEALED})


def integrity(manifest: dict) -> str:
    return hashlib.sha256(signed_body(manifest)).hexdigest()


def seal(manifest: dict, sign_key: bytes | None = None) -> dict:
    """Set ``integrity`` (and with a key, ``signature``) of ``manifest`` in place; returns it."""
    manifest["integrity"] = integrity(manifest)
    manifest.pop(signing.FIELD, None)
    if sign_key is not None:
        manifest[signing.FIELD] = signing.signature(signed_body(manifest), sign_key)
    return manifest


def integrity_problem(manifest: dict) -> str | None:
    """One line if the manifest's integrity hash does not match its content, else None."""
    if integrity(manifest) != manifest.get("integrity"):
        return "manifest.json: content does not match its integrity hash (the manifest was edited)"
    return None


def signature_problem(manifest: dict, key: bytes) -> str | None:
    """One line if the manifest is not signed with ``key`` or was edited after signing, else None."""
    return signing.check(signed_body(manifest), manifest.get(signing.FIELD), key)


def check_sealed(manifest: dict, path: str | Path, key: bytes | None = None, option: str = "--from-manifest") -> None:
    """Raise PoisonGenError unless the manifest's integrity hash (and with ``key`` its signature) holds:
    for commands that reuse a manifest's content (``testset --from-manifest``)."""
    for problem in (integrity_problem(manifest), signature_problem(manifest, key) if key is not None else None):
        if problem:
            raise PoisonGenError(f"{option} {path}: {problem.removeprefix('manifest.json: ')}; refusing to reuse it")


def fingerprint(files: dict[str, str | None]) -> str:
    """sha256 over sorted ``path<TAB>sha256`` lines (``-`` where a file was not hashed)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\t{files[path] or '-'}\n".encode())
    return h.hexdigest()


def build(
    *,
    config: dict,
    command: list[str],
    created_at: str,
    dataset: dict,
    counts: dict,
    samples: list[dict],
    skipped: list[dict],
    unchanged: dict[str, str | None],
    source_files: dict[str, str | None],
    extra: dict | None = None,
    sign_key: bytes | None = None,
) -> dict:
    """Assemble a manifest dict. ``unchanged``: output files copied from the source (path -> sha256
    or None with ``--no-hash``); ``source_files``: every source file's sha256 (for the fingerprint);
    ``sign_key``: add an HMAC-SHA256 ``signature`` (``--sign``)."""
    output_files = dict(unchanged)
    for rec in samples:
        output_files.update(_record_outputs(rec))
    m = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "poisongen", "version": __version__},
        "kind": config["kind"],
        "command": command,
        "created_at": created_at,
        "seed": config["seed"],
        "config": config,
        "dataset": dataset,
        "counts": counts,
        "source_fingerprint": fingerprint(source_files),
        "output_fingerprint": fingerprint(output_files),
        "samples": sorted(samples, key=lambda r: r["id"]),
        "skipped": sorted(skipped, key=lambda r: r["id"]),
        "unchanged_files": dict(sorted(unchanged.items())),
    }
    placement = config.get("placement") or {}
    if "metric" in placement:
        from .record import band_notation

        m["band_notation"] = band_notation(placement["metric"])  # how [L, U) / (L, U] is closed
    if extra:
        m.update(extra)
    return seal(m, sign_key)


def save(manifest: dict, path: Path) -> None:
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n")


def load(path: str | Path, *, complete: bool = False) -> dict:
    """Read a manifest (a file, or a dataset folder holding ``manifest.json``). Always refused in one line:
    not JSON, NaN, not an object, another schema_version. ``complete=True`` (verify, diff, show,
    testset --from-manifest): also every key those readers use, with its type (``shape_problem``);
    segtrain reads a few keys with defaults and keeps the lenient default."""
    path = Path(path)
    if path.is_dir():
        path = path / NAME
    if not path.is_file():
        raise PoisonGenError(f"no manifest at {path}")
    try:
        m = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise PoisonGenError(f"{path} is not a manifest (not UTF-8 text)") from None
    except OSError as exc:
        raise PoisonGenError(f"manifest {path} cannot be read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PoisonGenError(f"manifest {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # NaN / Infinity, which JSON does not have and a manifest never holds
        raise PoisonGenError(f"manifest {path} {exc}") from None
    if not isinstance(m, dict):
        raise PoisonGenError(f"{path} is not a manifest: it holds a JSON {_json_type(m)}, not an object")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise PoisonGenError(
            f"manifest {path} has schema_version {m.get('schema_version')!r}; this poisongen reads {SCHEMA_VERSION}"
        )
    problem = shape_problem(m) if complete else None
    if problem:
        raise PoisonGenError(f"manifest {path} is malformed: {problem}")
    return m


def _no_constant(name: str):
    raise ValueError(f"holds {name}, which is not valid JSON")


def _json_type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


# What the readers (verify, diff, show, testset --from-manifest, segtrain) rely on: key -> allowed types.
# A dict value is a nested shape; a one-element list [shape] is a list of such records.
_STR, _INT, _NUM = (str,), (int,), (int, float)
_FILE = {"path": _STR, "source_sha256": _STR, "output_sha256": _STR}
_SHAPE = {
    "kind": _STR,
    "command": (list,),
    "config": {"kind": _STR},
    "dataset": {"layout": _STR, "root": _STR, "classes": (dict,)},
    "counts": (dict,),
    "source_fingerprint": _STR,
    "output_fingerprint": _STR,
    "samples": [{"id": _STR, "split": _STR, "files": [_FILE], "top_left": (list, type(None)),
                 "distance": (int, float, type(None)), "changes": (dict,), "changed_pixels": _INT,
                 "changed_mask": {"size": (list,), "counts": (list,)}, "image_size": (list,)}],
    "skipped": [{"id": _STR}],
    "unchanged_files": (dict,),
    "integrity": _STR,
}


def _shape(value, shape, where: str) -> str | None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"'{where}' is a {_json_type(value)}, expected an object"
        for k, sub in shape.items():
            key = f"{where}.{k}" if where else k
            if k not in value:
                return f"key '{key}' is missing"
            problem = _shape(value[k], sub, key)
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"'{where}' is a {_json_type(value)}, expected a list"
        for i, item in enumerate(value):
            problem = _shape(item, shape[0], f"{where}[{i}]")
            if problem:
                return problem
        return None
    bad_float = isinstance(value, float) and not math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, shape) or bad_float:
        want = {_STR: "a string", _INT: "an integer", _NUM: "a number"}.get(shape, "/".join(t.__name__ for t in shape))
        return f"'{where}' is {value!r:.40}, expected {want}"
    return None


def shape_problem(m: dict) -> str | None:
    """The first key of ``m`` that is missing or of the wrong type for a manifest, as one phrase; None if
    every key the readers use is there with its type."""
    problem = _shape(m, _SHAPE, "")
    if problem:
        return problem
    for rec in m["samples"]:
        for i, f in enumerate(rec.get("target_labels", [])):
            if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
                return f"'samples.{rec['id']}.target_labels[{i}]' needs a string path and sha256"
    for p, d in m["unchanged_files"].items():
        if d is not None and not isinstance(d, str):
            return f"'unchanged_files.{p}' is {d!r:.40}, expected a sha256 string or null"
    for k, v in m["counts"].items():
        if isinstance(v, bool) or not isinstance(v, int):
            return f"'counts.{k}' is {v!r:.40}, expected an integer"
    return None


def _record_outputs(rec: dict) -> dict[str, str]:
    """The files one sample record wrote: its poisoned files and (test sets) its target labels."""
    out = {f["path"]: f["output_sha256"] for f in rec["files"]}
    out.update({f["path"]: f["sha256"] for f in rec.get("target_labels", [])})
    return out


def output_files(manifest: dict) -> dict[str, str | None]:
    """Every file the output should hold (path -> expected sha256 or None), manifest.json excluded."""
    files = dict(manifest["unchanged_files"])
    for rec in manifest["samples"]:
        files.update(_record_outputs(rec))
    return files


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


SAMPLE_FIELDS = DIFF_FIELDS  # the record format's owner is poisongen.record


def diff(a: dict, b: dict) -> dict:
    """What differs between two manifests: config values, samples only in one, samples whose trigger
    or relabeling differ (field by field), counts. ``created_at`` and ``integrity`` are ignored."""
    ca, cb = _flatten(a["config"]), _flatten(b["config"])
    config = {
        k: {"a": ca.get(k), "b": cb.get(k)} for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)
    }
    sa = {r["id"]: r for r in a["samples"]}
    sb = {r["id"]: r for r in b["samples"]}
    changed = {}
    for sid in sorted(set(sa) & set(sb)):
        fields = {
            f: {"a": sa[sid].get(f), "b": sb[sid].get(f)}
            for f in SAMPLE_FIELDS
            if sa[sid].get(f) != sb[sid].get(f)
        }
        if fields:
            changed[sid] = fields
    counts = {
        k: {"a": a["counts"].get(k), "b": b["counts"].get(k)}
        for k in sorted(set(a["counts"]) | set(b["counts"]))
        if a["counts"].get(k) != b["counts"].get(k)
    }
    return {
        "config": config,
        "only_in_a": sorted(set(sa) - set(sb)),
        "only_in_b": sorted(set(sb) - set(sa)),
        "changed": changed,
        "same": sum(1 for sid in set(sa) & set(sb) if sid not in changed),
        "counts": counts,
        "source_fingerprint_equal": a.get("source_fingerprint") == b.get("source_fingerprint"),
        "output_fingerprint_equal": a.get("output_fingerprint") == b.get("output_fingerprint"),
    }
