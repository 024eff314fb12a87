"""``poisongen verify``: check a poisoned dataset against its manifest, and with the source, re-derive
every poisoned file from source + manifest (SPEC: the manifest is enough to reproduce every byte)."""

from __future__ import annotations

import os
from pathlib import Path

from . import manifest as mf
from .apply import apply_one
from .codecs import sha256_file, sha256_files
from .datasets import open_dataset
from .parallel import check_workers_see, delayed, parallel, scratch_dir
from .plan import SamplePlan, build_plan
from .record import DERIVED_FIELDS, PLAN_FIELDS, attack_config
from .triggers import prepare_trigger


def _walk(root: Path) -> set[str]:
    found = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            found.add((Path(dirpath) / f).relative_to(root).as_posix())
    found.discard(mf.NAME)
    return found


def verify(out: Path, src: str | Path | None = None, jobs: int = 1, key: bytes | None = None,
           manifest: dict | None = None) -> list[str]:
    """Return a list of problems (empty = verified). Each is one line naming the file or sample.

    ``key``: the manifest must carry a valid HMAC-SHA256 signature under it (``verify --key``). With
    ``src``, the output's whole file list is compared with the source's, then every poisoned file is
    re-derived. ``manifest``: ``out``'s manifest as already loaded with ``complete=True`` (else it is read)."""
    out = Path(out)
    m = manifest if manifest is not None else mf.load(out, complete=True)
    problems: list[str] = []
    if key is not None and (p := mf.signature_problem(m, key)):
        problems.append(p)
    if p := mf.integrity_problem(m):
        problems.append(p)
    expected = mf.output_files(m)
    actual = _walk(out)
    problems += [f"{p}: missing from the output" for p in sorted(set(expected) - actual)]
    problems += [f"{p}: extra file not in the manifest" for p in sorted(actual - set(expected))]
    if src is not None:  # the dask workers re-derive from the source (re-hashing happens here)
        ds = open_dataset(src, m["dataset"]["layout"], generate=False)
        check_workers_see(None, *(ds.root / f for f in ds.all_files()[:1]))
    common = sorted(p for p in set(expected) & actual if expected[p] is not None)
    for p, digest in sha256_files(out, common, max(2, jobs * 2)).items():
        if digest != expected[p]:
            problems.append(f"{p}: sha256 differs from the manifest (file changed)")
    if src is not None:
        if "rescaled" in m:
            problems += rederive_scaled(m, src, jobs, scratch_dir(out))
        else:
            problems += compare_file_lists(m, src) + rederive(m, src, jobs)
            problems += compare_unhashed(m, out, src, jobs)
    return problems


def unhashed_files(m: dict) -> list[str]:
    """Output files the manifest gives no sha256 for (``--no-hash``): verify cannot check their content
    from the manifest alone (``verify --src`` compares them with the source's files instead)."""
    return sorted(p for p, d in m["unchanged_files"].items() if d is None)


def compare_file_lists(m: dict, src: str | Path) -> list[str]:
    """The output must hold exactly the source's files (plus a test set's target labels): a sample
    injected into the copy or a clean one deleted shows up even if the manifest was resealed to match."""
    ds = open_dataset(src, m["dataset"]["layout"], generate=False)
    source = {f for f in ds.all_files() if f != mf.NAME}
    new_files = {f["path"] for r in m["samples"] for f in r.get("target_labels", [])}
    listed = set(mf.output_files(m)) - new_files
    return [f"{p}: in the source but not in the output's manifest (deleted from the copy)"
            for p in sorted(source - listed)] + [
        f"{p}: in the output's manifest but not in the source (not a file of the source)"
        for p in sorted(listed - source)]


def compare_unhashed(m: dict, out: Path, src: str | Path, jobs: int = 1) -> list[str]:
    """``--no-hash`` outputs: the unchanged files the manifest has no sha256 for must equal the source's."""
    ds = open_dataset(src, m["dataset"]["layout"], generate=False)
    todo = [p for p in unhashed_files(m) if (out / p).is_file() and (ds.root / p).is_file()]
    if not todo:
        return []
    threads = max(2, jobs * 2)
    ours, theirs = sha256_files(out, todo, threads), sha256_files(ds.root, todo, threads)
    return [f"{p}: differs from the source file (an unhashed unchanged file was changed)"
            for p in todo if ours[p] != theirs[p]]


