"""The backdoor evaluation protocol as a library call (docs/metrics.md has every definition).

:func:`backdoor_report` scores one model - or a folder of prediction PNGs, through the same code - on a
benign dataset (CBA, clean ASR) and any number of Poisoned Tests written by ``poisongen testset`` (PBA,
ASR, clean ASR, the fine-grained block, conditional subsets), under one of two protocols:

* ``paper`` (default): SPEC section 6. Poisoned-test metrics count the triggered samples of the test
  manifest only; class averages run over classes with a non-zero union; whole-image / sliding-window
  logits.
* ``iba-code``: the published IBA code (SPEC 6b): every image of the test split counts (triggered or
  not); class averages run over all classes, absent ones counted 0; padded inference with horizontal-
  flip averaging.

What a prediction is comes from a *predictor*: ``predictor(dataset, set_name)`` yields ``(class map
(1, H, W) int64, label, [sample id])`` per sample. :class:`ModelPredictor` runs a model (optionally
saving each class map as ``DIR/<set name>/<sample id>.png``); :class:`PngPredictor` reads such PNGs
back, so that ``segtrain score`` on saved predictions reproduces ``segtrain evaluate`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poisongen import manifest as _manifest
from poisongen.codecs import encode_png, sha256_files, write_bytes
from poisongen.config import ALL
from poisongen.datasets import Layout, open_dataset
from poisongen.errors import ConfigError, PoisonGenError, choices

from . import distributed
from .data import AttackInfo, SegDataset, read_attack_info
from .errors import SegTrainError
from .inference import predictions
from .metrics import MetricAccumulator, nan_to_none, ratio

BENIGN = "benign"


@dataclass(frozen=True)
class Protocol:
    """How a protocol counts: ``every_image`` (poisoned-test metrics over every image of the test split,
    not only the triggered ones), ``absent_as_zero`` (class averages over all classes, absent ones 0),
    ``flip`` (padded, flip-averaged inference, :func:`segtrain.inference.predict_padded_flip`)."""

    name: str
    every_image: bool
    absent_as_zero: bool
    flip: bool


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", every_image=False, absent_as_zero=False, flip=False),
    "iba-code": Protocol("iba-code", every_image=True, absent_as_zero=True, flip=True),
}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown --protocol '{name}'; valid are {choices(PROTOCOLS)}") from None


# --- predictors -------------------------------------------------------------------------------------
def prediction_path(folder: Path, sample_id: str) -> Path:
    """Where a sample's prediction PNG lives: ``folder/<sample id>.png`` (ids with '/' nest)."""
    return Path(folder) / f"{sample_id}.png"


class ModelPredictor:
    """Predictions of ``model`` (``flip``: the iba-code inference); with ``save_dir`` each class map is
    also written as a uint8 PNG of train ids to ``save_dir/<set name>/<sample id>.png``."""

    def __init__(self, model, device, crop: tuple[int, int] | None = None, workers: int = 0, amp: bool = False,
                 flip: bool = False, save_dir: str | Path | None = None):
        self.model, self.device, self.crop, self.workers, self.amp = model, torch.device(device), crop, workers, amp
        self.flip = flip
        self.save_dir = None if save_dir is None else Path(save_dir)

    def __call__(self, dataset: SegDataset, set_name: str) -> Iterator:
        n = dataset.layout.meta.num_classes
        for pred, labels, ids in predictions(self.model, dataset, self.device, n, self.crop, workers=self.workers,
                                             amp=self.amp, flip=self.flip):
            if self.save_dir is not None:
                for sid, p in zip(ids, pred, strict=True):
                    png = encode_png(p.cpu().numpy().astype(np.uint8))
                    write_bytes(prediction_path(self.save_dir / set_name, sid), png)
            yield pred, labels, ids


def index_predictions(pred_dir: Path) -> dict[str, Path]:
    """File name -> path of every PNG under ``pred_dir`` (flat or nested); a name found twice -> error."""
    if not pred_dir.is_dir():
        raise PoisonGenError(f"--pred {pred_dir} is not a folder")
    found: dict[str, Path] = {}
    for p in sorted(pred_dir.rglob("*.png")):
        if p.name in found:
            raise PoisonGenError(f"prediction file name {p.name} occurs twice: {found[p.name]} and {p}")
        found[p.name] = p
    return found


