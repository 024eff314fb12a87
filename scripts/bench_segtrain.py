#!/usr/bin/env python
"""Benchmark segtrain against a minimal plain PyTorch loop; writes JSON and prints a line per figure.

Figures (images per second, steady state):
* training: ``segtrain.engine.fit`` (seeded step batches and per-sample seeded augmentation, the log
  record's loss read every 10 steps as ``run`` does by default) vs a plain loop over the same dataset,
  model, batch, transforms, optimizer and loss (DataLoader with shuffle, ``--workers``, pinned memory and
  persistent workers on CUDA), timed between the end of step ``--warmup`` and the end of step
  ``--warmup + --steps``;
* fine-tuning (``--finetune F``, default 0.5): ``segtrain.defenses.finetune.tune`` (the defense's path:
  ``fit`` on a seeded clean fraction of the training split, starting from existing weights, with the loss
  hook that records the served samples) vs the plain loop over the same samples (a ``Subset``), both from
  the same initial weights;
* evaluation: ``segtrain.inference.evaluate`` (confusion matrix, victim-ignored matrix and ASR counters
  on the device) vs a plain loop (batch 1, argmax, one bincount confusion matrix), over the val split.

The two sides alternate (A B, then B A, ...) ``--repeat`` times because the machine may be shared; the
JSON keeps every repeat and the load average around each; the summary gives the best of each side,
the medians, and the median of the per-repeat ratios.
Target (issue #4): segtrain / plain >= 1.0. On CUDA, ``--amp`` (bf16 where supported, else fp16 with a
GradScaler) and ``--channels-last`` are on by default and cudnn.benchmark is set, for both sides; on CPU
they are off (fp32, contiguous). On CUDA every run also records its peak memory
(``torch.cuda.max_memory_allocated``, MiB). ``--no-eval`` skips the evaluation figures (scripts/gpu_check.sh
runs the training figure at paper scale, 512x1024 crops, batch 8, fp32 and AMP + channels_last).

    .venv/bin/python scripts/bench_segtrain.py --size 128x256 --batch 4 --steps 20 --out bench/segtrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisongen.datasets import open_dataset  # noqa: E402
from poisongen.datasets.synthetic import generate  # noqa: E402
from segtrain.config import TrainConfig  # noqa: E402
from segtrain.data import SegDataset, collate  # noqa: E402
from segtrain.engine import (  # noqa: E402
    Hooks,
    amp_dtype,
    fit,
    make_optimizer,
    resolve_device,
    seed_everything,
    seg_loss,
)
from segtrain.inference import class_map, evaluate  # noqa: E402
from segtrain.metrics import MetricAccumulator, confusion_matrix  # noqa: E402
from segtrain.models import build_model  # noqa: E402
from segtrain.transforms import train_transform  # noqa: E402

CAR, ROAD = 13, 0


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_marks(args, device: torch.device):
    """An ``on_step`` hook that notes the time at the end of step ``warmup`` and ``warmup + steps``."""
    marks: dict[int, float] = {}
    first, last = args.warmup, args.warmup + args.steps

    def on_step(step, total, rec):
        if step in (first, last):
            sync(device)
            marks[step] = time.perf_counter()

    return on_step, marks, first, last


def segtrain_train(args, data: Path, device: torch.device) -> float:
    """img/s of segtrain's own loop (:func:`segtrain.engine.fit` on a model built here, as ``run`` builds
    it) between step ``warmup`` and ``warmup + steps``."""
    on_step, marks, first, last = step_marks(args, device)

    cfg = TrainConfig(data=str(data), arch=args.arch, backbone=args.backbone, iters=last, batch=args.batch,
                      crop=args.crop, lr=0.01, device=str(device), amp=args.amp, channels_last=args.channels_last,
                      workers=args.workers, seed=0, log_every=10, quiet=True)
    layout = open_dataset(data)
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, layout.meta.num_classes, cfg.backbone, cfg.output_stride, cfg.aux)
    train_data = SegDataset(layout, layout.train_split, train_transform(cfg.crop, cfg.scale))
    fit(model, train_data, cfg, Hooks(on_step=on_step))
    return args.steps * args.batch / (marks[last] - marks[first])


def finetune_subject(args, data: Path, device: torch.device):
    """A subject to fine-tune: a seeded model as if loaded from a checkpoint of this recipe."""
    from segtrain.defenses.common import Subject

    layout = open_dataset(data)
    cfg = TrainConfig(data=str(data), arch=args.arch, backbone=args.backbone, batch=args.batch, crop=args.crop,
                      lr=0.01, device=str(device), amp=args.amp, channels_last=args.channels_last,
                      workers=args.workers, iters=1)
    seed_everything(1)
    model = build_model(cfg.arch, layout.meta.num_classes, cfg.backbone, cfg.output_stride, cfg.aux)
    ckpt = {"config": cfg.to_dict(), "num_classes": layout.meta.num_classes, "class_names": layout.meta.names,
            "model": {k: v.clone() for k, v in model.state_dict().items()}}
    return Subject("bench", ckpt, model.to(device), layout, str(data), device)


def segtrain_finetune(args, data: Path, device: torch.device) -> float:
    """img/s of the fine-tuning defense's path (``tune``: ``fit`` on a clean fraction, from given weights)."""
    from segtrain.defenses.finetune import clean_ids, tune

    subject = finetune_subject(args, data, device)
    ids = clean_ids(subject, args.finetune, 0)
    on_step, marks, first, last = step_marks(args, device)

    tune(subject, subject.model, ids, iters=last, batch=args.batch, seed=0, workers=args.workers, on_step=on_step)
    return args.steps * args.batch / (marks[last] - marks[first])


