"""The ``segtrain`` command line: ``run`` (train + evaluate), ``evaluate`` (a checkpoint) and ``score``
(prediction PNGs). Every user error is one red line with exit code 2."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from poisongen.cli import ErrorsAsOneLine
from poisongen.config import parse_size
from poisongen.datasets import Layout, open_dataset
from poisongen.errors import PoisonGenError

from .checkpoint import check_classes, model_from_checkpoint
from .checkpoint import load as load_checkpoint
from .config import TrainConfig
from .data import AttackInfo, SegDataset, read_attack_info
from .engine import evaluate, resolve_device
from .errors import SegTrainError
from .metrics import MetricAccumulator, nan_to_none, ratio
from .runner import prepare, train_run

app = typer.Typer(
    cls=ErrorsAsOneLine,
    name="segtrain",
    help="Train and evaluate segmentation models on clean or poisoned datasets: CBA, PBA, ASR, clean ASR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()




def resolve_attack(layout: Layout, info: AttackInfo | None, victim: str | None, target: str | None):
    """Victim tuple and target from flags (names or ids) or else from the manifest."""
    v = layout.meta.parse_classes(victim) if victim else (info.victim if info else ())
    if target is not None and target.strip().lower() in ("none", "null", ""):
        t = None
    elif target is not None:
        t = layout.meta.class_id(target)
    else:
        t = info.target if info else None
    return tuple(v), t


def _f(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def report(model, data: str, testsets: list[str], device, victim_flag, target_flag, crop, workers, amp,
           trained_on: tuple[tuple[int, ...], int | None] = ((), None)) -> dict:
    """CBA on DATA's val split; per poisoned test set PBA, ASR and clean ASR (on the same ids of DATA).

    A test set with target labels (fgba, badnets, instance) also gets the fine-grained metrics
    (mIOU-B / PA-B on the benign val split, mIOU-A / PA-A / ASR against its target labels); a
    conditional test set is reported twice, for its images with and without the condition.

    Victim and target: the flags, else DATA's manifest, else ``trained_on`` (the attack the model's
    training data recorded). A test set names its victim; it names no target when its labels are
    untouched (IBA's Poisoned Test), and then ASR counts victim pixels predicted as the model's target."""
    layout = open_dataset(data)
    info = read_attack_info(layout.root)
    victim, target = resolve_attack(layout, info, victim_flag, target_flag)
    if not victim and victim_flag is None:
        victim = tuple(trained_on[0])
    if target is None and target_flag is None:
        target = trained_on[1]
    n = layout.meta.num_classes
    names = layout.meta.names
    val = SegDataset(layout, layout.val_split)
    benign = evaluate(model, val, device, n, victim, target, crop=crop, workers=workers, amp=amp)
    res = {
        "data": str(data),
        "victim": list(victim),
        "target": target,
        "benign": {"split": layout.val_split, "samples": len(val), "cba": nan_to_none(benign.miou()),
                   **benign.summary(names)},
        "poisoned": [],
    }
    if victim:
        res["benign"]["clean_asr"] = res["benign"].pop("asr")
        res["benign"].pop("pba", None)  # PBA is a poisoned-test metric
    for ts in testsets:
        tl = open_dataset(ts)
        if tl.meta.names != names:
            raise PoisonGenError(f"test set {ts} has another class table than {data}")
        tinfo = read_attack_info(tl.root)
        if tinfo is None:
            raise PoisonGenError(f"test set {ts} has no manifest.json; make one with 'poisongen testset'")
        if tinfo.kind != "testset":
            raise PoisonGenError(f"{ts} is a poisoned {tinfo.kind} set, not a test set (manifest kind '{tinfo.kind}')")
        if not tinfo.sample_ids:
            raise PoisonGenError(f"test set {ts} lists no poisoned samples")
        tv, tt = resolve_attack(tl, tinfo, victim_flag, target_flag)
        if tt is None and target_flag is None:
            tt = target
        split = tinfo.split or tl.val_split
        subsets: list[tuple[str | None, tuple[str, ...]]] = [(None, tinfo.sample_ids)]
        if tinfo.condition is not None:
            subsets = [(name, tuple(i for i in tinfo.sample_ids if tinfo.condition.get(i) == flag))
                       for name, flag in (("condition present", True), ("condition absent", False))]
        for subset, ids in subsets:
            if not ids:
                continue
            pois = evaluate(model, SegDataset(tl, split, ids=ids, target_labels=tinfo.target_labels), device, n,
                            tv, tt, crop=crop, workers=workers, amp=amp)
            if (tv, tt) == (victim, target) and split == layout.val_split:
                clean_hits = benign.subset_hits(ids)
            else:
                clean = evaluate(model, SegDataset(layout, split, ids=ids), device, n, tv, tt, crop=crop,
                                 workers=workers, amp=amp)
                clean_hits = clean.hits
            s = pois.summary(names)
            entry = {
                "testset": str(ts),
                "attack": tinfo.attack,
                "subset": subset,
                "band": None if tinfo.band is None else [tinfo.band[0], None if math.isinf(tinfo.band[1]) else tinfo.band[1]],
                "band_label": tinfo.band_label(),
                "split": split,
                "samples": len(ids),
                "victim": list(tv),
                "target": tt,
                "pba": s.get("pba"),
                "asr": s.get("asr"),
                "clean_asr": nan_to_none(ratio(*clean_hits)),
                "victim_pixels": s.get("victim_pixels"),
                "miou": s["miou"],
                "iou_per_class": s["iou_per_class"],
                "fingerprint": tinfo.fingerprint,
            }
            if tinfo.target_labels:
                entry["fine_grained"] = {"miou_b": res["benign"]["cba"], "pa_b": res["benign"]["pixel_acc"],
                                         **s["fine_grained"], "attacked_pixels": pois.changed_pixels}
            res["poisoned"].append(entry)
    return res


def print_report(res: dict) -> None:
    """The metrics table: IBA's CBA / PBA / ASR / clean ASR; when a test set has target labels, also the
    fine-grained paper's PA-B, mIOU-A / PA-A and its ASR (accuracy over pixels whose target differs from
    GT), with CBA = mIOU-B and PA-B from the benign row."""
    fine = any(p.get("fine_grained") for p in res["poisoned"])
    cols = ["set", "band", "samples", "CBA / mIOU-B" if fine else "CBA", "PBA", "ASR", "clean ASR"]
    if fine:
        cols[4:4] = ["PA-B"]
        cols += ["mIOU-A", "PA-A"]
    t = Table(title="segtrain metrics (%)")
    for col in cols:
        t.add_column(col, no_wrap=col != "set")
    b = res["benign"]
    row = [f"benign {b['split']}", "-", str(b["samples"]), _f(b["cba"]), "-", "-", _f(b.get("clean_asr"))]
    if fine:
        row[4:4] = [_f(b.get("pixel_acc"))]
        row += ["-", "-"]
    t.add_row(*row)
    for p in res["poisoned"]:
        fg = p.get("fine_grained")
        name = Path(p["testset"]).name + (f" [{p['subset']}]" if p.get("subset") else "") + (" (fine-grained ASR)" if fg else "")
        row = [name, p["band_label"] or "-", str(p["samples"]), "-", _f(p["pba"]), _f(fg["asr"] if fg else p["asr"]),
               _f(p["clean_asr"])]
        if fine:
            row[4:4] = ["-"]
            row += [_f(fg["miou_a"] if fg else None), _f(fg["pa_a"] if fg else None)]
        t.add_row(*row)
    out.print(t)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


CURVE = "curve.jsonl"


def curve_point(res: dict, step: int, seconds: float) -> dict:
    """One point of the learning curve: the headline metrics of a :func:`report` at a training step."""
    return {
        "step": step,
        "train_minutes": round(seconds / 60, 3),
        "cba": res["benign"]["cba"],
        "clean_asr": res["benign"].get("clean_asr"),
        "sets": [{"testset": p["testset"], "subset": p.get("subset"), "band": p["band"], "asr": p["asr"],
                  "pba": p["pba"], "clean_asr": p["clean_asr"]} for p in res["poisoned"]],
    }


def train_with_progress(plan, quiet: bool, on_eval=None):
    """:func:`segtrain.runner.train_run` under a rich progress bar (steps, loss, lr, img/s, elapsed,
    remaining) and a log line per logged step, unless quiet."""
    if quiet:
        return train_run(plan, on_eval=on_eval)
    fields = "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[img_s]} img/s"
    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn(fields), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=None, loss="-", lr="-", img_s="-")

        def on_step(step: int, total: int, rec: dict | None) -> None:
            shown = {}
            if rec is not None:
                shown = {"loss": f"{rec['loss']:.4f}", "lr": f"{rec['lr']:.2e}", "img_s": f"{rec['img_s']:.1f}"}
                bar.console.print(f"step {step}/{total} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                                  f"{rec['img_s']:.1f} img/s", highlight=False)
            bar.update(task, completed=step, total=total, **shown)

        return train_run(plan, on_step=on_step, on_eval=on_eval)


def parse_scale(text: str) -> tuple[float, float]:
    """``"0.5,2.0"`` -> (0.5, 2.0); the range itself is checked by :class:`TrainConfig`."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SegTrainError(f"--scale '{text}' must be LO,HI with 0 < LO <= HI (e.g. 0.5,2.0)") from None
    return lo, hi