def read_prediction(path: Path, shape: tuple[int, int], n: int) -> np.ndarray:
    from PIL import Image

    try:
        arr = np.array(Image.open(path))
    except Exception as exc:  # noqa: BLE001
        raise PoisonGenError(f"cannot read prediction {path}: {exc}") from None
    if arr.ndim != 2:
        raise PoisonGenError(f"prediction {path} must be a single-channel PNG of train ids, got shape {arr.shape}")
    if arr.shape != shape:
        raise PoisonGenError(
            f"prediction {path} is {arr.shape[1]}x{arr.shape[0]}, its label {shape[1]}x{shape[0]} (WxH)")
    if arr.size and int(arr.max()) >= n:
        raise PoisonGenError(f"prediction {path} holds value {int(arr.max())} outside the train ids 0..{n - 1}")
    return arr


class PngPredictor:
    """Prediction PNGs (uint8 train ids) as a predictor. ``per_set``: ``root/<set name>/<sample id>.png``
    as :class:`ModelPredictor` saves them; otherwise ``root`` itself holds one set, flat or nested,
    each file named ``<sample id>.png`` or after the sample's image."""

    device = torch.device("cpu")

    def __init__(self, root: str | Path, per_set: bool = True):
        self.root, self.per_set = Path(root), per_set
        if not self.root.is_dir():
            raise PoisonGenError(f"--pred {self.root} is not a folder")
        self._index: dict[str, Path] | None = None

    def _find(self, set_name: str, sample) -> Path | None:
        if self.per_set:
            p = prediction_path(self.root / set_name, sample.id)
            return p if p.is_file() else None
        p = prediction_path(self.root, sample.id)
        if p.is_file():
            return p
        if self._index is None:
            self._index = index_predictions(self.root)
        img = Path(sample.image)
        for name in (f"{Path(sample.id).name}.png", img.name, img.stem + ".png"):
            if name in self._index:
                return self._index[name]
        return None

    def __call__(self, dataset: SegDataset, set_name: str) -> Iterator:
        n = dataset.layout.meta.num_classes
        where = self.root / set_name if self.per_set else self.root
        for i, s in enumerate(dataset.samples):
            p = self._find(set_name, s)
            if p is None:
                raise PoisonGenError(f"no prediction for sample '{s.id}' under {where} (looked for {s.id}.png or "
                                     f"{Path(s.image).stem}.png)")
            _, label, sid = dataset[i]
            gt_shape = tuple(label.shape[-2:])
            pred = torch.from_numpy(read_prediction(p, gt_shape, n).astype(np.int64))
            yield pred[None], label[None], [sid]


def score_set(predict, dataset: SegDataset, set_name: str, victim: Sequence[int] = (),
              target: int | None = None) -> MetricAccumulator:
    """Accumulate the metrics of one set from a predictor (the one counting loop of evaluate and score).
    Under torchrun each rank predicts its shard of the samples and the counts are summed over the ranks
    (:func:`segtrain.distributed.reduce_metrics`): every rank returns the one-process result."""
    acc = MetricAccumulator(dataset.layout.meta.num_classes, victim, target, predict.device)
    for pred, labels, ids in predict(distributed.shard(dataset), set_name):
        acc.update(pred, labels, ids=ids)
    return distributed.reduce_metrics(acc)


# --- victim / target, test sets, clean counterparts ---------------------------------------------------
def resolve_attack(layout: Layout, info: AttackInfo | None, victim: str | None, target: str | None):
    """Victim tuple and target from flags (names or ids) or else from the manifest."""
    v = layout.meta.parse_classes(victim) if victim else (info.victim if info else ())
    t = layout.meta.class_id(target) if target is not None else (info.target if info else None)
    return tuple(v), t


def no_target_error(where: str, victim: Sequence[int], names: Sequence[str]) -> PoisonGenError:
    vs = ",".join(names[v] for v in victim)
    return PoisonGenError(
        f"no target class known for the ASR of {where} (victim {vs}): pass --target CLASS (e.g. --target road), "
        f"or write the test set with 'poisongen testset --target CLASS'"
    )


