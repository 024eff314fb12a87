"""Each defense and detector as one library call that checks everything first and then writes one output
folder (through :func:`poisongen.writer.staging`: beside itself, renamed at the end, so a refused, failed
or killed run leaves no folder). ``segtrain defend ...`` / ``segtrain detect ...`` only parse and print.

Every run writes ``OUT/defense.json`` (or ``OUT/detect.json``): the settings (seed, fractions, chosen ids,
k, layer, calibration ids, ...), the metrics before and after, and the time each step took.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from poisongen import manifest as _manifest
from poisongen.datasets import open_dataset
from poisongen.writer import staging

from .. import checkpoint
from .. import detection_metrics as dm
from ..data import read_attack_info
from ..errors import SegTrainError
from ..output import write_json
from . import abl as _abl
from . import detect_inputs as di
from . import detect_samples as ds
from .common import (
    RESULT,
    Subject,
    check_output,
    check_sets,
    defended_checkpoint,
    evaluate_model,
    headline,
    open_subject,
)
from .fineprune import fineprune as _fineprune
from .finetune import finetune as _finetune
from .prune import plan_pruning
from .prune import prune as _prune

DETECT = "detect.json"


class _Evaluator:
    """Evaluates a model on the subject's data and test sets; keeps the full reports and the time spent."""

    def __init__(self, subject: Subject, testsets, protocol, victim, target):
        self.args = (subject, list(testsets), protocol, victim, target)
        self.reports: list[dict] = []
        self.seconds = 0.0

    def __call__(self, model) -> dict:
        t = time.perf_counter()
        rep = evaluate_model(*self.args[:1], model, *self.args[1:])
        self.seconds += time.perf_counter() - t
        self.reports.append(rep)
        return headline(rep)


def _saver(subject: Subject, folder: Path):
    def save(name: str, model, settings: dict) -> str:
        checkpoint.save(folder / name, defended_checkpoint(subject, model, settings))
        return name

    return save


def _start(ckpt, data, testsets, out, device, victim, target) -> Subject:
    check_output(out)
    subject = open_subject(ckpt, data, device)
    info = read_attack_info(subject.layout.root)
    if info is not None and info.kind == "train":
        raise SegTrainError(f"--data {data} is a poisoned training set (manifest kind 'train'); defenses fine-tune, "
                            f"calibrate and evaluate on the clean dataset")
    check_sets(subject, testsets, victim, target)
    return subject


def _base(defense: str, subject: Subject, testsets, protocol, before: dict, settings: dict) -> dict:
    return {"defense": defense, "checkpoint": subject.ckpt_path, "data": subject.data, "testsets": list(testsets),
            "protocol": protocol, "settings": settings, "before": before}


def run_finetune(ckpt, data, testsets: Sequence[str], out, fractions: Sequence[float], epochs: int = 10,
                 lr: float | None = None, batch: int | None = None, seed: int = 0, device: str = "cpu",
                 protocol: str = "paper", victim=None, target=None, workers: int = 0) -> dict:
    subject = _start(ckpt, data, testsets, out, device, victim, target)
    ev = _Evaluator(subject, testsets, protocol, victim, target)
    t0 = time.perf_counter()
    with staging(Path(out)) as tmp:
        before = ev(subject.model)
        rows = _finetune(subject, fractions, ev, _saver(subject, tmp), epochs, lr, batch, seed, workers)
        res = _base("finetune", subject, testsets, protocol, before,
                    {"fractions": list(fractions), "epochs": epochs, "lr": rows[0]["lr"], "seed": seed,
                     "batch": rows[0]["batch"], "optimizer": rows[0]["optimizer"]})
        res.update(rows=rows, seconds={"total": round(time.perf_counter() - t0, 3), "evaluation": round(ev.seconds, 3)})
        write_json(tmp / RESULT, res)
    return res


def run_prune(ckpt, data, testsets: Sequence[str], out, channels: Sequence[int], layer: str | None = None,
              of: int | None = None, calibration: float = 0.10, seed: int = 0, device: str = "cpu",
              protocol: str = "paper", victim=None, target=None, workers: int = 0, fine: dict | None = None) -> dict:
    """Pruning; with ``fine`` (``{"fraction", "epochs", "lr", "batch"}``) fine-pruning."""
    subject = _start(ckpt, data, testsets, out, device, victim, target)
    plan = plan_pruning(subject, channels, layer, of, calibration, seed, workers)  # checks k and the layer first
    ev = _Evaluator(subject, testsets, protocol, victim, target)
    t0 = time.perf_counter()
    with staging(Path(out)) as tmp:
        before = ev(subject.model)
        if fine is None:
            rows = _prune(subject, plan, ev, _saver(subject, tmp))
        else:
            rows = _fineprune(subject, plan, fine["fraction"], ev, _saver(subject, tmp), fine.get("epochs", 10),
                              fine.get("lr"), fine.get("batch"), seed, workers)
        settings = {k: plan[k] for k in ("layer", "width", "k_given", "of", "k", "calibration_fraction",
                                         "calibration_ids", "seed", "order", "activations")}
        settings["masking"] = "weights: conv rows and BatchNorm weight/bias of pruned channels set to 0"
        if fine is not None:
            settings["finetune"] = {**fine, "lr": rows[0]["lr"], "optimizer": rows[0]["optimizer"]}
        res = _base("fineprune" if fine else "prune", subject, testsets, protocol, before, settings)
        res.update(rows=rows, seconds={"total": round(time.perf_counter() - t0, 3), "evaluation": round(ev.seconds, 3)})
        write_json(tmp / RESULT, res)
    return res


