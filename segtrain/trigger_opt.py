"""Trigger optimization (BADSEG, Zhang et al.): a trigger pattern optimised on a surrogate model so that,
pasted beside victim objects, it pushes the victim pixels toward the target class.

The objective is the expectation, over training images holding victim pixels and over trigger positions
drawn exactly as poisongen places a trigger (:func:`poisongen.placement.choose`: the same eligibility
constraint, strategy and distance band), of the cross-entropy of the surrogate's logits at the victim
pixels against the target class. Each draw also jitters the pasted size (``scale_jitter``: a factor in
``[1 - j, 1 + j]``, area-resized as poisongen resizes a pattern) and the colour (a per-channel gain in
``[1 - j, 1 + j]``), so the pattern does not depend on one exact size or exposure. Adam on the pattern in
``[0, 1]`` (x 255 = pixel values), clamped after every step.

Deterministic: every draw comes from ``numpy.random.default_rng(seed)``, the initial pattern is the
built-in one (or seeded noise); on CPU the same inputs and seed give the same PNG bytes. The result is a
PNG of exactly ``size`` (RGBA, opaque) for ``poisongen --trigger FILE --trigger-size HxW``, and a JSON
beside it with the settings, the loss curve, the objective of the initial and the final (rounded)
pattern on a fixed set of held-out draws, and the sha256 of the file and of the pattern array (the
latter is what poisongen's manifest records as the trigger's sha256 when it is pasted at this size).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poisongen.codecs import encode_png, sha256_array, sha256_file
from poisongen.datasets import Layout
from poisongen.placement import CONSTRAINTS, STRATEGIES, choose
from poisongen.triggers import make_builtin_pattern, resize_pattern

from .errors import SegTrainError
from .transforms import MEAN, STD

INITS = ("builtin", "random")


@dataclass(frozen=True)
class TriggerOptConfig:
    """Settings of one optimisation (recorded in the JSON)."""

    size: tuple[int, int]
    victim: tuple[int, ...]
    target: int
    steps: int = 200
    batch: int = 8
    lr: float = 0.05
    seed: int = 0
    split: str | None = None
    pool: int = 64  # training images holding victim pixels that the draws come from
    strategy: str = "random"
    lower: float = 0.0
    upper: float = math.inf
    constraint: str = "single"
    alpha: float = 1.0
    scale_jitter: float = 0.1
    colour_jitter: float = 0.1
    init: str = "builtin"
    eval_draws: int = 32

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "size", tuple(int(v) for v in self.size))
        set_(self, "victim", tuple(int(v) for v in self.victim))
        if len(self.size) != 2 or min(self.size) < 2:
            raise SegTrainError(f"--size {self.size!r} is not allowed; it must be HxW, each side >= 2")
        if not self.victim:
            raise SegTrainError("optimize-trigger needs the victim classes (--victim, names or ids)")
        if self.target in self.victim:
            raise SegTrainError(f"--target {self.target} is one of the victim classes; give another class")
        for name in ("steps", "batch", "pool", "eval_draws"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SegTrainError(f"--{name.replace('_', '-')} {v!r} is not allowed; it must be a whole number >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SegTrainError(f"--lr {self.lr!r} is not allowed; it must be a finite number > 0")
        if not 0 < self.alpha <= 1:
            raise SegTrainError(f"--alpha {self.alpha!r} is not allowed; it must be in (0, 1]")
        for name in ("scale_jitter", "colour_jitter"):
            if not 0 <= getattr(self, name) < 1:
                raise SegTrainError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not allowed; it must be "
                                    f"in [0, 1)")
        if self.strategy not in ("random", "nearest"):
            raise SegTrainError(f"--strategy '{self.strategy}' is not allowed; valid are {{nearest, random}} "
                                f"(poisongen's {', '.join(STRATEGIES)} minus fixed)")
        if self.constraint not in CONSTRAINTS:
            raise SegTrainError(f"--constraint '{self.constraint}' is not allowed; valid are "
                                f"{{{', '.join(CONSTRAINTS)}}}")
        if self.init not in INITS:
            raise SegTrainError(f"--init '{self.init}' is not allowed; valid are {{{', '.join(INITS)}}}")
        if not (0 <= self.lower < self.upper):
            raise SegTrainError(f"--lower {self.lower:g} / --upper {self.upper:g}: need 0 <= lower < upper")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["victim"] = list(self.size), list(self.victim)
        d["upper"] = None if math.isinf(self.upper) else self.upper
        return d


@dataclass(frozen=True)
class Draw:
    """One term of the expectation: an image of the pool, the pasted size, its top-left, a colour gain."""

    index: int
    size: tuple[int, int]
    top_left: tuple[int, int]
    gain: tuple[float, float, float]


class Pool:
    """The images (uint8 RGB) and labels of up to ``n`` samples of ``split`` holding a victim pixel, taken
    in a seeded order."""

    def __init__(self, layout: Layout, split: str, victim: tuple[int, ...], n: int, rng: np.random.Generator):
        samples = layout.samples(split)
        order = rng.permutation(len(samples))
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        lut = np.zeros(256, bool)
        lut[list(victim)] = True
        for i in order:
            loaded = layout.load(samples[int(i)])
            if lut[loaded.label].any():
                self.images.append(loaded.image)
                self.labels.append(loaded.label)
                if len(self.images) == n:
                    break
        if not self.images:
            raise SegTrainError(f"no sample of split '{split}' of {layout.root} holds a victim pixel "
                                f"(victim {', '.join(layout.meta.names[v] for v in victim)})")


def draw(pool: Pool, cfg: TriggerOptConfig, rng: np.random.Generator, tries: int = 50) -> Draw:
    """One draw: a pool image, a jittered size, a position chosen like poisongen's placement, a gain."""
    h, w = cfg.size
    for _ in range(tries):
        i = int(rng.integers(len(pool.images)))
        f = 1.0 + cfg.scale_jitter * (2 * rng.random() - 1)
        sh, sw = max(2, round(h * f)), max(2, round(w * f))
        gain = tuple(float(g) for g in 1.0 + cfg.colour_jitter * (2 * rng.random(3) - 1))
        p = choose(pool.labels[i], cfg.victim, (sh, sw), rng, cfg.strategy, cfg.lower, cfg.upper, cfg.constraint)
        if not isinstance(p, str):
            return Draw(i, (sh, sw), p.top_left, gain)
    raise SegTrainError(f"no eligible trigger position for a {h}x{w} trigger in {tries} draws (constraint "
                        f"{cfg.constraint}, band [{cfg.lower:g}, {cfg.upper:g})); use a smaller --size, "
                        f"--constraint multiclass or a wider band")