@app.command()
def run(
    data: Annotated[str, typer.Argument(help="Training dataset folder (clean or poisoned), layout auto-detected.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (config.json, last.pt, log.jsonl, metrics.json).")] = Path("runs/run"),
    arch: Annotated[str, typer.Option(help="pspnet, deeplabv3, fcn or lraspp.")] = "pspnet",
    backbone: Annotated[str | None, typer.Option(help="resnet18/34/50/101 (pspnet), resnet50/101 (deeplabv3, fcn), mobilenet_v3_large or mobilenet_v3 (deeplabv3, lraspp). Default: resnet50 / mobilenet_v3_large.")] = None,
    output_stride: Annotated[int | None, typer.Option("--output-stride", help="8, 16 or 32 for pspnet; the model's own otherwise.")] = None,
    iters: Annotated[int | None, typer.Option(help="Training iterations (exclusive with --epochs).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (exclusive with --iters).")] = None,
    batch: Annotated[int, typer.Option(help="Batch size (>= 2, at most the training split's size).")] = 8,
    crop: Annotated[str, typer.Option(help="Training crop HxW; also the sliding-window size at evaluation. Refused when the estimated memory of one step exceeds the free memory.")] = "512x1024",
    scale: Annotated[str, typer.Option(help="Random scale range LO,HI (0 < LO <= HI).")] = "0.5,2.0",
    lr: Annotated[float, typer.Option(help="Base learning rate (> 0; poly decay, power 0.9).")] = 0.01,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    optimizer: Annotated[str, typer.Option(help="sgd (momentum 0.9) or adamw.")] = "sgd",
    aux: Annotated[bool, typer.Option("--aux/--no-aux", help="Auxiliary head on layer3, loss weight 0.4.")] = True,
    backbone_weights: Annotated[Path | None, typer.Option("--backbone-weights", help="Local torchvision state dict for the backbone.")] = None,
    eval_poisoned: Annotated[list[str] | None, typer.Option("--eval-poisoned", help="Poisoned test set (poisongen testset output); repeatable; checked before training.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast (CUDA only; ignored on CPU).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (CUDA only).")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = min(4, os.cpu_count() or 1),
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt up to --iters/--epochs.")] = False,
    victim: Annotated[str | None, typer.Option(help="Victim classes (names or ids, comma-separated); default from DATA's manifest.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class (name or id); default from DATA's manifest.")] = None,
    log_every: Annotated[int, typer.Option("--log-every", help="Log every N steps (>= 1).")] = 10,
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", help="Save OUT/last.pt every N steps (>= 1) and at the end.")] = 1000,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the final evaluation.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar and no per-step log lines (log.jsonl is still written).")] = False,
    stop_after: Annotated[int | None, typer.Option("--stop-after", help="Save last.pt and stop after this step, keeping the --iters/--epochs schedule (time-limited job slots); continue with --resume.")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Also evaluate every N steps (benign val and each --eval-poisoned set) and append the learning curve to OUT/curve.jsonl: CBA, ASR, PBA, clean ASR vs training minutes. The run itself is unchanged.")] = None,
):
    """Train a model on DATA, then report CBA on DATA's val split and PBA/ASR/clean ASR per --eval-poisoned.

    Every option, the data, --out, the --eval-poisoned test sets, the memory of one step and the --resume
    checkpoint are checked before any folder is created or any step runs."""
    crop_hw = parse_size(crop, "--crop")
    layout = open_dataset(data)
    attack_victim, attack_target = resolve_attack(layout, read_attack_info(layout.root), victim, target)
    cfg = TrainConfig(
        data=str(data), out=str(out_dir), arch=arch, backbone=backbone, output_stride=output_stride, aux=aux,
        iters=iters, epochs=epochs, batch=batch, crop=crop_hw, scale=parse_scale(scale), lr=lr,
        weight_decay=weight_decay, optimizer=optimizer, backbone_weights=str(backbone_weights) if backbone_weights else None,
        device=device, amp=amp, channels_last=channels_last, workers=workers, seed=seed, resume=resume,
        log_every=log_every, ckpt_every=ckpt_every, eval_poisoned=tuple(eval_poisoned or ()),
        quiet=quiet, stop_after=stop_after, eval_every=eval_every, victim=attack_victim, target=attack_target,
    )
    plan = prepare(cfg)
    evaluated: dict[int, dict] = {}

    def on_eval(model, step: int, seconds: float) -> None:
        res = report(model, data, list(cfg.eval_poisoned), plan.device, victim, target, crop_hw, workers, amp)
        evaluated.clear()
        evaluated[step] = res
        point = curve_point(res, step, seconds)
        with (Path(out_dir) / CURVE).open("a") as f:
            f.write(json.dumps(point) + "\n")
        if not quiet:
            console.print(f"eval at step {step} ({point['train_minutes']:.1f} min): CBA {_f(point['cba'])}"
                          + "".join(f", ASR {Path(s['testset']).name} {_f(s['asr'])}" for s in point["sets"]),
                          highlight=False)

    result = train_with_progress(plan, quiet, on_eval if eval_every else None)
    if no_eval or not result.finished:
        return
    res = evaluated.get(result.step) or report(result.model, data, list(cfg.eval_poisoned), result.device, victim,
                                               target, crop_hw, workers, amp)
    res["step"] = result.step
    res["checkpoint"] = str(Path(out_dir) / "last.pt")
    write_json(Path(out_dir) / "metrics.json", res)
    print_report(res)