def rederive_scaled(m: dict, src: str | Path, jobs: int = 1, scratch: Path | None = None) -> list[str]:
    """``--scale`` outputs: rescale the whole source again (into a temp dir under ``scratch``, default the
    system's), compare it with the manifest's fingerprints and file list, then re-plan and re-apply on that
    copy as for any run."""
    import tempfile

    from .writer import rescale_tree

    ds = open_dataset(src, m["dataset"]["layout"], generate=False)
    files = [f for f in ds.all_files() if f != mf.NAME]
    with tempfile.TemporaryDirectory(prefix=".poisongen-verify-", dir=scratch) as tmp:
        check_workers_see(tmp)
        root = Path(tmp) / "scaled"
        tree = rescale_tree(ds.root, ds.file_kind, files, root, m["rescaled"]["scale"], m["config"]["jpeg_quality"],
                            "symlink", jobs)
        problems = []
        if mf.fingerprint(tree.source_files) != m["source_fingerprint"]:
            problems.append(f"{src}: the source files differ from the ones the manifest was made from")
        if mf.fingerprint(tree.files) != m["rescaled"]["fingerprint"]:
            problems.append(f"{src}: rescaling the source gives other bytes than the manifest's rescaled copy")
        expected = mf.output_files(m)
        # a test set's target labels are new files, derived (and checked) per sample below
        new_files = {f["path"] for r in m["samples"] for f in r.get("target_labels", [])}
        problems += [f"{p}: in the source but not in the manifest" for p in sorted(set(tree.files) - set(expected))]
        problems += [f"{p}: in the manifest but not in the source"
                     for p in sorted(set(expected) - set(tree.files) - new_files)]
        if m["kind"] == "scale":
            return problems + [
                f"{p}: rescaling the source gives other bytes"
                for p, d in sorted(m["unchanged_files"].items())
                if p in tree.files and d is not None and d != tree.files[p]
            ]
        return problems + rederive(m, root, jobs)


def rederive(m: dict, src: str | Path, jobs: int = 1) -> list[str]:
    """Re-plan (unless the positions came from another manifest) and re-apply every sample from the
    source; compare plan records, derived fields and output hashes with the manifest."""
    problems: list[str] = []
    ds = open_dataset(src, m["dataset"]["layout"], generate=False)
    cfg = attack_config(m)
    t = cfg.trigger
    pattern, sha = prepare_trigger(t.kind, t.source, t.size, t.semantic_class)
    if sha != cfg.trigger.sha256:
        problems.append(f"trigger {cfg.trigger.source}: pattern sha256 differs from the manifest's")
    records = {r["id"]: r for r in m["samples"]}
    if "from_manifest" not in m:
        plan = build_plan(ds, cfg, jobs)
        planned = {sp.id: sp.to_dict() for sp in plan.selected}
        for sid in sorted(set(planned) - set(records)):
            problems.append(f"sample {sid}: the seed selects it but the manifest does not list it")
        for sid in sorted(set(records) - set(planned)):
            problems.append(f"sample {sid}: listed in the manifest but the seed does not select it")
        for sid in sorted(set(planned) & set(records)):
            for f in PLAN_FIELDS:
                if planned[sid].get(f) != records[sid].get(f):
                    problems.append(f"sample {sid}: {f} in the manifest differs from the re-derived plan")
    by_id = {s.id: s for s in ds.samples(cfg.split)}
    ids = [sid for sid in sorted(records) if sid in by_id]
    problems += [f"sample {sid}: not in split '{cfg.split}' of the source" for sid in sorted(set(records) - set(by_id))]
    redone = parallel(jobs)(
        delayed(apply_one)(ds, by_id[sid], SamplePlan.from_dict(records[sid]), cfg, pattern, None) for sid in ids
    )
    for sid, new in zip(ids, redone, strict=True):
        old = records[sid]
        for f in DERIVED_FIELDS:
            if new.get(f) != old.get(f):
                problems.append(f"sample {sid}: {f} in the manifest differs from re-applying it to the source")
        old_files = {f["path"]: f for f in old.get("files", [])}
        for f in new["files"]:
            o = old_files.get(f["path"])
            if o is None:
                problems.append(f"{f['path']}: re-derived but not listed for sample {sid}")
                continue
            if o["source_sha256"] != f["source_sha256"]:
                problems.append(f"{f['path']}: the source file differs from the one the manifest was made from")
            if o["output_sha256"] != f["output_sha256"]:
                problems.append(f"{f['path']}: re-deriving it from the source gives other bytes")
    for p, digest in m["unchanged_files"].items():
        if digest is not None and (ds.root / p).is_file() and sha256_file(ds.root / p) != digest:
            problems.append(f"{p}: the source file differs from its unchanged copy in the manifest")
    return problems