def paste(images: torch.Tensor, pattern: torch.Tensor, draws: list[Draw], alpha: float) -> torch.Tensor:
    """Differentiable paste: ``images`` float (B, 3, H, W) in [0, 255], ``pattern`` (3, h, w) in [0, 1].
    Each draw's pattern is area-resized to its size, multiplied by its gain and blended at its position."""
    out = images.clone()
    for b, d in enumerate(draws):
        p = pattern[None]
        if tuple(d.size) != tuple(pattern.shape[-2:]):
            p = F.interpolate(p, size=d.size, mode="area" if d.size[0] <= pattern.shape[-2] else "bilinear")
        p = (p[0] * torch.tensor(d.gain).view(3, 1, 1)).clamp(0, 1) * 255
        (y, x), (sh, sw) = d.top_left, d.size
        out[b, :, y:y + sh, x:x + sw] = (1 - alpha) * out[b, :, y:y + sh, x:x + sw] + alpha * p
    return out


def objective(model: nn.Module, pool: Pool, pattern: torch.Tensor, draws: list[Draw], cfg: TriggerOptConfig,
              device: torch.device) -> torch.Tensor:
    """Mean cross-entropy toward the target over the victim pixels of the draws (images grouped by size)."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    total, count = pattern.new_zeros(()), 0
    groups: dict[tuple[int, int], list[Draw]] = {}
    for d in draws:
        groups.setdefault(pool.labels[d.index].shape, []).append(d)
    for group in groups.values():
        imgs = torch.stack([torch.from_numpy(pool.images[d.index]).permute(2, 0, 1) for d in group]).float()
        labels = torch.stack([torch.from_numpy(pool.labels[d.index].astype(np.int64)) for d in group]).to(device)
        x = (paste(imgs.to(device), pattern, group, cfg.alpha) - mean) / std
        logits = model(x)["out"]
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        victim = torch.isin(labels, torch.tensor(cfg.victim, device=device))
        target = torch.full_like(labels, cfg.target)
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        total = total + ce[victim].sum()
        count += int(victim.sum())
    return total / max(count, 1)


def initial_pattern(cfg: TriggerOptConfig) -> np.ndarray:
    """RGB uint8 (h, w, 3): the built-in pattern resized to ``size``, or seeded uniform noise."""
    if cfg.init == "random":
        return np.random.default_rng([cfg.seed, 1]).integers(0, 256, (*cfg.size, 3), dtype=np.uint8)
    return resize_pattern(make_builtin_pattern(max(16, *cfg.size)), cfg.size)[..., :3]


def to_rgba(pattern: torch.Tensor) -> np.ndarray:
    """(3, h, w) in [0, 1] -> opaque RGBA uint8 (h, w, 4), rounded."""
    rgb = (pattern.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)


def optimize_trigger(model: nn.Module, layout: Layout, cfg: TriggerOptConfig, device: torch.device | str = "cpu",
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Optimise a trigger on ``model`` (the surrogate, put in eval mode) over ``layout``'s training split.

    Returns ``{"pattern": RGBA uint8 (h, w, 4), "losses": [per step], "objective_initial",
    "objective_final"}`` (the objectives on ``cfg.eval_draws`` held-out draws, the final one of the
    rounded pattern that is written).
    """
    device = torch.device(device)
    split = cfg.split or layout.train_split
    rng = np.random.default_rng(cfg.seed)
    pool = Pool(layout, split, cfg.victim, cfg.pool, rng)
    held_rng = np.random.default_rng([cfg.seed, 2])
    held = [draw(pool, cfg, held_rng) for _ in range(cfg.eval_draws)]
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    start = torch.from_numpy(initial_pattern(cfg)).permute(2, 0, 1).float().div(255).to(device)
    pattern = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([pattern], lr=cfg.lr)
    with torch.no_grad():
        before = float(objective(model, pool, start, held, cfg, device))
    losses = []
    for step in range(cfg.steps):
        draws = [draw(pool, cfg, rng) for _ in range(cfg.batch)]
        loss = objective(model, pool, pattern, draws, cfg, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            pattern.clamp_(0, 1)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise SegTrainError(f"the trigger objective became {value} at step {step + 1}; lower --lr (now {cfg.lr:g})")
        losses.append(round(value, 6))
        if on_step is not None:
            on_step(step + 1, value)
    rgba = to_rgba(pattern)
    final = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float().div(255).to(device)
    with torch.no_grad():
        after = float(objective(model, pool, final, held, cfg, device))
    return {"pattern": rgba, "losses": losses, "objective_initial": round(before, 6),
            "objective_final": round(after, 6), "pool": len(pool.images)}


def write_trigger(out: str | Path, result: dict, cfg: TriggerOptConfig, extra: dict | None = None) -> dict:
    """Write the PNG and ``<out>.json`` (settings, loss curve, objectives, hashes) atomically: each to a
    temp file beside it, then renamed, so a failed run leaves neither half-written. Returns the JSON."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SegTrainError(f"--out {out} must be a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path = out.with_suffix(".json")
    tmp_png = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_json = meta_path.with_name(f".{meta_path.name}.tmp-{os.getpid()}")
    try:
        tmp_png.write_bytes(encode_png(cv2.cvtColor(result["pattern"], cv2.COLOR_RGBA2BGRA)))
        meta = {"settings": cfg.to_dict(), **(extra or {}), "pool": result["pool"],
                "objective_initial": result["objective_initial"], "objective_final": result["objective_final"],
                "losses": result["losses"], "png_sha256": sha256_file(tmp_png),
                "pattern_sha256": sha256_array(result["pattern"])}
        tmp_json.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        tmp_png.replace(out)
        tmp_json.replace(meta_path)
    finally:
        tmp_png.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return meta