def run_abl(ckpt, data, train: str, testsets: Sequence[str], out, isolate: float = _abl.ISOLATE,
            gamma: float = _abl.GAMMA, isolate_iters: int | None = None, train_iters: int | None = None,
            unlearn_epochs: int = _abl.UNLEARN_EPOCHS, unlearn_lr: float | None = None, seed: int = 0,
            device: str = "cpu", protocol: str = "paper", victim=None, target=None, workers: int = 0) -> dict:
    if not 0 < isolate <= 1:
        raise SegTrainError(f"--isolate {isolate:g} is outside (0, 1]; give the share of training samples to isolate")
    subject = _start(ckpt, data, testsets, out, device, victim, target)
    layout = open_dataset(train, generate=False)
    if layout.meta.names != subject.layout.meta.names:
        raise SegTrainError(f"--train {train} has another class table than --data {data}")
    info = read_attack_info(layout.root)
    if info is None or info.kind != "train":
        raise SegTrainError(f"--train {train} has no manifest of a poisoned training set (kind 'train'); ABL's "
                            f"isolation is scored against it")
    ev = _Evaluator(subject, testsets, protocol, victim, target)
    t0 = time.perf_counter()
    with staging(Path(out)) as tmp:
        before = ev(subject.model)
        model, record = _abl.abl(subject, layout, isolate, gamma, isolate_iters, train_iters, unlearn_epochs,
                                 unlearn_lr, seed, workers)
        name = _saver(subject, tmp)("abl.pt", model, record)
        after = ev(model)
        res = _base("abl", subject, testsets, protocol, before, {k: v for k, v in record.items()
                                                                  if k not in ("isolated_ids", "seconds", "steps")})
        res.update(rows=[{"checkpoint": name, "after": after, "isolation": record["isolation"],
                          "isolated_ids": record["isolated_ids"], "steps": record["steps"]}],
                   seconds={"total": round(time.perf_counter() - t0, 3), "evaluation": round(ev.seconds, 3),
                            **record["seconds"]})
        write_json(tmp / RESULT, res)
    return res


# --- detection ----------------------------------------------------------------------------------------
def _detector_summary(ids, scores: dict, positives: set[str] | None) -> dict:
    """Per detector: AUROC, precision/recall at the poison count, TPR at 5 % FPR (none without ground truth)."""
    if positives is None:
        return {}
    labels = [int(i in positives) for i in ids]
    return {name: dm.summary(s, labels, fpr=0.05) for name, s in scores.items()}


