"""``segtrain models`` (every arch/backbone with its parameters, source and the weights files that fit) and
``segtrain optimize-trigger`` (BADSEG's trigger optimization). Parsing and printing only: the work is in
:mod:`segtrain.models` and :mod:`segtrain.trigger_opt`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from poisongen.config import parse_size
from poisongen.datasets import open_dataset

from .checkpoint import check_classes, model_from_checkpoint
from .checkpoint import load as load_checkpoint
from .data import read_attack_info
from .engine import resolve_device
from .errors import SegTrainError
from .evaluate import resolve_attack
from .models import REGISTRY, SOURCES, build_meta_model
from .models import smp as smp_models

console = Console(stderr=True)
out = Console()

#: the backbone weights files each backbone takes (--backbone-weights)
WEIGHTS = {
    "resnet18": "torchvision resnet18-*.pth, timm, smp",
    "resnet34": "torchvision resnet34-*.pth, timm, smp",
    "resnet50": "torchvision resnet50-*.pth, timm, smp",
    "resnet101": "torchvision resnet101-*.pth, timm",
    "mobilenet_v2": "torchvision mobilenet_v2-b0353104.pth (scripts/fetch_weights.sh), smp",
    "mobilenet_v3_large": "torchvision mobilenet_v3_large-*.pth",
    "mit_b0": "smp / NVlabs mit_b0 (.pth, .safetensors)",
    "mit_b1": "smp / NVlabs mit_b1 (.pth, .safetensors)",
    "mit_b2": "smp / NVlabs mit_b2 (.pth, .safetensors)",
}


def count_parameters(arch: str, backbone: str, num_classes: int) -> int | None:
    """Parameters of ``arch/backbone`` (built on the meta device: no memory, no download); None when the
    model's source is not installed."""
    if SOURCES[arch] == "smp" and not smp_models.available():
        return None
    model = build_meta_model(arch, num_classes, backbone, aux=False)
    return sum(p.numel() for p in model.parameters())


def models_cmd(
    classes: Annotated[int, typer.Option("--classes", help="Number of classes the parameter counts are for.")] = 19,
):
    """Every arch and backbone: output strides, parameters, source (torchvision / smp) and the weights files
    that fit (--backbone-weights; --weights takes a segtrain last.pt or state dict of the same model)."""
    if classes < 1:
        raise SegTrainError(f"--classes {classes} is not allowed; it must be >= 1")
    t = Table(title=f"segtrain models: parameters for {classes} classes without aux heads, OS = output stride, "
                    f"* = default backbone; --weights takes a last.pt or state dict of the same model")
    for col in ("arch", "backbone", "OS", "params", "source"):
        t.add_column(col, no_wrap=True)
    t.add_column("--backbone-weights files that fit", overflow="fold")
    for arch, (_, backbones, default, strides) in REGISTRY.items():
        for bb in backbones:
            n = count_parameters(arch, bb, classes)
            source = SOURCES[arch] + ("" if n is not None else f" (not installed: {smp_models.INSTALL_HINT})")
            t.add_row(arch, bb + (" *" if bb == default else ""), ",".join(map(str, strides[bb])),
                      f"{n / 1e6:.2f} M" if n is not None else "-", source, WEIGHTS.get(bb, "-"))
    out.print(t)


def optimize_trigger_cmd(
    data: Annotated[str, typer.Option("--data", help="Dataset whose training split the trigger is optimised over.")],
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Surrogate model: a segtrain last.pt or run directory.")],
    size: Annotated[str, typer.Option("--size", help="Trigger size HxW (the PNG's; poisongen's --trigger-size).")],
    trigger_out: Annotated[Path, typer.Option("--out", help="The trigger PNG; settings and loss curve in .json.")],
    victim: Annotated[str | None, typer.Option(help="Victim classes (names or ids); default: DATA's manifest.")] = None,
    target: Annotated[str | None, typer.Option(help="Target class (name or id); default from DATA's manifest.")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 200,
    batch: Annotated[int, typer.Option(help="Draws (image, position, jitter) per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate on the pattern in [0, 1].")] = 0.05,
    seed: Annotated[int, typer.Option()] = 0,
    pool: Annotated[int, typer.Option(help="Training images with victim pixels to draw from.")] = 64,
    strategy: Annotated[str, typer.Option(help="Placement as poisongen's: random or nearest (NNI).")] = "random",
    lower: Annotated[float, typer.Option(help="Distance band lower bound L (px).")] = 0.0,
    upper: Annotated[float | None, typer.Option(help="Distance band upper bound U (px); default none.")] = None,
    constraint: Annotated[str, typer.Option(help="Window constraint: single, multiclass or any.")] = "single",
    alpha: Annotated[float, typer.Option(help="Blend factor in (0, 1], as poisongen's --alpha.")] = 1.0,
    scale_jitter: Annotated[float, typer.Option("--scale-jitter", help="Pasted size x [1-j, 1+j].")] = 0.1,
    colour_jitter: Annotated[float, typer.Option("--colour-jitter", help="Per-channel gain in [1-j, 1+j].")] = 0.1,
    init: Annotated[str, typer.Option(help="Initial pattern: builtin or random.")] = "builtin",
    split: Annotated[str | None, typer.Option(help="Split to draw from (default: DATA's training split).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet")] = False,
):
    """Optimise a trigger pattern on a surrogate model (BADSEG) so that, pasted where poisongen would paste
    it, it pushes the victim pixels toward the target; writes the PNG for 'poisongen --trigger FILE'."""
    from .trigger_opt import TriggerOptConfig, optimize_trigger, write_trigger

    h, w = parse_size(size, "--size")
    if trigger_out.suffix.lower() != ".png":
        raise SegTrainError(f"--out {trigger_out} must be a .png file")
    if trigger_out.exists() and not overwrite:
        raise SegTrainError(f"--out {trigger_out} exists; pass --overwrite to replace it")
    layout = open_dataset(data)
    v, t = resolve_attack(layout, read_attack_info(layout.root), victim, target)
    if t is None:
        raise SegTrainError("optimize-trigger needs the target class (--target, a name or an id)")
    cfg = TriggerOptConfig(size=(h, w), victim=v, target=t, steps=steps, batch=batch, lr=lr, seed=seed,
                           split=split, pool=pool, strategy=strategy, lower=lower,
                           upper=math.inf if upper is None else upper, constraint=constraint, alpha=alpha,
                           scale_jitter=scale_jitter, colour_jitter=colour_jitter, init=init)
    dev = resolve_device(device)
    ck = load_checkpoint(ckpt)
    check_classes(ck, layout.meta.names, f"dataset {data}")
    model = model_from_checkpoint(ck, dev)
    every = max(1, steps // 10)

    def on_step(step: int, loss: float) -> None:
        if not quiet and (step % every == 0 or step == steps):
            console.print(f"step {step}/{steps} objective {loss:.4f}", highlight=False)

    torch.manual_seed(seed)
    result = optimize_trigger(model, layout, cfg, dev, on_step)
    meta = write_trigger(trigger_out, result, cfg, {"data": str(data), "ckpt": str(ckpt)})
    out.print(f"trigger {trigger_out} ({h}x{w}): objective {meta['objective_initial']:.4f} -> "
              f"{meta['objective_final']:.4f} on {cfg.eval_draws} held-out draws; settings and loss curve in "
              f"{trigger_out.with_suffix('.json')}; use it with 'poisongen ... --trigger {trigger_out} "
              f"--trigger-size {h}x{w}'", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``models`` and ``optimize-trigger`` to the segtrain app."""
    app.command("models")(models_cmd)
    app.command("optimize-trigger")(optimize_trigger_cmd)