def read_testset(ts: str, names: Sequence[str], data: str, option: str = "test set") -> tuple[Layout, AttackInfo, dict]:
    """Open a Poisoned Test: a dataset of a known layout with a ``poisongen testset`` manifest that lists
    samples, of ``data``'s class table. Refuse what is not one, in one line naming ``option`` (how the
    user gave the folder, e.g. ``--eval-poisoned``) and the folder."""
    try:
        tl = open_dataset(ts, generate=False)
    except PoisonGenError as exc:
        raise SegTrainError(f"{option} {ts}: {exc}") from None
    tinfo = read_attack_info(tl.root)
    if tinfo is None:
        raise SegTrainError(f"{option} {ts} has no manifest.json, so it is not a Poisoned Test; make one with "
                            f"'poisongen testset'")
    if tinfo.kind != "testset":
        raise SegTrainError(f"{option} {ts} is a poisoned {tinfo.kind} set (manifest kind '{tinfo.kind}'), not a "
                            f"test set (kind 'testset', from 'poisongen testset')")
    if tl.meta.names != list(names):
        raise SegTrainError(f"{option} {ts} has another class table ({len(tl.meta.names)} classes) than {data} "
                            f"({len(names)} classes)")
    if not tinfo.sample_ids:
        raise SegTrainError(f"{option} {ts} lists no poisoned samples")
    return tl, tinfo, _manifest.load(tl.root)


def is_all_to_one(m: dict) -> bool:
    """The test set's attack matrix has an N-to-1 row (``all:CLASS``): no non-victim class is left."""
    rows = ((m.get("config") or {}).get("relabel") or {}).get("matrix") or ()
    return any(int(r[0]) == ALL for r in rows)


def check_counterpart(layout: Layout, data: str, tl: Layout, ts: str, m: dict, split: str) -> str:
    """Is ``data`` the clean counterpart of the Poisoned Test ``ts`` (SPEC 5)? Returns ``"sha256"`` when
    every triggered sample's source image and label in ``data`` hash to what the test manifest recorded,
    ``"ids"`` when only the sample ids (and sizes) match. Raises for what cannot be: ``data`` a Poisoned
    Test itself, another sample count, missing ids, images of another size (another ``--scale``)."""
    dm = _manifest.load(layout.root) if (layout.root / _manifest.NAME).is_file() else None
    if dm is not None and dm.get("kind") == "testset":
        raise PoisonGenError(f"--data {data} is a Poisoned Test itself (manifest kind 'testset'); give the clean "
                             f"dataset it was made from (CBA and clean ASR are measured on clean images)")
    samples = {s.id: s for s in layout.samples(split)}
    recorded = (m.get("counts") or {}).get("split_samples")
    if recorded is not None and int(recorded) != len(samples):
        raise PoisonGenError(f"--data {data} has {len(samples)} '{split}' samples, test set {ts} was made from a "
                             f"dataset with {recorded}: not its clean counterpart")
    records = m.get("samples") or []
    missing = [r["id"] for r in records if r["id"] not in samples]
    if missing:
        raise PoisonGenError(f"--data {data} has no sample '{missing[0]}' of test set {ts} ({len(missing)} missing): "
                             f"not its clean counterpart")
    first = records[0]["id"]
    a, b = layout.read_label(samples[first]).shape, tl.read_label({s.id: s for s in tl.samples(split)}[first]).shape
    if a != b:
        raise PoisonGenError(f"--data {data} holds sample '{first}' at {a[1]}x{a[0]}, test set {ts} at {b[1]}x{b[0]} "
                             f"(WxH): another --scale; give the clean copy of the same scale ('poisongen scale')")
    want = {f["path"]: f.get("source_sha256") for r in records for f in r.get("files", [])}
    if not want or None in want.values() or not all((layout.root / p).is_file() for p in want):
        return "ids"
    got = sha256_files(layout.root, sorted(want), 4)
    return "sha256" if all(got[p] == d for p, d in want.items()) else "ids"


# --- the report -------------------------------------------------------------------------------------
def _band(tinfo: AttackInfo):
    if tinfo.band is None:
        return None
    return [tinfo.band[0], None if math.isinf(tinfo.band[1]) else tinfo.band[1]]