def run_detect_samples(ckpt, data: str, out, score: bool = True, target: str | None = None,
                       layer: str | None = None, seed: int = 0, device: str = "cpu", workers: int = 0) -> dict:
    """Score every training sample of ``data`` (the poisoned copy) with each of :data:`ds.DETECTORS`."""
    check_output(out)
    subject = open_subject(ckpt, data, device)
    info = read_attack_info(subject.layout.root)
    if score and (info is None or info.kind != "train"):
        raise SegTrainError(f"--data {data} has no manifest of a poisoned training set, so there is nothing to score "
                            f"the detectors against; pass --no-score for the ranking alone")
    t = subject.layout.meta.class_id(target) if target is not None else (
        info.target if info is not None and info.target is not None else subject.trained_on[1])
    if t is None:
        raise SegTrainError("no target class known for the detectors: pass --target CLASS")
    from .prune import resolve_layer

    resolve_layer(subject.model, subject.layout.meta.num_classes, layer)  # an unknown --layer before any work
    t0 = time.perf_counter()
    with staging(Path(out)) as tmp:
        ids, scores = ds.score_samples(subject.model, subject.layout, t, subject.device, layer, seed, workers)
        poisoned = set(info.sample_ids) if score else None
        for name, s in scores.items():
            ds.write_ranked(tmp / f"ranked_{name}.csv", ids, s, poisoned)
        res = {"detect": "samples", "checkpoint": subject.ckpt_path, "data": data, "target": t, "layer": layer,
               "seed": seed, "samples": len(ids), "detectors": list(scores),
               "scores": _detector_summary(ids, scores, poisoned)}
        if poisoned is not None:
            labels = [int(i in poisoned) for i in ids]
            ds.plot_pr(tmp / "pr_curve.png", {n: dm.pr_curve(s, labels) for n, s in scores.items()},
                       len(poisoned & set(ids)) / len(ids), f"poisoned training samples: {Path(data).name}")
        res["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(tmp / DETECT, res)
    return res


def run_detect_inputs(ckpt, data: str, testset: str, out, n: int = di.STRIP_N, alpha: float = di.STRIP_ALPHA,
                      seed: int = 0, device: str = "cpu", max_inputs: int | None = None,
                      detectors: Sequence[str] = ("strip", "teco")) -> dict:
    """STRIP and TeCo-like scores of the test set's triggered inputs (positives) and of the same ids of the
    clean data (negatives, the benign twins); overlays from the clean training split."""
    check_output(out)
    subject = open_subject(ckpt, data, device)
    if n < 1:
        raise SegTrainError(f"--overlays {n} must be >= 1 (BackdoorBench: 100)")
    bad = [d for d in detectors if d not in ("strip", "teco")]
    if bad:
        raise SegTrainError(f"unknown detector '{bad[0]}'; valid are {{strip, teco}}")
    tl = open_dataset(testset, generate=False)
    tinfo = read_attack_info(tl.root)
    if tinfo is None or tinfo.kind != "testset":
        raise SegTrainError(f"--test {testset} has no manifest of a Poisoned Test (kind 'testset'), so there is no "
                            f"ground truth of triggered inputs; make one with 'poisongen testset'")
    if tl.meta.names != subject.layout.meta.names:
        raise SegTrainError(f"--test {testset} has another class table than --data {data}")
    m = _manifest.load(tl.root)
    split = tinfo.split or tl.val_split
    records = {str(r["id"]): r for r in m.get("samples", [])}
    ids = list(tinfo.sample_ids)[: max_inputs or None]
    clean_split = {s.id: s for s in subject.layout.samples(split)}
    missing = [i for i in ids if i not in clean_split]
    if missing:
        raise SegTrainError(f"--data {data} has no sample '{missing[0]}' of --test {testset}: not its clean "
                            f"counterpart")
    train_ids = [s.id for s in subject.layout.samples(subject.layout.train_split)]
    rng = np.random.default_rng(seed)
    overlay_ids = [train_ids[i] for i in rng.choice(len(train_ids), size=n, replace=len(train_ids) < n)]
    test_split = {s.id: s for s in tl.samples(split)}
    model = subject.model.eval()
    t0 = time.perf_counter()
    with staging(Path(out)) as tmp:
        by_id = {s.id: s for s in subject.layout.samples(subject.layout.train_split)}
        overlays = [subject.layout.load(by_id[i]).image for i in overlay_ids]
        per = {d: {"trig": [], "benign": [], "pixel_auroc": []} for d in detectors}
        seconds = dict.fromkeys(detectors, 0.0)
        for j, sid in enumerate(ids):
            trig_img = tl.load(test_split[sid]).image
            clean_img = subject.layout.load(clean_split[sid]).image
            window = di.trigger_window(m, records.get(sid, {}), trig_img.shape[:2])
            for d in detectors:
                t = time.perf_counter()
                for kind, img in (("trig", trig_img), ("benign", clean_img)):
                    if d == "strip":
                        s, pix = di.strip_score(model, img, overlays, subject.device, alpha)
                    else:
                        s, pix = di.teco_score(model, img, subject.device, seed, key=2 * j + (kind == "trig"))
                    per[d][kind].append(s)
                    if kind == "trig" and window is not None:
                        per[d]["pixel_auroc"].append(dm.auroc(pix.ravel(), window.ravel()))
                seconds[d] += time.perf_counter() - t
        scores = {}
        for d in detectors:
            s = per[d]["trig"] + per[d]["benign"]
            labels = [1] * len(ids) + [0] * len(ids)
            entry = dm.summary(s, labels, fpr=0.05)
            entry["tpr_at_fpr_0.1"] = dm.tpr_at_fpr(s, labels, di.STRIP_FPR)
            px = [a for a in per[d]["pixel_auroc"] if a is not None]
            entry["pixel_auroc"] = float(np.mean(px)) if px else None
            entry["pixel_auroc_images"] = len(px)
            entry["seconds"] = round(seconds[d], 3)
            scores[d] = entry
        with (tmp / "scores.csv").open("w") as f:
            f.write("id,input," + ",".join(detectors) + "\n")
            for kind in ("trig", "benign"):
                for j, sid in enumerate(ids):
                    f.write(f"{sid},{'triggered' if kind == 'trig' else 'benign'},"
                            + ",".join(f"{per[d][kind][j]:.9g}" for d in detectors) + "\n")
        res = {"detect": "inputs", "checkpoint": subject.ckpt_path, "data": data, "testset": testset,
               "inputs": len(ids), "seed": seed, "detectors": list(detectors),
               "settings": {"strip": {"overlays": n, "alpha": alpha, "fpr": di.STRIP_FPR, "overlay_ids": overlay_ids,
                                      "overlay_split": subject.layout.train_split},
                            "teco": {"corruptions": list(di.CORRUPTIONS), "severities": list(di.SEVERITIES)}},
               "negatives": f"the same ids of --data's '{split}' split (benign twins)",
               "scores": scores, "seconds": round(time.perf_counter() - t0, 3)}
        write_json(tmp / DETECT, res)
    return res
