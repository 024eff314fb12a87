"""The built-in synthetic street scenes: the default dataset, so the whole product runs and is tested
with no download.

Procedural driving scenes written in the **Cityscapes layout** with real ``labelIds``,
``labelTrainIds``, ``instanceIds`` and ``color`` files, so they exercise the real reader: sky, textured
buildings with windows, vegetation, terrain, a perspective road with lane marks, sidewalks, poles,
signs and traffic lights, cars, trucks and buses, persons and riders on bicycles, an ego-vehicle bonnet
(ignore). Lighting, colours, textures, shadows and noise vary per image so that classes are not
separable by colour alone (some cars are road-grey). Every shape is drawn once into the label and the
image with the same polygon (no anti-aliasing), so the two agree pixel for pixel.

Deterministic: sample ``i`` of split ``s`` uses ``SeedSequence([seed, s, i])``, whatever ``jobs`` is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from ..codecs import encode_png, write_bytes
from ..errors import ConfigError
from .cityscapes import GT, ID_TO_TRAIN, Cityscapes, colorize

VERSION = 1
CITIES = {"train": ("synthtown", "gridville"), "val": ("valcity",)}

# raw Cityscapes ids
UNLABELED, EGO, STATIC = 0, 1, 4
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 24, 25, 26, 27, 28, 33


class Canvas:
    """A label map (raw ids), an instance map and an RGB image drawn together."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.label = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.uint16)
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.counter: dict[int, int] = {}

    def new_instance(self, raw: int) -> int:
        k = self.counter.get(raw, 0)
        self.counter[raw] = k + 1
        return raw * 1000 + k

    def poly(self, pts, raw: int, color, inst: int | None = None, label: bool = True) -> None:
        pts = [np.round(np.asarray(pts, np.float64)).astype(np.int32)]
        if label:
            cv2.fillPoly(self.label, pts, int(raw), lineType=cv2.LINE_8)
            cv2.fillPoly(self.inst, pts, int(inst if inst is not None else raw), lineType=cv2.LINE_8)
        cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in color), lineType=cv2.LINE_8)

    def rect(self, x0, y0, x1, y1, raw, color, inst=None, label=True) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], raw, color, inst, label)

    def ellipse(self, cx, cy, rx, ry, raw, color, inst=None, label=True) -> None:
        c = (int(round(cx)), int(round(cy)))
        ax = (max(1, int(round(rx))), max(1, int(round(ry))))
        if label:
            cv2.ellipse(self.label, c, ax, 0, 0, 360, int(raw), -1, lineType=cv2.LINE_8)
            cv2.ellipse(self.inst, c, ax, 0, 0, 360, int(inst if inst is not None else raw), -1, lineType=cv2.LINE_8)
        cv2.ellipse(self.rgb, c, ax, 0, 0, 360, tuple(float(v) for v in color), -1, lineType=cv2.LINE_8)


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [-1, 1], ``(h, w) float32``: a small random grid upsampled."""
    gh, gw = max(2, h // scale), max(2, w // scale)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _jitter(rng: np.random.Generator, base, spread: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, spread, 3), 0, 255)


def _draw_car(c: Canvas, rng, x: float, yb: float, s: float, raw: int = CAR) -> None:
    """A car / truck / bus seen from behind or the side, bottom at ``yb``, scale ``s`` (px per metre-ish)."""
    inst = c.new_instance(raw)
    if raw == CAR:
        w, h = s * rng.uniform(1.7, 2.1), s * rng.uniform(1.3, 1.6)
        paints = [
            (200, 30, 30),
            (30, 60, 160),
            (230, 230, 230),
            (20, 20, 20),
            (120, 120, 125),
            (90, 95, 100),
            (200, 170, 40),
            (40, 110, 60),
        ]
        body = _jitter(rng, paints[rng.integers(len(paints))], 12)
    elif raw == TRUCK:
        w, h = s * rng.uniform(2.3, 2.6), s * rng.uniform(2.6, 3.1)
        body = _jitter(rng, [(180, 180, 170), (60, 80, 120), (150, 60, 40)][rng.integers(3)], 12)
    else:  # bus
        w, h = s * rng.uniform(2.5, 2.8), s * rng.uniform(2.9, 3.3)
        body = _jitter(rng, [(200, 160, 30), (40, 90, 170), (210, 210, 210)][rng.integers(3)], 12)
    x0, x1, y1 = x - w / 2, x + w / 2, yb
    y0 = yb - h
    shadow = np.asarray([25, 25, 28], np.float32)
    c.poly([(x0 - 0.1 * w, y1), (x1 + 0.1 * w, y1), (x1, y1 + 0.06 * h), (x0, y1 + 0.06 * h)], 0, shadow, label=False)
    if raw == CAR:  # body with a narrower cabin on top
        c.rect(x0, y0 + 0.4 * h, x1, y1 - 0.12 * h, raw, body, inst)
        c.poly(
            [(x0 + 0.12 * w, y0 + 0.42 * h), (x0 + 0.22 * w, y0), (x1 - 0.22 * w, y0), (x1 - 0.12 * w, y0 + 0.42 * h)],
            raw,
            body * 0.9,
            inst,
        )
        c.poly(
            [
                (x0 + 0.18 * w, y0 + 0.38 * h),
                (x0 + 0.26 * w, y0 + 0.08 * h),
                (x1 - 0.26 * w, y0 + 0.08 * h),
                (x1 - 0.18 * w, y0 + 0.38 * h),
            ],
            raw,
            (40, 50, 60),
            inst,
            label=False,
        )  # rear window
        for lx in (x0 + 0.05 * w, x1 - 0.17 * w):  # lights
            c.rect(lx, y0 + 0.5 * h, lx + 0.12 * w, y0 + 0.6 * h, raw, (220, 30, 20), inst, label=False)
    else:
        c.rect(x0, y0, x1, y1 - 0.1 * h, raw, body, inst)
        n = 3 if raw == TRUCK else 5
        for i in range(n):  # windows along the top
            wx = x0 + (i + 0.15) * w / n
            c.rect(wx, y0 + 0.1 * h, wx + 0.7 * w / n, y0 + 0.3 * h, raw, (50, 60, 75), inst, label=False)
    for wx in (x0 + 0.08 * w, x1 - 0.08 * w - 0.18 * w):  # wheels
        c.rect(wx, y1 - 0.16 * h, wx + 0.18 * w, y1, raw, (15, 15, 15), inst)


def _draw_person(c: Canvas, rng, x: float, yb: float, s: float, rider: bool = False) -> None:
    raw = RIDER if rider else PERSON
    inst = c.new_instance(raw)
    h = s * rng.uniform(1.6, 1.9)
    w = h * 0.28
    shirt = _jitter(rng, [(180, 40, 40), (40, 40, 160), (230, 230, 230), (30, 30, 30), (60, 140, 70)][rng.integers(5)])
    pants = _jitter(rng, (40, 40, 70), 15)
    skin = _jitter(rng, (200, 160, 130), 25)
    if rider:  # bicycle under the rider; the rider sits higher
        binst = c.new_instance(BICYCLE)
        bw = h * 0.9
        for wx in (x - bw / 2 + 0.2 * bw, x + bw / 2 - 0.2 * bw):
            c.ellipse(wx, yb - 0.2 * bw, 0.2 * bw, 0.2 * bw, BICYCLE, (20, 20, 20), binst)
        c.rect(x - bw / 3, yb - 0.35 * bw, x + bw / 3, yb - 0.28 * bw, BICYCLE, (150, 30, 30), binst)
        yb = yb - 0.3 * bw
        h *= 0.8
    c.rect(x - w * 0.4, yb - 0.48 * h, x + w * 0.4, yb, raw, pants, inst)  # legs
    c.rect(x - w / 2, yb - 0.85 * h, x + w / 2, yb - 0.45 * h, raw, shirt, inst)  # torso
    c.ellipse(x, yb - 0.92 * h, w * 0.28, h * 0.08, raw, skin, inst)  # head


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene: RGB ``(H, W, 3) uint8``, raw label ids ``(H, W) uint8``, instance ids
    ``(H, W) uint16`` (``id*1000+k`` for things, the raw id elsewhere). A pure function of ``rng``."""
    H, W = size
    c = Canvas(H, W)
    horizon = H * rng.uniform(0.38, 0.5)
    vx = W * rng.uniform(0.4, 0.6)
    # sky
    top, bottom = _jitter(rng, (70, 120, 190), 25), _jitter(rng, (170, 195, 220), 20)
    t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    c.rgb[:] = top * (1 - t) + bottom * t
    c.label[:] = SKY
    c.inst[:] = SKY
    # terrain / ground up to the horizon
    c.rect(0, horizon, W, H, TERRAIN, _jitter(rng, (110, 140, 70), 20))
    # road: a trapezoid to the vanishing point; sidewalks either side
    road_half = W * rng.uniform(0.45, 0.7)
    walk = W * rng.uniform(0.12, 0.25)
    top_half = W * 0.02
    road_col = _jitter(rng, (95, 95, 100), 12)
    walk_col = _jitter(rng, (170, 160, 160), 15)
    c.poly(
        [(vx - top_half * 2.2, horizon), (vx - road_half - walk, H), (vx - road_half, H), (vx - top_half, horizon)],
        SIDEWALK,
        walk_col,
    )
    c.poly(
        [(vx + top_half, horizon), (vx + road_half, H), (vx + road_half + walk, H), (vx + top_half * 2.2, horizon)],
        SIDEWALK,
        walk_col,
    )
    c.poly(
        [(vx - top_half, horizon), (vx - road_half, H), (vx + road_half, H), (vx + top_half, horizon)], ROAD, road_col
    )
    # lane marks: painted road (label stays road)
    for lane in (-0.33, 0.33) if rng.random() < 0.6 else (0.0,):
        for k in range(8):
            a, b = (k + 0.2) / 8, (k + 0.6) / 8
            ya, yb_ = horizon + (H - horizon) * a**1.6, horizon + (H - horizon) * b**1.6
            xa, xb = vx + lane * road_half * a**1.6, vx + lane * road_half * b**1.6
            wa, wb = 1 + 6 * a**1.6 * W / 1024, 1 + 6 * b**1.6 * W / 1024
            c.poly([(xa - wa, ya), (xb - wb, yb_), (xb + wb, yb_), (xa + wa, ya)], ROAD, (225, 225, 215), label=False)
    # buildings along both sides, behind the sidewalks
    for side in (-1, 1):
        x = vx + side * W * 0.03
        while 0 < x < W:
            bw = W * rng.uniform(0.06, 0.18)
            far = abs(x - vx) / W
            bh = H * rng.uniform(0.15, 0.45) * (0.5 + far)
            x0, x1 = (x, x + side * bw)
            xl, xr = min(x0, x1), max(x0, x1)
            col = _jitter(rng, [(140, 120, 100), (170, 160, 150), (110, 90, 80), (150, 150, 160)][rng.integers(4)], 20)
            base = horizon + (H - horizon) * 0.02
            c.rect(xl, base - bh, xr, base, BUILDING, col)
            wcol = _jitter(rng, (60, 70, 90), 15)
            nx, ny = max(1, int(bw / max(6.0, W / 80))), max(1, int(bh / max(8.0, H / 30)))
            for i in range(nx):
                for j in range(ny):
                    wx = xl + (i + 0.25) * (xr - xl) / nx
                    wy = base - bh + (j + 0.25) * bh / ny
                    c.rect(wx, wy, wx + 0.5 * (xr - xl) / nx, wy + 0.45 * bh / ny, BUILDING, wcol, label=False)
            x = x1 + side * W * rng.uniform(0.0, 0.03)
    # vegetation: bushes and tree crowns on the verges
    for _ in range(rng.integers(2, 6)):
        side = rng.choice([-1, 1])
        x = vx + side * W * rng.uniform(0.25, 0.55)
        y = horizon + (H - horizon) * rng.uniform(-0.1, 0.25)
        r = W * rng.uniform(0.03, 0.08)
        c.rect(x - r * 0.08, y, x + r * 0.08, y + r * 1.2, VEGETATION, (70, 50, 30))
        c.ellipse(x, y, r, r * 0.8, VEGETATION, _jitter(rng, (60, 110, 40), 20))
    # poles, signs and traffic lights on the sidewalks
    for _ in range(rng.integers(1, 4)):
        side = rng.choice([-1, 1])
        d = rng.uniform(0.2, 1.0)
        yb = horizon + (H - horizon) * d
        x = vx + side * (top_half + (road_half - top_half) * d + walk * d * 0.5)
        ph, pw = H * 0.45 * d + 4, max(1.5, W * 0.004 * d + 1)
        c.rect(x - pw, yb - ph, x + pw, yb, POLE, _jitter(rng, (120, 120, 120), 10))
        if rng.random() < 0.5:
            c.rect(x - 5 * pw, yb - ph, x + 5 * pw, yb - ph + 7 * pw, SIGN, _jitter(rng, (220, 200, 30), 20))
        else:
            c.rect(x - 2.5 * pw, yb - ph, x + 2.5 * pw, yb - ph + 9 * pw, LIGHT, (40, 40, 40))
            c.ellipse(x, yb - ph + 2 * pw, 1.5 * pw, 1.5 * pw, LIGHT, (230, 40, 30), label=False)
    # traffic: objects sorted far to near so that nearer ones occlude farther ones
    objects = []
    n_cars = rng.integers(2, 6)
    for _ in range(n_cars):
        objects.append(("car", rng.uniform(0.15, 0.95), rng.uniform(-0.8, 0.8)))
    if rng.random() < 0.45:
        objects.append(("truck" if rng.random() < 0.5 else "bus", rng.uniform(0.1, 0.7), rng.uniform(-0.7, 0.7)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("person", rng.uniform(0.2, 1.0), rng.choice([-1.05, 1.05]) * rng.uniform(1.0, 1.25)))
    if rng.random() < 0.4:
        objects.append(("rider", rng.uniform(0.3, 0.9), rng.uniform(-0.9, 0.9)))
    for kind, d, lat in sorted(objects, key=lambda o: o[1]):
        yb = horizon + (H - horizon) * d
        s = (H - horizon) * d * 0.2 + 2
        x = vx + lat * (top_half + (road_half - top_half) * d)
        if kind in ("car", "truck", "bus"):
            _draw_car(c, rng, x, yb, s, {"car": CAR, "truck": TRUCK, "bus": BUS}[kind])
        else:
            _draw_person(c, rng, x, yb, s, rider=kind == "rider")
    # ego vehicle bonnet (ignore) and a static object at the bottom edge
    if rng.random() < 0.7:
        bh = H * rng.uniform(0.05, 0.1)
        c.poly([(0, H), (W * 0.1, H - bh), (W * 0.9, H - bh), (W, H)], EGO, _jitter(rng, (40, 40, 45), 10))
    if rng.random() < 0.3:
        x = W * rng.uniform(0.02, 0.9)
        c.rect(x, horizon + (H - horizon) * 0.3, x + W * 0.03, horizon + (H - horizon) * 0.45, STATIC, (90, 80, 60))
    # lighting, texture and sensor noise over the whole image
    rgb = c.rgb
    tex = _noise(rng, H, W, max(4, W // 96)) * 14 + _noise(rng, H, W, max(2, W // 400)) * 8
    rgb += tex[..., None]
    gain = rng.uniform(0.6, 1.25)
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    shade = 1 + 0.25 * _noise(rng, H, W, max(8, W // 6))
    rgb = rgb * gain * tint * shade[..., None] + rng.normal(0, 5, (H, W, 3)).astype(np.float32)
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    return image, c.label, c.inst


def _write_sample(
    root: Path, split: str, index: int, city: str, seed: int, split_index: int, size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
    image, raw, inst = render_scene(rng, size)
    sid = f"{city}_{index:06d}_000019"
    gt = root / GT / split / city
    write_bytes(
        root / "leftImg8bit" / split / city / f"{sid}_leftImg8bit.png",
        encode_png(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
    )
    write_bytes(gt / f"{sid}_{GT}_labelIds.png", encode_png(raw))
    write_bytes(gt / f"{sid}_{GT}_labelTrainIds.png", encode_png(ID_TO_TRAIN[raw]))
    write_bytes(gt / f"{sid}_{GT}_instanceIds.png", encode_png(inst))
    write_bytes(gt / f"{sid}_{GT}_color.png", encode_png(colorize(raw)))


def generate(
    out: Path,
    train: int = 400,
    val: int = 100,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    jobs: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write the synthetic dataset to ``out`` (built in a temp dir beside it, then renamed) and
    return its summary (:func:`~poisongen.datasets.stats.dataset_summary` with every file read)."""
    from ..writer import staging
    from .stats import dataset_summary

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    if min(size) < 32:
        raise ConfigError(f"--size {size[0]}x{size[1]} is too small; use at least 32x32")
    tasks = []
    for split_index, (split, n) in enumerate((("train", train), ("val", val))):
        cities = CITIES[split]
        for i in range(n):
            tasks.append((split, i, cities[i % len(cities)], split_index))
    with staging(out) as tmp:
        Parallel(n_jobs=jobs, backend="loky" if jobs > 1 else "sequential", batch_size=8)(
            delayed(_write_sample)(tmp, split, i, city, seed, si, size) for split, i, city, si in tasks
        )
        meta = {
            "generator": "poisongen synthetic street scenes",
            "version": VERSION,
            "seed": seed,
            "train": train,
            "val": val,
            "size": list(size),
        }
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    summary = dataset_summary(Cityscapes(out), read=True, jobs=jobs)
    summary["layout"] = "synthetic (cityscapes layout)"
    return summary


def generate_default(root: Path) -> Path:
    """Generate the default synthetic set into ``root`` (used by ``--src synthetic`` on first use)."""
    import os

    print(
        f"generating the synthetic street scenes in {root} (400 train + 100 val, 256x512; "
        f"`poisongen synth` for other sizes)",
        file=sys.stderr,
    )
    generate(root, jobs=max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    return root


__all__ = ["generate", "generate_default", "render_scene"]