@dataclass(frozen=True)
class _SetPlan:
    testset: str
    layout: Layout
    info: AttackInfo
    manifest: dict
    name: str
    victim: tuple[int, ...]
    target: int | None
    split: str
    counterpart: str


def _prepare(data: str, testsets: Sequence[str], victim: str | None, target: str | None,
             trained_on: tuple[tuple[int, ...], int | None], option: str = "test set"):
    """Every check of a report, before the first image is predicted: (layout, victim, target, set plans)."""
    layout = open_dataset(data)
    info = read_attack_info(layout.root)
    v, t = resolve_attack(layout, info, victim, target)
    if not v and victim is None:
        v = tuple(trained_on[0])
    if t is None and target is None:
        t = trained_on[1]
    names = layout.meta.names
    opened = [(ts, *read_testset(ts, names, data, option)) for ts in testsets]
    set_names = [Path(ts).name for ts in testsets]
    if len(set(set_names)) != len(set_names) or BENIGN in set_names:
        raise PoisonGenError(f"test set folder names must differ from each other and from '{BENIGN}' (predictions "
                             f"are stored per set name), got {', '.join(set_names)}")
    fine_data = info is not None and (info.target_labels or info.attack in ("fgba", "badnets"))
    if v and t is None and not fine_data:
        raise no_target_error(f"{data}'s val split (clean ASR)", v, names)
    plans = []
    for (ts, tl, tinfo, m), name in zip(opened, set_names, strict=True):
        tv, tt = resolve_attack(tl, tinfo, victim, target)
        if tt is None and target is None:
            tt = t
        if tv and tt is None and not tinfo.target_labels:
            raise no_target_error(f"test set {ts}", tv, names)
        split = tinfo.split or tl.val_split
        counterpart = check_counterpart(layout, data, tl, ts, m, split)
        plans.append(_SetPlan(ts, tl, tinfo, m, name, tuple(tv), tt, split, counterpart))
    return layout, tuple(v), t, plans


def check_testsets(data: str, testsets: Sequence[str], victim: str | None = None, target: str | None = None,
                   trained_on: tuple[tuple[int, ...], int | None] = ((), None), option: str = "test set") -> None:
    """The checks of :func:`backdoor_report` alone (for ``segtrain run`` to refuse bad sets before training;
    ``option`` names how the sets were given in the messages)."""
    _prepare(data, testsets, victim, target, trained_on, option)