@app.command("evaluate")
def evaluate_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A last.pt (or a run directory).")],
    data: Annotated[str, typer.Option("--data", help="Clean dataset for CBA (val split) and clean ASR.")],
    poisoned: Annotated[list[str] | None, typer.Option("--poisoned", help="Poisoned test set; repeatable.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    crop: Annotated[str | None, typer.Option(help="Sliding-window size HxW (default: the training crop).")] = None,
    victim: Annotated[str | None, typer.Option(help="Victim classes; default from the manifests.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class; default from the manifests.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp")] = False,
):
    """Evaluate a checkpoint: CBA, and PBA / ASR / clean ASR per poisoned test set."""
    dev = resolve_device(device)
    ck = load_checkpoint(ckpt)
    layout = open_dataset(data)
    check_classes(ck, layout.meta.names, f"dataset {data}")
    model = model_from_checkpoint(ck, dev)
    crop_hw = parse_size(crop, "--crop") if crop else tuple(ck["config"].get("crop") or ()) or None
    trained_on = (tuple(ck["config"].get("victim") or ()), ck["config"].get("target"))
    res = report(model, data, list(poisoned or []), dev, victim, target, crop_hw, 0, amp, trained_on)
    res["checkpoint"] = str(ckpt)
    res["step"] = ck.get("step")
    if json_out:
        write_json(json_out, res)
    print_report(res)


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


def find_prediction(index: dict[str, Path], sample) -> Path | None:
    img = Path(sample.image)
    for name in (f"{sample.id}.png", img.name, img.stem + ".png"):
        if name in index:
            return index[name]
    return None


def read_prediction(path: Path, shape: tuple[int, int], n: int) -> np.ndarray:
    from PIL import Image

    try:
        arr = np.array(Image.open(path))
    except Exception as exc:  # noqa: BLE001
        raise PoisonGenError(f"cannot read prediction {path}: {exc}") from None
    if arr.ndim != 2:
        raise PoisonGenError(f"prediction {path} must be a single-channel PNG of train ids, got shape {arr.shape}")
    if arr.shape != shape:
        raise PoisonGenError(f"prediction {path} is {arr.shape[1]}x{arr.shape[0]}, its label {shape[1]}x{shape[0]} (WxH)")
    if arr.size and int(arr.max()) >= n:
        raise PoisonGenError(f"prediction {path} holds value {int(arr.max())} outside the train ids 0..{n - 1}")
    return arr


@app.command()
def score(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of prediction PNGs (uint8 train ids), '<sample id>.png' or the image's file name, flat or nested.")],
    data: Annotated[str, typer.Option("--data", help="Dataset with the ground truth.")],
    split: Annotated[str | None, typer.Option(help="Split to score (default: the layout's val split).")] = None,
    victim: Annotated[str | None, typer.Option(help="Victim classes (names or ids); default from DATA's manifest.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class; default from DATA's manifest.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
):
    """Score prediction PNGs against a dataset: mIoU, pixel accuracy, per-class IoU (+ ASR, PBA)."""
    layout = open_dataset(data)
    info = read_attack_info(layout.root)
    v, t = resolve_attack(layout, info, victim, target)
    split = split or layout.val_split
    n = layout.meta.num_classes
    index = index_predictions(pred)
    acc = MetricAccumulator(n, v, t)
    samples = layout.samples(split)
    for s in samples:
        p = find_prediction(index, s)
        if p is None:
            raise PoisonGenError(f"no prediction for sample '{s.id}' under {pred} (looked for {s.id}.png or "
                                 f"{Path(s.image).stem}.png)")
        gt = layout.read_label(s)
        pr = read_prediction(p, gt.shape, n)
        acc.update(torch.from_numpy(pr.astype(np.int64))[None], torch.from_numpy(gt.astype(np.int64))[None], ids=[s.id])
    res = {"data": str(data), "split": split, "samples": len(samples), **acc.summary(layout.meta.names)}
    if v:
        res["victim"], res["target"] = list(v), t
    if json_out:
        write_json(json_out, res)
    tab = Table(title=f"score {pred} vs {data} [{split}]")
    for col in ("samples", "mIoU", "PA") + (("PBA", "ASR") if v else ()):
        tab.add_column(col)
    row = [str(len(samples)), _f(res["miou"]), _f(res["pixel_acc"])] + ([_f(res["pba"]), _f(res["asr"])] if v else [])
    tab.add_row(*row)
    out.print(tab)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
