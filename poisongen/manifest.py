"""The manifest: the source of truth for every poisoned byte (DESIGN.md, "The manifest").

``manifest.json`` is written last into the output root, with sorted keys and records in id order so
that ``diff`` is meaningful. ``integrity`` is the sha256 of the manifest's canonical JSON without that
field and ``created_at``: any edit of any other value shows up in ``verify``, and two runs of the same
command differ in ``created_at`` alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__
from .errors import PoisonGenError
from .record import DIFF_FIELDS

SCHEMA_VERSION = 1
NAME = "manifest.json"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def integrity(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("integrity", "created_at")}
    return hashlib.sha256(canonical(body)).hexdigest()


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
) -> dict:
    """Assemble a manifest dict. ``unchanged``: output files copied from the source (path -> sha256
    or None with ``--no-hash``); ``source_files``: every source file's sha256 (for the fingerprint)."""
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
    m["integrity"] = integrity(m)
    return m


def save(manifest: dict, path: Path) -> None:
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n")


def load(path: str | Path) -> dict:
    """Read a manifest (a file, or a dataset folder holding ``manifest.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / NAME
    if not path.is_file():
        raise PoisonGenError(f"no manifest at {path}")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PoisonGenError(f"manifest {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
        got = m.get("schema_version") if isinstance(m, dict) else type(m).__name__
        raise PoisonGenError(f"manifest {path} has schema_version {got!r}; this poisongen reads {SCHEMA_VERSION}")
    return m


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