def backdoor_report(predict, data: str, testsets: Sequence[str], protocol: str | Protocol = "paper",
                    victim: str | None = None, target: str | None = None,
                    trained_on: tuple[tuple[int, ...], int | None] = ((), None)) -> dict:
    """CBA on DATA's val split; per Poisoned Test PBA, ASR and clean ASR (on the same ids of DATA).

    Args:
        predict: a predictor (:class:`ModelPredictor`, :class:`PngPredictor`).
        data: the benign dataset, the test sets' clean counterpart (checked, :func:`check_counterpart`).
        testsets: folders written by ``poisongen testset``.
        protocol: ``paper`` or ``iba-code`` (or a :class:`Protocol`).
        victim, target: class names or ids overriding the manifests.
        trained_on: (victim, target) the model's training data recorded, the last fallback.

    A test set with target labels (fgba, badnets, instance) gets the fine-grained metrics, and its ``asr``
    is the fine-grained paper's (accuracy over pixels whose target label differs from GT); an all-to-one
    set has no PBA. A conditional test set is reported twice (condition present / absent; paper only).

    Raises:
        PoisonGenError: a set that is no test set, benign data that cannot be its clean counterpart, or an
            IBA ASR with no target class known (never an untargeted ASR).
    """
    proto = get_protocol(protocol)
    layout, v, t, plans = _prepare(data, testsets, victim, target, trained_on)
    names = layout.meta.names
    val = SegDataset(layout, layout.val_split)
    benign = score_set(predict, val, BENIGN, v, t)
    b = benign.summary(names, proto.absent_as_zero)
    res = {
        "data": str(data),
        "protocol": proto.name,
        "victim": list(v),
        "target": t,
        "benign": {"split": layout.val_split, "samples": len(val), "cba": b["miou"], **b},
        "poisoned": [],
    }
    for key in ("pba", "pba_iou_per_class"):
        res["benign"].pop(key, None)  # PBA is a poisoned-test metric
    asr = res["benign"].pop("asr", None)
    if v:
        res["benign"]["clean_asr"] = asr if t is not None else None
    for sp in plans:
        ts, tl, tinfo, m, name, tv, tt, split = (sp.testset, sp.layout, sp.info, sp.manifest, sp.name, sp.victim,
                                                 sp.target, sp.split)
        if proto.every_image:
            subsets: list[tuple[str | None, tuple[str, ...]]] = [(None, tuple(s.id for s in tl.samples(split)))]
        elif tinfo.condition is not None:
            subsets = [(label, tuple(i for i in tinfo.sample_ids if tinfo.condition.get(i) == flag))
                       for label, flag in (("condition present", True), ("condition absent", False))]
        else:
            subsets = [(None, tinfo.sample_ids)]
        all_to_one = is_all_to_one(m)
        for subset, ids in subsets:
            if not ids:
                continue
            pois = score_set(predict, SegDataset(tl, split, ids=ids, target_labels=tinfo.target_labels), name, tv, tt)
            if (tv, tt) == (v, t) and split == layout.val_split:
                clean_hits = benign.subset_hits(ids)
            else:
                clean_name = BENIGN if split == layout.val_split else f"{name}.clean"
                clean_hits = score_set(predict, SegDataset(layout, split, ids=ids), clean_name, tv, tt).hits
            s = pois.summary(names, proto.absent_as_zero)
            fg = s.get("fine_grained")
            entry = {
                "testset": str(ts),
                "attack": tinfo.attack,
                "subset": subset,
                "band": _band(tinfo),
                "band_label": tinfo.band_label(),
                "split": split,
                "samples": len(ids),
                "triggered": len(set(ids) & set(tinfo.sample_ids)),
                "victim": list(tv),
                "target": tt,
                "pba": None if all_to_one else s.get("pba"),
                "asr": fg["asr"] if fg else (s.get("asr") if tt is not None else None),
                "asr_definition": "fine-grained" if fg else "victim->target",
                "clean_asr": nan_to_none(ratio(*clean_hits)) if tt is not None else None,
                "victim_pixels": s.get("victim_pixels"),
                "miou": s["miou"],
                "iou_per_class": s["iou_per_class"],
                "fingerprint": tinfo.fingerprint,
                "counterpart": sp.counterpart,
            }
            if "pba_iou_per_class" in s and not all_to_one:
                entry["pba_iou_per_class"] = s["pba_iou_per_class"]
            if fg:
                entry["fine_grained"] = {"miou_b": res["benign"]["cba"], "pa_b": res["benign"]["pixel_acc"],
                                         **fg, "attacked_pixels": pois.changed_pixels}
            res["poisoned"].append(entry)
    return res


def score_one_set(pred: str | Path, data: str, split: str | None = None, victim: str | None = None,
                  target: str | None = None, protocol: str | Protocol = "paper") -> dict:
    """One folder of prediction PNGs against one set (``segtrain score`` without ``--poisoned``). A Poisoned
    Test (manifest kind testset) counts its triggered samples only under the paper protocol, exactly the
    samples :func:`backdoor_report` counts for it; every sample of the split otherwise."""
    proto = get_protocol(protocol)
    layout = open_dataset(data)
    info = read_attack_info(layout.root)
    v, t = resolve_attack(layout, info, victim, target)
    testset = info is not None and info.kind == "testset"
    split = split or (info.split if testset and info.split else layout.val_split)
    ids = info.sample_ids if testset and not proto.every_image else None
    if v and t is None and not (info is not None and info.target_labels):
        raise no_target_error(f"{data}", v, layout.meta.names)
    ds = SegDataset(layout, split, ids=ids, target_labels=bool(testset and info.target_labels))
    acc = score_set(PngPredictor(pred, per_set=False), ds, "", v, t)
    s = acc.summary(layout.meta.names, proto.absent_as_zero)
    res = {"data": str(data), "split": split, "samples": len(ds), "protocol": proto.name, **s}
    if s.get("fine_grained"):
        res["asr"] = s["fine_grained"]["asr"]
    if v:
        res["victim"], res["target"] = list(v), t
    return res
