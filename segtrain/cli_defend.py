"""``segtrain defend finetune|prune|fineprune|abl`` and ``segtrain detect samples|inputs``: parse, call
:mod:`segtrain.defenses.runs`, print a table. Every user error is one red line with exit code 2."""

# ruff: noqa: E501 - typer option declarations carry their help text on one line each (as in cli.py)
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from poisongen.console import ErrorsAsOneLine

from .defenses import abl as _abl
from .defenses import detect_inputs as _di
from .defenses import runs
from .defenses.common import parse_counts, parse_fractions
from .defenses.fineprune import DEFAULT_FRACTION
from .defenses.prune import DEFAULT_CALIBRATION
from .errors import SegTrainError
from .output import percent

defend_app = typer.Typer(cls=ErrorsAsOneLine, name="defend", no_args_is_help=True, add_completion=False,
                         pretty_exceptions_enable=False,
                         help="Model repair on a backdoored checkpoint: finetune, prune, fineprune, abl (docs/defenses.md).")
detect_app = typer.Typer(cls=ErrorsAsOneLine, name="detect", no_args_is_help=True, add_completion=False,
                         pretty_exceptions_enable=False,
                         help="Detect poisoned training samples or triggered test inputs, scored by the manifests.")
out = Console()

Ckpt = Annotated[Path, typer.Argument(help="The backdoored last.pt (or its run directory).")]
Data = Annotated[str, typer.Option("--data", help="The CLEAN dataset: fine-tuning / calibration samples (train split), CBA and clean ASR (val split).")]
Tests = Annotated[list[str] | None, typer.Option("--test", help="Poisoned Test set (poisongen testset); repeatable: PBA, ASR, clean ASR per set.")]
Out = Annotated[Path, typer.Option("--out", help="New output folder: defense.json, the defended checkpoint(s).")]
Seed = Annotated[int, typer.Option(help="Seed of the clean-sample choice and of fine-tuning.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Protocol = Annotated[str, typer.Option("--protocol", help="paper or iba-code (docs/metrics.md).")]
Victim = Annotated[str | None, typer.Option(help="Victim classes; default from the manifests.")]
Target = Annotated[str | None, typer.Option(help="Target class; default from the manifests.")]
Workers = Annotated[int, typer.Option(help="DataLoader workers.")]
Epochs = Annotated[int, typer.Option(help="Fine-tuning epochs over the chosen clean samples.")]
Lr = Annotated[float | None, typer.Option(help="Fine-tuning learning rate (poly decay); default the checkpoint's.")]
Batch = Annotated[int | None, typer.Option(help="Fine-tuning batch; default the checkpoint's (at most the samples).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No table.")]


def print_defense(res: dict) -> None:
    """One row for the model before, then one per fraction / k: CBA, clean ASR, PBA / ASR / clean ASR per set."""
    rows = [("before", res["before"])]
    for r in res["rows"]:
        if "fraction" in r and "k" not in r:
            label = f"fraction {r['fraction']:g} ({r['samples']} samples)"
        elif "k" in r:
            label = f"k {r['k']}" + (f" (given {r['k_given']})" if r.get("k_given") != r["k"] else "")
            if "fraction" in r:
                label += f" + finetune {r['fraction']:g}"
        else:
            iso = r["isolation"]
            label = f"ABL ({iso['truly_poisoned']}/{iso['isolated']} isolated poisoned)"
        rows.append((label, r["after"]))
    t = Table(title=f"segtrain defend {res['defense']} (%)")
    sets = res["before"]["sets"]
    cols = ["model", "CBA", "clean ASR"] + [f"{c} {s['testset']} {s['band'] or ''}".strip()
                                           for s in sets for c in ("PBA", "ASR", "clean ASR")]
    for c in cols:
        t.add_column(c, no_wrap=c == "model")
    for label, h in rows:
        t.add_row(label, percent(h["cba"]), percent(h["clean_asr"]),
                  *[percent(s[k]) for s in h["sets"] for k in ("pba", "asr", "clean_asr")])
    out.print(t)


@defend_app.command("finetune")
def finetune_cmd(ckpt: Ckpt, data: Data, out_dir: Out, test: Tests = None,
                 fraction: Annotated[str, typer.Option("--fraction", help="Clean fractions of the training split, each in (0, 1]; one row each.")] = "0.01,0.05,0.10",
                 epochs: Epochs = 10, lr: Lr = None, batch: Batch = None, seed: Seed = 0, device: Device = "cpu",
                 protocol: Protocol = "paper", victim: Victim = None, target: Target = None, workers: Workers = 0,
                 quiet: Quiet = False):
    """Fine-tune on seeded clean fractions of the training split (IBA 5.5); one row per fraction."""
    res = runs.run_finetune(ckpt, data, test or [], out_dir, parse_fractions(fraction), epochs, lr, batch, seed,
                            device, protocol, victim, target, workers)
    if not quiet:
        print_defense(res)


Channels = Annotated[str, typer.Option("--channels", help="Channels to zero, cumulative (the paper's 5,15,30 of 256).")]
Of = Annotated[int | None, typer.Option("--of", help="Scale --channels from a layer of this width: k * width / OF (e.g. --of 256 for the paper's counts); default: absolute counts.")]
Layer = Annotated[str | None, typer.Option("--layer", help="Conv layer to prune (default: the last conv+BN before the classifier).")]
Calib = Annotated[float, typer.Option("--calibration", help="Clean share of the training split whose activations rank the channels.")]


def _fraction(v: float, option: str) -> float:
    return parse_fractions([v], option)[0]


@defend_app.command("prune")
def prune_cmd(ckpt: Ckpt, data: Data, out_dir: Out, test: Tests = None, channels: Channels = "5,15,30",
              of: Of = None, layer: Layer = None, calibration: Calib = DEFAULT_CALIBRATION, seed: Seed = 0,
              device: Device = "cpu", protocol: Protocol = "paper", victim: Victim = None, target: Target = None,
              workers: Workers = 0, quiet: Quiet = False):
    """Zero the k least active channels of the last conv layer (one activation pass), evaluate after each k."""
    res = runs.run_prune(ckpt, data, test or [], out_dir, parse_counts(channels, "--channels"), layer,
                         _check_of(of), _fraction(calibration, "--calibration"), seed, device, protocol, victim,
                         target, workers)
    if not quiet:
        print_defense(res)


def _check_of(of: int | None) -> int | None:
    if of is not None and of < 1:
        raise SegTrainError(f"--of {of} must be a channel count >= 1 (e.g. 256)")
    return of


@defend_app.command("fineprune")
def fineprune_cmd(ckpt: Ckpt, data: Data, out_dir: Out, test: Tests = None, channels: Channels = "5,15,30",
                  of: Of = None, layer: Layer = None, calibration: Calib = DEFAULT_CALIBRATION,
                  fraction: Annotated[float, typer.Option("--fraction", help="Clean share for fine-tuning after pruning (BackdoorBench 5 %).")] = DEFAULT_FRACTION,
                  epochs: Epochs = 10, lr: Lr = None, batch: Batch = None, seed: Seed = 0, device: Device = "cpu",
                  protocol: Protocol = "paper", victim: Victim = None, target: Target = None, workers: Workers = 0,
                  quiet: Quiet = False):
    """Prune, then fine-tune with the pruned channels held at 0; one row per k."""
    fine = {"fraction": _fraction(fraction, "--fraction"), "epochs": epochs, "lr": lr, "batch": batch}
    res = runs.run_prune(ckpt, data, test or [], out_dir, parse_counts(channels, "--channels"), layer,
                         _check_of(of), _fraction(calibration, "--calibration"), seed, device, protocol, victim,
                         target, workers, fine=fine)
    if not quiet:
        print_defense(res)


@defend_app.command("abl")
def abl_cmd(ckpt: Ckpt, data: Data, out_dir: Out,
            train: Annotated[str, typer.Option("--train", help="The POISONED training copy (with its manifest) ABL trains on.")],
            test: Tests = None,
            isolate: Annotated[float, typer.Option("--isolate", help="Share of training samples isolated (lowest loss), in (0, 1].")] = _abl.ISOLATE,
            gamma: Annotated[float, typer.Option("--gamma", help="LGA loss threshold.")] = _abl.GAMMA,
            isolate_iters: Annotated[int | None, typer.Option("--isolate-iters", help="Isolation iterations (default 20 % of the checkpoint's schedule).")] = None,
            train_iters: Annotated[int | None, typer.Option("--train-iters", help="Training iterations on the rest (default 80 %).")] = None,
            unlearn_epochs: Annotated[int, typer.Option("--unlearn-epochs", help="Gradient-ascent epochs over the isolated set.")] = _abl.UNLEARN_EPOCHS,
            unlearn_lr: Annotated[float | None, typer.Option("--unlearn-lr", help="Unlearning lr (default the checkpoint's / 10).")] = None,
            seed: Seed = 0, device: Device = "cpu", protocol: Protocol = "paper", victim: Victim = None,
            target: Target = None, workers: Workers = 0, quiet: Quiet = False):
    """Anti-Backdoor Learning on the poisoned copy: isolate, train on the rest, unlearn the isolated set.
    CKPT gives the recipe and the 'before' row (the model trained without defense)."""
    res = runs.run_abl(ckpt, data, train, test or [], out_dir, isolate, gamma, isolate_iters, train_iters,
                       unlearn_epochs, unlearn_lr, seed, device, protocol, victim, target, workers)
    if not quiet:
        print_defense(res)


def print_detect(res: dict) -> None:
    t = Table(title=f"segtrain detect {res['detect']}")
    cols = ["detector", "AUROC", "precision@k", "recall@k", "TPR@5% FPR"]
    if res["detect"] == "inputs":
        cols += ["TPR@10% FPR", "pixel AUROC", "seconds"]
    for c in cols:
        t.add_column(c)
    for name, s in res["scores"].items():
        row = [name, f"{s['auroc']:.3f}" if s["auroc"] is not None else "-", percent(s["precision_at_k"]),
               percent(s["recall_at_k"]), percent(s.get("tpr_at_fpr_0.05"))]
        if res["detect"] == "inputs":
            row += [percent(s.get("tpr_at_fpr_0.1")), "-" if s["pixel_auroc"] is None else f"{s['pixel_auroc']:.3f}",
                    f"{s['seconds']:.1f}"]
        t.add_row(*row)
    out.print(t)


@detect_app.command("samples")
def detect_samples_cmd(ckpt: Ckpt, data: Annotated[str, typer.Option("--data", help="The POISONED training copy to screen.")],
                       out_dir: Out,
                       score: Annotated[bool, typer.Option("--score/--no-score", help="Score against DATA's manifest (AUROC, precision/recall at the poison count, PR curve).")] = True,
                       target: Target = None, layer: Layer = None, seed: Seed = 0, device: Device = "cpu",
                       workers: Workers = 0, quiet: Quiet = False):
    """Rank every training sample by how likely it is poisoned (target-pixel loss, its two-sided outlier score, spectral signature, activation clustering)."""
    res = runs.run_detect_samples(ckpt, data, out_dir, score, target, layer, seed, device, workers)
    if not quiet and res["scores"]:
        print_detect(res)
    elif not quiet:
        out.print(f"ranked CSVs written to {out_dir}")


@detect_app.command("inputs")
def detect_inputs_cmd(ckpt: Ckpt, data: Data, out_dir: Out,
                      test: Annotated[str, typer.Option("--test", help="Poisoned Test set: its triggered inputs are the positives, the same ids of DATA the negatives.")],
                      overlays: Annotated[int, typer.Option("--overlays", help="STRIP: clean images superimposed per input.")] = _di.STRIP_N,
                      alpha: Annotated[float, typer.Option("--alpha", help="STRIP: overlay weight.")] = _di.STRIP_ALPHA,
                      max_inputs: Annotated[int | None, typer.Option("--max-inputs", help="Score only the first N triggered inputs (and their twins).")] = None,
                      detector: Annotated[list[str] | None, typer.Option("--detector", help="strip and/or teco (default both).")] = None,
                      seed: Seed = 0, device: Device = "cpu", quiet: Quiet = False):
    """STRIP and TeCo-like detection of triggered inputs: AUROC, TPR at 5 % / 10 % FPR, pixel AUROC."""
    res = runs.run_detect_inputs(ckpt, data, test, out_dir, overlays, alpha, seed, device, max_inputs,
                                 tuple(detector or ("strip", "teco")))
    if not quiet:
        print_detect(res)
