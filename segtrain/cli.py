"""The ``segtrain`` command line: ``run`` (train + evaluate), ``evaluate`` (a checkpoint) and ``score``
(prediction PNGs). Every user error is one red line with exit code 2."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from poisongen.config import parse_size
from poisongen.console import ErrorsAsOneLine, one_line_warnings
from poisongen.datasets import open_dataset
from poisongen.errors import ConfigError
from poisongen.writer import staging

from . import distributed
from .checkpoint import check_classes, model_from_checkpoint
from .checkpoint import load as load_checkpoint
from .config import TrainConfig
from .data import read_attack_info
from .engine import resolve_device
from .errors import SegTrainError
from .evaluate import (
    PROTOCOLS,
    ModelPredictor,
    PngPredictor,
    backdoor_report,
    check_testsets,
    get_protocol,
    resolve_attack,
    score_one_set,
)
from .output import percent, write_json
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




def report(model, data: str, testsets: list[str], device, victim_flag, target_flag, crop, workers, amp,
           trained_on: tuple[tuple[int, ...], int | None] = ((), None), protocol: str = "paper",
           save_predictions: Path | None = None) -> dict:
    """:func:`segtrain.evaluate.backdoor_report` of ``model`` (the protocol lives there; this only builds
    the predictor)."""
    proto = get_protocol(protocol)
    predict = ModelPredictor(model, device, crop, workers, amp, flip=proto.flip, save_dir=save_predictions)
    return backdoor_report(predict, data, testsets, proto, victim_flag, target_flag, trained_on)


def print_report(res: dict) -> None:
    """The metrics table: IBA's CBA / PBA / ASR / clean ASR; when a test set has target labels, also the
    fine-grained paper's PA-B, mIOU-A / PA-A and its ASR (accuracy over pixels whose target differs from
    GT), with CBA = mIOU-B and PA-B from the benign row. A metric not defined for a set shows '-'."""
    fine = any(p.get("fine_grained") for p in res["poisoned"])
    cols = ["set", "band", "samples", "CBA / mIOU-B" if fine else "CBA", "PBA", "ASR", "clean ASR"]
    if fine:
        cols[4:4] = ["PA-B"]
        cols += ["mIOU-A", "PA-A"]
    proto = res.get("protocol", "paper")
    t = Table(title="segtrain metrics (%)" + ("" if proto == "paper" else f", protocol {proto}"))
    for col in cols:
        t.add_column(col, no_wrap=col != "set")
    b = res["benign"]
    row = [f"benign {b['split']}", "-", str(b["samples"]), percent(b["cba"]), "-", "-", percent(b.get("clean_asr"))]
    if fine:
        row[4:4] = [percent(b.get("pixel_acc"))]
        row += ["-", "-"]
    t.add_row(*row)
    for p in res["poisoned"]:
        fg = p.get("fine_grained")
        name = Path(p["testset"]).name + (f" [{p['subset']}]" if p.get("subset") else "") + (" (fine-grained ASR)" if fg else "")
        row = [name, p["band_label"] or "-", str(p["samples"]), "-", percent(p["pba"]), percent(p["asr"]), percent(p["clean_asr"])]
        if fine:
            row[4:4] = ["-"]
            row += [percent(fg["miou_a"] if fg else None), percent(fg["pa_a"] if fg else None)]
        t.add_row(*row)
    out.print(t)
    for p in res["poisoned"]:
        if p.get("counterpart") == "ids":
            out.print(f"note: {res['data']} matches test set {p['testset']} by sample ids only (its files' sha256 "
                      f"differ from those the test manifest recorded or were not recorded)", highlight=False)


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


ProtocolOpt = Annotated[str, typer.Option("--protocol", help=f"Evaluation protocol: {' or '.join(PROTOCOLS)}. paper: SPEC 6 (triggered samples only, classes with a union, plain inference); iba-code: the published IBA code's (every image, absent classes 0, padded flip-averaged inference). docs/metrics.md.")]


@app.command()
def run(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="Training dataset folder (clean or poisoned), layout auto-detected.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (config.json, last.pt, log.jsonl, metrics.json).")] = Path("runs/run"),
    arch: Annotated[str, typer.Option(help="pspnet, deeplabv3, fcn or lraspp (torchvision); segformer, deeplabv3plus, unet, upernet or fpn (smp extra). 'segtrain models' lists them all.")] = "pspnet",
    backbone: Annotated[str | None, typer.Option(help="resnet18/34/50/101 (pspnet), resnet50/101 (deeplabv3, fcn), mobilenet_v3_large or mobilenet_v3 (deeplabv3, lraspp); mit_b0..b2, resnet18/34/50, mobilenet_v2 (smp archs). Default: the arch's ('segtrain models').")] = None,
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
    backbone_weights: Annotated[Path | None, typer.Option("--backbone-weights", help="Local encoder weights (.pth or .safetensors: torchvision, timm or smp state dict) for the backbone.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="Local weights of the whole model (a segtrain last.pt or a state dict of the same arch/backbone/classes) to start from.")] = None,
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
    protocol: ProtocolOpt = "paper",
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Also evaluate every N steps (benign val and each --eval-poisoned set) and append the learning curve to OUT/curve.jsonl: CBA, ASR, PBA, clean ASR vs training minutes. The run itself is unchanged.")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Run on N processes of this node with torchrun (DistributedDataParallel; gloo on CPU, nccl and one GPU per process on CUDA); --batch is the global batch, split over the processes. docs/scaling.md.")] = None,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="SyncBatchNorm across the processes (CUDA only); without it each process normalises with its own share of the batch.")] = False,
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
        weights=str(weights) if weights else None,
        device=device, amp=amp, channels_last=channels_last, workers=workers, seed=seed, resume=resume,
        log_every=log_every, ckpt_every=ckpt_every, eval_poisoned=tuple(eval_poisoned or ()),
        quiet=quiet, stop_after=stop_after, eval_every=eval_every, victim=attack_victim, target=attack_target,
        sync_bn=sync_bn,
    )
    proto = get_protocol(protocol)
    if nproc is not None:
        from .cli_dist import run_on_processes

        return run_on_processes(ctx, nproc, batch, sync_bn, device)
    main = distributed.env_rank() == 0  # only rank 0 writes and prints
    quiet = quiet or not main
    # bad --eval-poisoned sets, or DATA not their clean counterpart: refused before any folder or step
    check_testsets(data, cfg.eval_poisoned, victim, target, option="--eval-poisoned")
    plan = prepare(cfg)
    evaluated: dict[int, dict] = {}

    def on_eval(model, step: int, seconds: float) -> None:
        res = report(model, data, list(cfg.eval_poisoned), plan.device, victim, target, crop_hw, workers, amp,
                     protocol=proto.name)
        evaluated.clear()
        evaluated[step] = res
        if not main:
            return
        point = curve_point(res, step, seconds)
        with (Path(out_dir) / CURVE).open("a") as f:
            f.write(json.dumps(point) + "\n")
        if not quiet:
            console.print(f"eval at step {step} ({point['train_minutes']:.1f} min): CBA {percent(point['cba'])}"
                          + "".join(f", ASR {Path(s['testset']).name} {percent(s['asr'])}" for s in point["sets"]),
                          highlight=False)

    result = train_with_progress(plan, quiet, on_eval if eval_every else None)
    if no_eval or not result.finished:
        return
    res = evaluated.get(result.step) or report(result.model, data, list(cfg.eval_poisoned), result.device, victim,
                                               target, crop_hw, workers, amp, protocol=proto.name)
    if not main:  # every rank evaluated its shards (reduced on every rank); rank 0 writes and prints
        return
    res["step"] = result.step
    res["checkpoint"] = str(Path(out_dir) / "last.pt")
    write_json(Path(out_dir) / "metrics.json", res)
    print_report(res)


PREDICTIONS_INFO = "predictions.json"


@app.command("evaluate")
def evaluate_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A last.pt (or a run directory).")],
    data: Annotated[str, typer.Option("--data", help="Clean dataset for CBA (val split) and clean ASR: the test sets' clean counterpart.")],
    poisoned: Annotated[list[str] | None, typer.Option("--poisoned", help="Poisoned test set; repeatable.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    crop: Annotated[str | None, typer.Option(help="Sliding-window size HxW (default: the training crop).")] = None,
    victim: Annotated[str | None, typer.Option(help="Victim classes; default from the manifests.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class; default from the manifests.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp")] = False,
    protocol: ProtocolOpt = "paper",
    save_predictions: Annotated[Path | None, typer.Option("--save-predictions", help="Write every prediction as a PNG of train ids: DIR/benign/<sample id>.png and DIR/<test set folder name>/<sample id>.png ('segtrain score --pred DIR' reproduces this report).")] = None,
):
    """Evaluate a checkpoint: CBA, and PBA / ASR / clean ASR per poisoned test set."""
    proto = get_protocol(protocol)
    dev = resolve_device(device)
    ck = load_checkpoint(ckpt)
    layout = open_dataset(data)
    check_classes(ck, layout.meta.names, f"dataset {data}")
    model = model_from_checkpoint(ck, dev)
    crop_hw = parse_size(crop, "--crop") if crop else tuple(ck["config"].get("crop") or ()) or None
    trained_on = (tuple(ck["config"].get("victim") or ()), ck["config"].get("target"))
    if save_predictions is None:
        res = report(model, data, list(poisoned or []), dev, victim, target, crop_hw, 0, amp, trained_on, proto.name)
    else:
        if save_predictions.exists() and (not save_predictions.is_dir() or any(save_predictions.iterdir())):
            raise ConfigError(f"--save-predictions {save_predictions} exists and is not an empty folder; give a new one")
        with staging(save_predictions) as tmp:  # a failed or killed evaluation leaves no half-written folder
            res = report(model, data, list(poisoned or []), dev, victim, target, crop_hw, 0, amp, trained_on,
                         proto.name, tmp)
            # what the model was trained for: score's victim/target fallback, as the checkpoint is evaluate's
            write_json(tmp / PREDICTIONS_INFO, {"checkpoint": str(ckpt), "step": ck.get("step"),
                                                "trained_on": {"victim": list(trained_on[0]),
                                                               "target": trained_on[1]}})
    res["checkpoint"] = str(ckpt)
    res["step"] = ck.get("step")
    if json_out:
        write_json(json_out, res)
    print_report(res)


@app.command()
def score(
    pred: Annotated[Path, typer.Option("--pred", help="Prediction PNGs (uint8 train ids). With --poisoned, or when it holds a 'benign' folder: as 'segtrain evaluate --save-predictions' writes them (PRED/benign/, PRED/<test set name>/). Otherwise one set, flat or nested, '<sample id>.png' or the image's file name.")],
    data: Annotated[str, typer.Option("--data", help="Dataset with the ground truth (the benign data with --poisoned; a Poisoned Test is scored as one, over its triggered samples).")],
    poisoned: Annotated[list[str] | None, typer.Option("--poisoned", help="Poisoned test set; repeatable (as for 'segtrain evaluate').")] = None,
    split: Annotated[str | None, typer.Option(help="Split to score (default: the layout's val split; one-set mode only).")] = None,
    victim: Annotated[str | None, typer.Option(help="Victim classes (names or ids); default from DATA's manifest.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class; default from DATA's manifest.")] = None,
    protocol: ProtocolOpt = "paper",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
):
    """Score prediction PNGs against a dataset with the same definitions as 'segtrain evaluate'."""
    proto = get_protocol(protocol)
    if poisoned or (pred / "benign").is_dir():
        if split is not None:
            raise ConfigError("--split applies to scoring one set; with --poisoned the benign split is DATA's val split")
        trained_on: tuple[tuple[int, ...], int | None] = ((), None)
        if (pred / PREDICTIONS_INFO).is_file():
            t_on = json.loads((pred / PREDICTIONS_INFO).read_text()).get("trained_on") or {}
            trained_on = (tuple(t_on.get("victim") or ()), t_on.get("target"))
        res = backdoor_report(PngPredictor(pred, per_set=True), data, list(poisoned or []), proto, victim, target,
                              trained_on)
        res["pred"] = str(pred)
        if json_out:
            write_json(json_out, res)
        print_report(res)
        return
    res = score_one_set(pred, data, split, victim, target, proto)
    if json_out:
        write_json(json_out, res)
    v = bool(res.get("victim"))
    tab = Table(title=f"score {pred} vs {data} [{res['split']}]")
    for col in ("samples", "mIoU", "PA") + (("PBA", "ASR") if v else ()):
        tab.add_column(col)
    row = [str(res["samples"]), percent(res["miou"]), percent(res["pixel_acc"])] + ([percent(res.get("pba")), percent(res.get("asr"))] if v else [])
    tab.add_row(*row)
    out.print(tab)


from .cli_defend import defend_app, detect_app  # noqa: E402 - registered last, beside the other commands

app.add_typer(defend_app, name="defend")
app.add_typer(detect_app, name="detect")
from .cli_experiment import register as _register_experiment  # noqa: E402

_register_experiment(app)
from . import cli_models  # noqa: E402 - registered last, beside the commands above

cli_models.register(app)  # segtrain models, segtrain optimize-trigger


def main() -> None:
    one_line_warnings()
    app()


if __name__ == "__main__":
    main()