def plain_finetune(args, data: Path, device: torch.device) -> float:
    """The plain loop over the same clean samples (a Subset), from the same weights."""
    from segtrain.defenses.finetune import clean_ids

    subject = finetune_subject(args, data, device)
    ids = set(clean_ids(subject, args.finetune, 0))
    index = [i for i, s in enumerate(subject.layout.samples(subject.layout.train_split)) if s.id in ids]
    return plain_train(args, data, device, index, subject.model)


def plain_train(args, data: Path, device: torch.device, index=None, model=None) -> float:
    """img/s of a minimal PyTorch loop: the same data, model, optimizer, loss and device options
    (``index``: a subset of the training split; ``model``: start from it)."""
    from torch.utils.data import Subset

    seed_everything(0)
    layout = open_dataset(data)
    ds = SegDataset(layout, layout.train_split, train_transform(args.crop))
    if index is not None:
        ds = Subset(ds, index)
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        pin_memory=cuda, persistent_workers=args.workers > 0, collate_fn=collate)
    model = (model if model is not None else build_model(args.arch, layout.meta.num_classes, args.backbone)).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    if cuda and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = args.amp and cuda
    dtype = amp_dtype() if amp else torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    cfg = TrainConfig(iters=1, lr=0.01)
    opt = make_optimizer(cfg, model)
    model.train()
    step, first, last = 0, args.warmup, args.warmup + args.steps
    t0 = t1 = 0.0
    while step < last:
        for images, labels, _ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if cuda and args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=dtype, enabled=amp):
                out = model(images)
            loss = seg_loss(out, labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            if step == first:
                sync(device)
                t0 = time.perf_counter()
            if step == last:
                sync(device)
                t1 = time.perf_counter()
                break
    return args.steps * args.batch / (t1 - t0)


def eval_model(args, data: Path, device: torch.device) -> torch.nn.Module:
    layout = open_dataset(data)
    torch.manual_seed(0)
    model = build_model(args.arch, layout.meta.num_classes, args.backbone).to(device).eval()
    if device.type == "cuda" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def segtrain_eval(args, data: Path, device: torch.device, model) -> float:
    layout = open_dataset(data)
    ds = SegDataset(layout, layout.val_split)
    sync(device)
    t = time.perf_counter()
    evaluate(model, ds, device, layout.meta.num_classes, victim=(CAR,), target=ROAD, workers=args.workers,
             amp=args.amp)
    sync(device)
    return len(ds) / (time.perf_counter() - t)


@torch.no_grad()
def plain_eval(args, data: Path, device: torch.device, model) -> float:
    layout = open_dataset(data)
    ds = SegDataset(layout, layout.val_split)
    n = layout.meta.num_classes
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=1, num_workers=args.workers, pin_memory=cuda, collate_fn=collate)
    cm = torch.zeros(n, n, dtype=torch.int64, device=device)
    sync(device)
    t = time.perf_counter()
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=amp_dtype() if cuda else torch.float32, enabled=args.amp and cuda):
            pred = model(images)["out"].argmax(1)
        cm += confusion_matrix(pred, labels.to(device, non_blocking=True), n)
    cm.cpu()
    sync(device)
    return len(ds) / (time.perf_counter() - t)


