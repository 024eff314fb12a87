"""Which samples are poisoned, where their triggers go, which PRL pixels change: the ONLY place
randomness happens (SPEC section 2).

Every random choice comes from a ``numpy.random.Generator`` derived from ``(seed, sample id)``, so a
plan is the same whatever the number of workers, the backend or the order files are listed in. The
plan is plain data: it is printed by ``--dry-run``, recorded in the manifest and replayed by ``verify``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .config import AttackConfig
from .datasets.base import Layout, Sample
from .errors import SelectionError, TriggerError
from .instances import NO_INSTANCE, instance_ids, victim_mask
from .instances import select as select_instances
from .parallel import delayed, parallel
from .placement import REASONS, Placement, choose
from .record import bound_from_json, distance_to_json
from .relabel import draw_prl_pixels


def stable_hash(text: str) -> int:
    """A 63-bit hash of a string that is the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """The generator of one sample: ``SeedSequence([seed, stable_hash(id)])``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stable_hash(sample_id)]))


def draw_key(seed: int, sample_id: str) -> int:
    """A sample's place in the run's draw order: the n candidates of smallest key are poisoned."""
    return stable_hash(f"select:{seed}:{sample_id}")


@dataclass
class SamplePlan:
    """What will be done to one sample."""

    id: str
    split: str
    placement: Placement | None  # None: semantic trigger, nothing painted
    victim_pixels: int
    prl: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # rows [y, x, old, new]
    instances: list[dict] | None = None  # instance attack: the chosen {id, pixels, distance}
    instance_source: str | None = None  # "instanceIds" or "components"
    condition: bool | None = None  # conditional attack: whether the label holds the condition classes

    def to_dict(self) -> dict:
        p = self.placement
        d = math.inf if p is None else p.distance
        out = {
            "id": self.id,
            "split": self.split,
            "top_left": None if p is None else list(p.top_left),
            "centre": None if p is None else list(p.centre),
            "distance": distance_to_json(d),
            "under": [] if p is None else list(p.under),
            "victim_pixels": self.victim_pixels,
            "prl": self.prl.tolist(),
        }
        if self.instances is not None:
            out["instances"] = {"source": self.instance_source, "chosen": self.instances}
        if self.condition is not None:
            out["condition"] = self.condition
        return out

    @classmethod
    def from_dict(cls, d: dict) -> SamplePlan:
        dist = bound_from_json(d.get("distance"))
        placement = None
        if d.get("top_left") is not None:
            placement = Placement(tuple(d["top_left"]), tuple(d["centre"]), dist, tuple(d.get("under", ())))
        prl = np.asarray(d.get("prl", []), np.int64).reshape(-1, 4)
        inst = d.get("instances")
        return cls(d["id"], d["split"], placement, int(d.get("victim_pixels", 0)), prl,
                   None if inst is None else list(inst["chosen"]), None if inst is None else inst["source"],
                   d.get("condition"))


@dataclass
class Plan:
    config: AttackConfig
    n_split: int  # samples in the split
    n_with_victim: int  # samples holding >= min_victim_pixels victim pixels
    n_candidates: int  # ... that also have an eligible trigger centre
    n_requested: int
    selected: list[SamplePlan]
    skipped: list[dict]  # victim-holding samples with no eligible centre: {id, split, reason, detail}
    fewer: bool = False  # fewer candidates than requested, accepted by --allow-fewer
    # samples analysed: all of the split (exact counts), or the draw order up to the n-th candidate, when
    # with_victim, candidates and skipped cover those samples only (lower bounds for the split)
    n_scanned: int | None = None

    def counts(self) -> dict:
        return {
            "scanned": self.n_split if self.n_scanned is None else self.n_scanned,
            "split_samples": self.n_split,
            "with_victim": self.n_with_victim,
            "candidates": self.n_candidates,
            "requested": self.n_requested,
            "poisoned": len(self.selected),
            "skipped": len(self.skipped),
        }


def _analyse(ds: Layout, sample: Sample, cfg: AttackConfig) -> tuple:
    """Read one label and decide: not a candidate (too few victim pixels; for a conditional training
    attack, the condition classes absent; for a semantic trigger, its class absent), skipped (no
    eligible trigger centre, no victim instance) or a sample plan."""
    label = ds.read_label(sample)
    n_victim = int(victim_mask(label, cfg.victim).sum())
    present = np.bincount(label.ravel(), minlength=256) > 0
    has_condition = bool(present[list(cfg.relabel.condition)].all())
    if (
        (cfg.victim and n_victim < cfg.min_victim_pixels)
        or (cfg.relabel.condition and cfg.kind == "train" and not has_condition)
        or (cfg.trigger.kind == "semantic" and not present[cfg.trigger.semantic_class])
    ):
        return ("few", n_victim, label.shape, None)
    rng = sample_rng(cfg.seed, sample.id)
    choice = _place(label, cfg, rng, ds.meta.ignore_index)
    if isinstance(choice, str):
        return ("skip", n_victim, label.shape, choice)
    sp = SamplePlan(sample.id, sample.split, choice, n_victim)
    if cfg.relabel.condition:
        sp.condition = has_condition
    if cfg.relabel.rule == "instance":
        ids, sp.instance_source = instance_ids(label, cfg.victim, _instance_map(ds, sample, cfg))
        sp.instances = select_instances(ids, cfg.relabel.instances, cfg.relabel.k,
                                        None if choice is None else choice.centre, rng)
        if not sp.instances:
            return ("skip", n_victim, label.shape, NO_INSTANCE)
    if cfg.kind == "train" and cfg.relabel.prl_pixels > 0:
        sp.prl = draw_prl_pixels(label, cfg.victim, cfg.target, cfg.relabel.prl_pixels, rng, ds.meta.ignore_index)
    return ("ok", n_victim, label.shape, sp)


def _place(label: np.ndarray, cfg: AttackConfig, rng: np.random.Generator, ignore_index: int) -> Placement | str | None:
    """The trigger's placement: a window for a pattern (or the reason there is none), the top band
    for the line trigger, None for a semantic trigger (nothing is painted)."""
    t, p = cfg.trigger, cfg.placement
    if t.kind == "semantic":
        return None
    if t.kind == "line":
        h, w = t.size[0], label.shape[1]
        return Placement((0, 0), (h // 2, w // 2), math.inf, tuple(int(v) for v in np.unique(label[:h])))
    return choose(
        label, cfg.victim, t.size, rng, p.strategy, p.lower, p.upper, p.constraint, p.metric,
        p.edge_margin, p.position, ignore_index,
    )


def _instance_map(ds: Layout, sample: Sample, cfg: AttackConfig) -> np.ndarray | None:
    """The layout's instance ids where it has them and every victim class is a thing, else None
    (then connected components are used)."""
    if sample.instances is None or any(ds.meta.category(v) != "thing" for v in cfg.victim):
        return None
    return ds.read_instances(sample)


def requested_count(cfg: AttackConfig, n_split: int) -> int:
    """``round(rate * N)`` with halves rounded up, or ``--count``."""
    if cfg.count is not None:
        return cfg.count
    n = math.floor(cfg.rate * n_split + 0.5)
    if n < 1:
        raise SelectionError(f"--rate {cfg.rate} of {n_split} {cfg.split} samples poisons 0 samples; raise --rate")
    return n


def _analyse_batch(ds: Layout, batch: list[Sample], cfg: AttackConfig, jobs: int) -> list[tuple]:
    if jobs == 1:
        return [_analyse(ds, s, cfg) for s in batch]
    return parallel(jobs)(delayed(_analyse)(ds, s, cfg) for s in batch)


def _scan_in_draw_order(
    ds: Layout, order: list[Sample], cfg: AttackConfig, n: int, jobs: int, progress: Callable[[int], None] | None
) -> list[tuple]:
    """Outcomes of the samples in draw order up to and including the ``n``-th candidate (or of all of
    them if there are fewer). Batches are sized from the candidate share seen so far; what a batch
    analyses beyond the ``n``-th candidate is dropped, so the result never depends on ``jobs``."""
    outcomes: list[tuple] = []
    found = done = 0
    while done < len(order) and found < n:
        share = found / len(outcomes) if outcomes else 1.0
        size = math.ceil((n - found) / max(share, 0.05))
        if jobs > 1:  # whole rounds of workers, a little ahead: idle workers cost more than a spare sample
            size = math.ceil(size * 1.1 / jobs) * jobs
        batch = order[done : done + size]
        done += len(batch)
        for outcome in _analyse_batch(ds, batch, cfg, jobs):
            outcomes.append(outcome)
            if progress:
                progress(1)
            if outcome[0] == "ok":
                found += 1
                if found == n:
                    break
    return outcomes


def build_plan(
    ds: Layout,
    cfg: AttackConfig,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Plan:
    """Choose the poisoned samples of ``cfg.split`` and plan each one.

    ``train``: the ``n`` candidates of smallest :func:`draw_key` are poisoned. Samples are analysed
    in draw order (in parallel batches) until ``n`` candidates are found, which selects exactly the
    samples a scan of the whole split would; ``cfg.full_scan`` analyses every sample anyway, for
    exact candidate counts. ``testset``: every sample is analysed and every candidate triggered (SPEC
    section 5). Victim-holding samples without an eligible centre among those analysed are listed as
    skipped with their reason; fewer candidates than ``n`` in the whole split is an error unless
    ``allow_fewer``.
    """
    samples = ds.samples(cfg.split)
    if cfg.kind == "train" and not cfg.full_scan:
        n = requested_count(cfg, len(samples))
        order = sorted(samples, key=lambda s: draw_key(cfg.seed, s.id))
        outcomes = _scan_in_draw_order(ds, order, cfg, n, jobs, progress)
        scanned = order[: len(outcomes)]
    else:
        results = parallel(jobs, return_as="generator")(
            delayed(_analyse)(ds, s, cfg) for s in samples
        )
        outcomes = []
        for r in results:
            outcomes.append(r)
            if progress:
                progress(1)
        scanned = samples
    h, w = cfg.trigger.size
    if all(o[2][0] < h or o[2][1] < w for o in outcomes):
        shape = outcomes[0][2]
        raise TriggerError(
            f"trigger {h}x{w} is larger than the images ({shape[0]}x{shape[1]}); choose a smaller --trigger-size"
        )
    candidates = [o[3] for o in outcomes if o[0] == "ok"]
    skipped = sorted(
        (
            {"id": s.id, "split": s.split, "reason": o[3], "detail": REASONS[o[3]], "victim_pixels": o[1]}
            for s, o in zip(scanned, outcomes, strict=True)
            if o[0] == "skip"
        ),
        key=lambda r: r["id"],
    )
    n_with_victim = sum(o[0] != "few" for o in outcomes)
    fewer = False
    if cfg.kind == "train":
        n = requested_count(cfg, len(samples))
        if len(candidates) < n:
            if not cfg.allow_fewer:
                raise SelectionError(
                    f"only {len(candidates)} candidate samples (victim present, trigger fits) for {n} requested "
                    f"({len(skipped)} skipped for want of a trigger position); lower --rate/--count, relax the "
                    f"placement, or pass --allow-fewer"
                )
            fewer = True
        chosen = sorted(candidates, key=lambda sp: draw_key(cfg.seed, sp.id))[:n]
        selected = sorted(chosen, key=lambda sp: sp.id)
    else:
        n = len(candidates)
        if n == 0:
            raise SelectionError(
                f"no {cfg.split} sample holds the victim class with an eligible trigger position "
                f"({len(skipped)} skipped); relax the band or the placement"
            )
        selected = candidates
    return Plan(cfg, len(samples), n_with_victim, len(candidates), n, selected, skipped, fewer, len(outcomes))
