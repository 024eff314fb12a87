"""One path for the data: samples -> plan -> apply_one (parallel) -> writer -> manifest.json."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from . import manifest as mf
from .apply import apply_one
from .attacks import check_sizes, with_trigger_hash
from .codecs import encoder_settings, sha256_file
from .config import AttackConfig
from .datasets.base import Layout
from .errors import PoisonGenError
from .hashcache import HashCache
from .parallel import check_workers_see, delayed, parallel
from .plan import Plan, SamplePlan, build_plan
from .triggers import check_paints, prepare_trigger
from .writer import RescaledTree, check_out, mirror, rescale_tree, staging

# A progress callback factory: (description, total) -> context manager yielding advance(n).
ProgressFactory = Callable[[str, int], object]

SCALED_DIR = ".poisongen-scaled"  # inside the staging dir: the rescaled clean copy a run poisons
POISONED_DIR = ".poisongen-poisoned"  # inside the staging dir: poisoned files before they replace it


def _no_progress(desc: str, total: int):
    return nullcontext(None)


#: run options that never change the output, left out of the recorded command (value-taking)
RUN_OPTIONS = ("--jobs", "-j", "--backend", "--scheduler", "--hash-cache")


def normalised_command(argv: list[str]) -> list[str]:
    """The command line less the run options that never change the output (``--jobs N``, ``--backend``,
    ``--scheduler``, ``--hash-cache``), so that manifests of runs with different worker counts or backends
    are identical apart from ``created_at``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in RUN_OPTIONS:
            skip = True
            continue
        if a.startswith(tuple(f"{o}=" for o in RUN_OPTIONS if o.startswith("--"))) or (
                a.startswith("-j") and not a.startswith("--")):  # --jobs=4, -j4, -j=4
            continue
        out.append(a)
    return out


def sample_files(sample) -> set[str]:
    """Every file of a sample, i.e. every file poisoning it may rewrite."""
    return set(sample.files) | {sample.image, sample.label} | ({sample.instances} if sample.instances else set())


class BackgroundMirror:
    """``writer.mirror`` in a background thread: unchanged files are copied and hashed (threads that
    release the GIL) while the worker processes poison the selected samples."""

    def __init__(self, src: Path, dst: Path, files: list[str], cfg: AttackConfig, jobs: int,
                 cache: HashCache | None = None):
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(mirror, src, dst, files, cfg.link, cfg.hash_files, max(2, jobs * 2),
                                         None, self._stop, cache)

    def result(self) -> dict[str, str | None]:
        try:
            return self._future.result()
        except BaseException:  # interrupted (SIGINT/SIGTERM) while waiting: stop copying before cleanup
            self._stop.set()
            raise
        finally:
            self._pool.shutdown()

    def stop(self) -> None:
        """Stop copying and wait for the files in flight (a failed run then removes the temp dir)."""
        self._stop.set()
        self._pool.shutdown(wait=True)


def plan_from_manifest(ds: Layout, m: dict, cfg: AttackConfig) -> Plan:
    """Replay the trigger positions of an existing manifest on another copy of the data."""
    selected = [SamplePlan.from_dict(r) for r in m["samples"]]
    known = {s.id for s in ds.samples(cfg.split)}
    missing = [sp.id for sp in selected if sp.id not in known]
    if missing:
        raise PoisonGenError(
            f"--from-manifest lists {len(missing)} samples absent from split '{cfg.split}' of {ds.root}, "
            f"e.g. '{missing[0]}'"
        )
    c = m["counts"]
    return Plan(cfg, len(known), c["with_victim"], c["candidates"], c["requested"], selected, list(m["skipped"]))


def run(
    ds: Layout,
    cfg: AttackConfig,
    out: Path,
    *,
    overwrite: bool = False,
    jobs: int = 1,
    command: list[str] | None = None,
    progress: ProgressFactory = _no_progress,
    plan: Plan | None = None,
    extra: dict | None = None,
    sign_key: bytes | None = None,
    hash_cache: HashCache | None = None,
) -> tuple[dict, Plan, dict]:
    """Plan (unless given), apply and write. Returns (manifest, plan, timings in seconds).
    ``sign_key``: sign the manifest with HMAC-SHA256 (``--sign``). ``hash_cache`` (``--hash-cache``): source
    digests of the copied/linked files reused while unchanged, saved at the end. On the dask backend every
    worker must see the staging folder and the source (checked first)."""
    out = Path(out)
    check_out(ds.root, out, overwrite)
    t = cfg.trigger
    pattern, sha = prepare_trigger(t.kind, t.source, t.size, t.semantic_class)
    check_paints(t.kind, pattern, t.alpha)
    cfg = with_trigger_hash(cfg, sha)
    try:
        with staging(out) as tmp:
            check_workers_see(tmp, _a_source_file(ds, cfg.split))
            return _run_staged(ds, cfg, tmp, jobs, command, progress, plan, extra, sign_key, hash_cache, pattern)
    finally:
        if hash_cache is not None:
            hash_cache.save()