def postprocess_cpu_ms(num_classes: int, size: tuple[int, int], repeat: int = 30) -> dict:
    """CPU ms per image of what evaluation does after the forward pass, in this process (CPU time, so
    little disturbed by other processes): segtrain (``class_map`` + ``MetricAccumulator.update`` with a
    victim, a target and sample ids) vs plain (``argmax(1)`` + one confusion matrix); medians."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, num_classes, *size, generator=g)
    gt = torch.randint(0, num_classes, (1, *size), generator=g)
    acc = MetricAccumulator(num_classes, (CAR,), ROAD)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def seg():
        acc.update(class_map(logits), gt, ids=["x"])

    def plain():
        cm.add_(confusion_matrix(logits.argmax(1), gt, num_classes))

    times = {"segtrain": [], "plain": []}
    for r in range(repeat):
        for name, f in (("segtrain", seg), ("plain", plain))[:: 1 if r % 2 == 0 else -1]:
            t = time.process_time()
            f()
            times[name].append(time.process_time() - t)
    return {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}


def eval_cpu_s(args, data: Path, device: torch.device, model, repeat: int) -> dict:
    """CPU seconds of this process for one evaluation pass over the val split with ``--workers 0`` (data
    loading included), alternating the sides; CPU time is little disturbed by other processes."""
    one = argparse.Namespace(**{**vars(args), "workers": 0})
    times = {"segtrain": [], "plain": []}
    for r in range(repeat):
        for name in ("segtrain", "plain")[:: 1 if r % 2 == 0 else -1]:
            t = time.process_time()
            (segtrain_eval if name == "segtrain" else plain_eval)(one, data, device, model)
            times[name].append(round(time.process_time() - t, 4))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"runs": times, "segtrain_median": med["segtrain"], "plain_median": med["plain"],
            "ratio": round(med["plain"] / med["segtrain"], 3)}


def alternate(runs: dict, repeat: int) -> dict:
    """Run the two sides alternately (A B, B A, ...); every figure with the load average around it and,
    on CUDA, the run's peak allocated memory."""
    res = {k: [] for k in runs}
    names = list(runs)
    cuda = torch.cuda.is_available()
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            before = load()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            v = runs[name]()
            rec = {"img_s": round(v, 3), "load_before": before, "load_after": load()}
            if cuda:
                rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            res[name].append(rec)
    return res


def summary(res: dict) -> dict:
    """Best-of (the code's speed when the shared machine left it alone), medians, and the median of the
    per-repeat ratios (each segtrain run against the plain run next to it, under about the same load)."""
    seg, plain = ([x["img_s"] for x in res[k]] for k in ("segtrain", "plain"))
    pairs = [a / b for a, b in zip(seg, plain, strict=True)]
    return {"segtrain_best": max(seg), "plain_best": max(plain), "ratio_best": round(max(seg) / max(plain), 3),
            "segtrain_median": statistics.median(seg), "plain_median": statistics.median(plain),
            "pair_ratios": [round(r, 3) for r in pairs], "ratio_pairs_median": round(statistics.median(pairs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="pspnet")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", default="128x256", help="synthetic image size HxW")
    ap.add_argument("--crop", default=None, help="training crop HxW (default: --size)")
    ap.add_argument("--train", type=int, default=32, help="training images")
    ap.add_argument("--val", type=int, default=16, help="val images (evaluation figure)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (workers start, allocator)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--finetune", type=float, default=0.5, help="clean fraction of the fine-tuning figure (0: skip)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for both sides (default: torch's); 1 on a loaded machine, where "
                         "OpenMP threads waiting on busy cores can be many times slower")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (fp16 + GradScaler without bf16); default: on with CUDA, off on CPU")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels_last model and batches; default: on with CUDA, off on CPU")
    ap.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                    help="also the evaluation figures (default on)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "segtrain.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    args.crop = tuple(int(v) for v in (args.crop or args.size).lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if not cuda and (args.amp or args.channels_last):
        print("no CUDA: --amp and --channels-last are ignored (fp32, contiguous)", file=sys.stderr)
    args.amp = cuda if args.amp is None else args.amp and cuda
    args.channels_last = cuda if args.channels_last is None else args.channels_last and cuda
    data = args.work / f"synthetic_{args.train}_{args.val}_{h}x{w}"
    if not data.is_dir():
        generate(data, train=args.train, val=args.val, size=(h, w), seed=0, jobs=os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)

    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "config": {"finetune_fraction": args.finetune, "arch": args.arch, "backbone": args.backbone, "size": [h, w],
                   "crop": list(args.crop),
                   "train": args.train, "val": args.val, "batch": args.batch, "steps": args.steps,
                   "warmup": args.warmup, "repeat": args.repeat, "workers": args.workers, "amp": args.amp,
                   "channels_last": args.channels_last, "threads": torch.get_num_threads(),
                   "amp_dtype": str(amp_dtype()).removeprefix("torch.") if args.amp else None},
        "load_start": load(),
    }
    results["train"] = alternate({"segtrain": lambda: segtrain_train(args, data, device),
                                  "plain": lambda: plain_train(args, data, device)}, args.repeat)
    if args.finetune:
        results["finetune"] = alternate({"segtrain": lambda: segtrain_finetune(args, data, device),
                                         "plain": lambda: plain_finetune(args, data, device)}, args.repeat)
    if args.eval:
        model = eval_model(args, data, device)
        plain_eval(args, data, device, model)  # warm-up pass (allocator, cudnn.benchmark)
        results["eval"] = alternate({"segtrain": lambda: segtrain_eval(args, data, device, model),
                                     "plain": lambda: plain_eval(args, data, device, model)}, args.repeat)
        if device.type == "cpu":
            results["eval_cpu_s_workers0"] = eval_cpu_s(args, data, device, model, max(2, args.repeat))
        results["eval_postprocess_cpu_ms"] = postprocess_cpu_ms(open_dataset(data).meta.num_classes, (h, w))
    results["load_end"] = load()
    results["summary"] = {part: summary(results[part]) for part in ("train", "finetune", "eval") if part in results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for part, s in results["summary"].items():
        print(f"{part:5s} best: segtrain {s['segtrain_best']:7.2f} img/s, plain {s['plain_best']:7.2f} img/s, "
              f"ratio {s['ratio_best']:.3f}; median of paired ratios {s['ratio_pairs_median']:.3f} "
              f"({'met' if min(s['ratio_best'], s['ratio_pairs_median']) >= 1.0 else 'MISSED'}: >= 1.0)")
    if "eval_cpu_s_workers0" in results:
        e = results["eval_cpu_s_workers0"]
        print(f"eval  CPU s per pass with --workers 0 (median): segtrain {e['segtrain_median']:.3f}, plain "
              f"{e['plain_median']:.3f}, speed ratio {e['ratio']:.3f}")
    pp = results.get("eval_postprocess_cpu_ms")
    if pp:
        print(f"eval  after the forward pass, CPU ms per {h}x{w} image: segtrain {pp['segtrain']:.2f}, "
              f"plain {pp['plain']:.2f}")
    print(f"load average start {results['load_start']} end {results['load_end']}; JSON in {args.out}")


if __name__ == "__main__":
    main()