def _a_source_file(ds: Layout, split: str) -> Path | None:
    """One image of the source, for the workers to see (:func:`check_workers_see`)."""
    samples = ds.samples(split)
    return ds.root / samples[0].image if samples else None


def _run_staged(ds, cfg, tmp, jobs, command, progress, plan, extra, sign_key, hash_cache, pattern):
    """:func:`run`'s work inside its staging folder ``tmp``."""
    timings: dict[str, float] = {}
    work, dest, tree = ds, tmp, None
    if cfg.scale is not None:  # the whole dataset rescaled first; the poisoning reads that copy
        t0 = time.perf_counter()
        work, tree = rescaled_copy(ds, tmp / SCALED_DIR, cfg.scale, cfg.jpeg_quality, cfg.link, jobs, progress)
        dest = tmp / POISONED_DIR
        timings["scale"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if plan is None:
        with progress("planning", len(work.samples(cfg.split))) as adv:
            plan = build_plan(work, cfg, jobs, adv)
    else:
        plan.config = cfg
    timings["plan"] = time.perf_counter() - t0
    by_id = {s.id: s for s in work.samples(cfg.split)}
    if tree is None:  # copy (and hash) what no poisoned sample can touch while the samples are poisoned
        touched = {f for sp in plan.selected for f in sample_files(by_id[sp.id])}
        all_files = [f for f in ds.all_files() if f != mf.NAME]
        early = BackgroundMirror(ds.root, tmp, [f for f in all_files if f not in touched], cfg, jobs,
                                 hash_cache)
    t0 = time.perf_counter()
    try:
        with progress("poisoning", len(plan.selected)) as adv:
            records = []
            gen = parallel(jobs, return_as="generator")(
                delayed(apply_one)(work, by_id[sp.id], sp, cfg, pattern, dest) for sp in plan.selected
            )
            for rec in gen:
                records.append(rec)
                if adv:
                    adv(1)
    except BaseException:
        if tree is None:
            early.stop()  # before staging removes the temp dir under the copying threads
        raise
    timings["apply"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    written = {f["path"] for r in records for f in r["files"]}
    ext = dict(extra or {})
    if tree is None:
        if written - touched:  # the background copy could have raced with such a write
            early.stop()
            raise RuntimeError(f"poisoning wrote files of no poisoned sample: {sorted(written - touched)[:3]}")
        late = [f for f in all_files if f in touched and f not in written]
        with progress("copying", len(late)) as adv:
            unchanged = early.result()
            unchanged.update(mirror(ds.root, tmp, late, cfg.link, cfg.hash_files, max(2, jobs * 2), adv,
                                    cache=hash_cache))
        source_files = dict(unchanged)
        for r in records:
            for f in r["files"]:
                source_files[f["path"]] = f["source_sha256"]
    else:
        # poisoned files replace their clean rescaled versions; a test set's target labels are new files
        targets = {f["path"] for r in records for f in r.get("target_labels", [])}
        for p in sorted(written | targets):
            (work.root / p).parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest / p, work.root / p)
        shutil.rmtree(dest, ignore_errors=True)
        move_tree(work.root, tmp)
        unchanged = {p: d for p, d in tree.files.items() if p not in written}
        source_files = tree.source_files
        ext["rescaled"] = rescaled_record(cfg.scale, tree)
    timings["copy"] = time.perf_counter() - t0
    manifest = write_manifest(tmp, ds, config=cfg.to_dict(), command=command, counts=plan.counts(),
                              samples=records, skipped=plan.skipped, unchanged=unchanged,
                              source_files=source_files, extra=ext, sign_key=sign_key)
    return manifest, plan, timings


def write_manifest(dest: Path, ds: Layout, *, config: dict, command: list[str] | None, counts: dict,
                   samples: list[dict], skipped: list[dict], unchanged: dict[str, str | None],
                   source_files: dict[str, str | None], extra: dict, sign_key: bytes | None = None) -> dict:
    """Assemble and write ``dest/manifest.json`` for a run over ``ds`` (attack runs, test sets and
    ``poisongen scale`` alike): the dataset record, the encoder settings, the source's own manifest
    hash, the command line less ``--jobs``; signed with ``sign_key`` (HMAC-SHA256) if given. Returns the
    manifest."""
    ext = dict(extra)
    ext["encoders"] = encoder_settings()
    src_manifest = ds.root / mf.NAME
    if src_manifest.is_file():
        ext["source_manifest_sha256"] = sha256_file(src_manifest)
    manifest = mf.build(
        config=config,
        command=normalised_command(command or []),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dataset={"layout": ds.name, "root": str(ds.root.resolve()), "classes": ds.meta.to_dict()},
        counts=counts,
        samples=samples,
        skipped=skipped,
        unchanged=unchanged,
        source_files=source_files,
        extra=ext,
        sign_key=sign_key,
    )
    mf.save(manifest, dest / mf.NAME)
    return manifest


# --- --scale: the whole dataset rescaled first, or on its own (poisongen scale) ---------------------
def rescaled_copy(ds: Layout, dst: Path, scale: float, jpeg_quality: int, link: str, jobs: int,
                  progress: ProgressFactory):
    """Write the whole dataset ``ds`` rescaled into ``dst`` and open it in the same layout.
    Returns ``(layout over dst, RescaledTree)``."""
    tree = _rescale_all(ds, dst, scale, jpeg_quality, link, jobs, progress)
    return type(ds)(dst), tree


def _rescale_all(ds: Layout, dst: Path, scale: float, jpeg_quality: int, link: str, jobs: int,
                 progress: ProgressFactory) -> RescaledTree:
    files = [f for f in ds.all_files() if f != mf.NAME]
    with progress("rescaling", len(files)) as adv:
        return rescale_tree(ds.root, ds.file_kind, files, dst, scale, jpeg_quality, link, jobs, adv)


def rescaled_record(scale: float, tree: RescaledTree) -> dict:
    """The manifest's ``rescaled`` entry: the factor and the fingerprint of the rescaled clean dataset
    (equal to the ``output_fingerprint`` of ``poisongen scale`` with the same source and options)."""
    return {"scale": scale, "fingerprint": mf.fingerprint(tree.files), "files": len(tree.files),
            "rewritten": len(tree.rewritten)}


def move_tree(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` into ``dst`` (same filesystem: renames only) and remove ``src``."""
    for entry in sorted(src.iterdir()):
        os.replace(entry, dst / entry.name)
    shutil.rmtree(src)


def write_scaled(
    ds: Layout,
    out: Path,
    scale: float,
    *,
    jpeg_quality: int = 95,
    link: str = "copy",
    jobs: int = 1,
    overwrite: bool = False,
    command: list[str] | None = None,
    progress: ProgressFactory = _no_progress,
    sign_key: bytes | None = None,
) -> tuple[dict, dict]:
    """``poisongen scale``: the clean dataset rescaled into ``out`` (staged, renamed at the end) with
    its own manifest (kind ``scale``; signed with ``sign_key`` if given). Returns (manifest, timings)."""
    from .config import LINKS
    from .errors import ConfigError, choices

    out = Path(out)
    check_out(ds.root, out, overwrite)
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality {jpeg_quality} is outside 1..100")
    if link not in LINKS:
        raise ConfigError(f"unknown --link '{link}'; valid are {choices(LINKS)}")
    check_sizes(ds, scale)
    t0 = time.perf_counter()
    with staging(out) as tmp:
        check_workers_see(tmp, ds.root / files[0] if (files := ds.all_files()) else None)
        tree = _rescale_all(ds, tmp, scale, jpeg_quality, link, jobs, progress)
        config = {"kind": "scale", "seed": None, "scale": scale, "jpeg_quality": jpeg_quality, "link": link}
        manifest = write_manifest(tmp, ds, config=config, command=command,
                                  counts={"files": len(tree.files), "rewritten": len(tree.rewritten)},
                                  samples=[], skipped=[], unchanged=tree.files, source_files=tree.source_files,
                                  extra={"rescaled": rescaled_record(scale, tree)}, sign_key=sign_key)
    return manifest, {"scale": time.perf_counter() - t0}
