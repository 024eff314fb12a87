"""The built-in synthetic street scenes: procedural driving images with exact Cityscapes labels.

Every scene is a pure function of one ``numpy.random.Generator``: a pinhole camera looks down a
straight street (road with lane marks, sidewalks, grass strips, facades with window grids, trees,
poles, signs and traffic lights, parked and moving cars, trucks, buses, pedestrians, cyclists and
an ego-vehicle bonnet). Ground and facades are computed per pixel from the camera model; objects
are 3D boxes and billboards filled with ``cv2.fillPoly`` (``LINE_8``, no anti-aliasing), far ones
first. Image and label are written by the same calls, so every shape edge agrees pixel for pixel;
lighting, haze, texture and noise change only the image.

The set is written in the Cityscapes layout (``leftImg8bit/`` + ``gtFine/`` with ``labelIds``,
``labelTrainIds``, ``instanceIds`` and ``color``), so it is read like the real dataset, by
poisongen and by ``torchvision.datasets.Cityscapes`` alike.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..codecs import encode_png, encode_rgb, write_bytes
from ..errors import ConfigError
from ..parallel import delayed, parallel
from ..writer import staging
from .cityscapes import GT, ID_TO_TRAIN, IMG_SUFFIX, Cityscapes, colorize
from .stats import dataset_summary

#: Bumped whenever the same seed would give different pixels; recorded in synthetic.json.
VERSION = 1
TRAIN_CITIES = ("synthtown", "gridville")
VAL_CITIES = ("valcity",)
FRAME = 19  # Cityscapes' fine annotations are all frame 000019 of their sequences
MANIFEST = "synthetic.json"

# raw Cityscapes label ids drawn by the generator
EGO, STATIC = 1, 4
ROAD, SIDEWALK, PARKING = 7, 8, 9
BUILDING, WALL, FENCE = 11, 12, 13
POLE, LIGHT, SIGN = 17, 19, 20
VEG, TERRAIN, SKY = 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 32, 33

SHIFT = 4  # fillPoly sub-pixel bits: far, small objects keep their shape

# Texture amplitude per raw id (low-, mid-frequency and per-pixel luminance noise): vegetation and
# terrain are leafy, the sky smooth, painted vehicles fairly clean.
_A_LOW = np.full(256, 0.05, np.float32)
_A_MID = np.full(256, 0.03, np.float32)
_A_FINE = np.full(256, 0.04, np.float32)
for _ids, _amps in (
    ((SKY,), (0.07, 0.015, 0.008)),
    ((ROAD, PARKING), (0.10, 0.05, 0.07)),
    ((SIDEWALK,), (0.08, 0.05, 0.08)),
    ((BUILDING, WALL), (0.06, 0.04, 0.05)),
    ((FENCE,), (0.05, 0.06, 0.06)),
    ((VEG,), (0.16, 0.22, 0.22)),
    ((TERRAIN,), (0.15, 0.14, 0.17)),
    ((CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE), (0.03, 0.015, 0.03)),
    ((PERSON, RIDER), (0.03, 0.03, 0.04)),
    ((EGO,), (0.03, 0.01, 0.02)),
):
    for _i in _ids:
        _A_LOW[_i], _A_MID[_i], _A_FINE[_i] = _amps

# A fixed table of "random" brightnesses, indexed by window position: window-to-window variation
# that needs no draws from the scene's generator.
_WIN_TABLE = np.random.default_rng(20240611).uniform(0.55, 1.6, 509).astype(np.float32)
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False))], axis=1)

_FACADES = np.array([
    (200, 190, 170), (170, 166, 160), (226, 221, 210), (150, 84, 62), (122, 102, 86), (192, 172, 124),
    (112, 112, 117), (206, 182, 162), (160, 174, 180), (184, 150, 110), (140, 140, 128),
], np.float32)
_CAR_COLORS = np.array([
    (200, 200, 200), (120, 122, 125), (90, 92, 95), (30, 30, 32), (225, 225, 222), (25, 40, 90),
    (130, 20, 25), (40, 70, 50), (160, 150, 130), (70, 90, 120), (150, 150, 155), (60, 60, 62),
], np.float32)
_CAR_WEIGHTS = np.array([10, 8, 7, 12, 10, 4, 4, 2, 2, 3, 8, 6], np.float64)
_CLOTHES = np.array([
    (30, 30, 35), (60, 60, 70), (25, 35, 70), (120, 30, 35), (200, 200, 195), (90, 70, 50),
    (40, 80, 60), (170, 150, 110), (150, 60, 120), (70, 110, 160), (210, 160, 40), (100, 100, 100),
], np.float32)
_SKIN = np.array([(235, 196, 165), (205, 155, 118), (160, 110, 80), (98, 68, 50)], np.float32)
_VEHICLE_PAINT = np.array([(220, 198, 40), (215, 215, 208), (185, 40, 40), (40, 90, 165), (60, 130, 75),
                           (120, 120, 125)], np.float32)


# --------------------------------------------------------------------------------------------
# camera and canvas
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    """Pinhole camera at ``(0, hc, 0)`` looking along +Z (X right, Y up, metres); horizon row ``hz``."""

    h: int
    w: int
    f: float
    cx: float
    hz: float
    hc: float

    def project(self, pts: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` -> pixel coordinates ``(N, 2)`` (x right, y down)."""
        inv = self.f / pts[:, 2]
        out = np.empty((len(pts), 2))
        out[:, 0] = pts[:, 0] * inv + self.cx
        out[:, 1] = (self.hc - pts[:, 1]) * inv + self.hz
        return out

    def billboard(self, x: float, z: float, uv: np.ndarray) -> np.ndarray:
        """Points ``(u, v)`` of a flat shape standing at ``(x, z)`` facing the camera -> pixels."""
        k = self.f / z
        out = np.asarray(uv, np.float64).reshape(-1, 2) * (k, -k)
        out += (self.cx + x * k, self.hz + self.hc * k)
        return out


@dataclass(frozen=True)
class Light:
    """Per-image lighting: direction towards the sun, ambient and diffuse terms, haze."""

    direction: np.ndarray
    ambient: float
    diffuse: float
    haze: np.ndarray
    haze_dist: float
    sunny: bool

    def shade(self, normal: np.ndarray) -> float:
        return self.ambient + self.diffuse * max(0.0, float(normal @ self.direction))

    def fog(self, z: float) -> float:
        return 1.0 - math.exp(-z / self.haze_dist)


class Canvas:
    """The image (float RGB) and the instance-or-raw id map, always written by the same call.

    ``ids`` holds the raw id for stuff and ``id * 1000 + k`` for thing instances (the Cityscapes
    ``instanceIds`` encoding), so the raw label is derived from it and can never disagree.
    """

    def __init__(self, cam: Camera, light: Light):
        self.cam = cam
        self.light = light
        self.img = np.zeros((cam.h, cam.w, 3), np.float32)
        self.ids = np.zeros((cam.h, cam.w), np.uint16)
        self._next: dict[int, int] = {}
        self._haze = tuple(float(v) for v in light.haze)

    def instance(self, raw: int) -> int:
        k = self._next.get(raw, 0)
        self._next[raw] = k + 1
        return raw * 1000 + k

    def color(self, rgb, z: float, shade: float = 1.0) -> tuple[float, float, float]:
        """An object's colour at depth ``z``: shaded, then blended into the haze."""
        h = 1.0 - math.exp(-z / self.light.haze_dist)
        k = shade * (1.0 - h)
        hr, hg, hb = self._haze
        return (float(rgb[0]) * k + hr * h, float(rgb[1]) * k + hg * h, float(rgb[2]) * k + hb * h)

    def fill(self, px: np.ndarray, rgb, value: int, z: float, shade: float = 1.0) -> None:
        """Fill the polygon ``px`` (pixels, ``(N, 2)``) with a colour (hazed by depth) and a label value."""
        pts = np.rint(np.asarray(px) * (1 << SHIFT)).astype(np.int32).reshape(1, -1, 2)
        cv2.fillPoly(self.img, pts, self.color(rgb, z, shade), cv2.LINE_8, SHIFT)
        cv2.fillPoly(self.ids, pts, int(value), cv2.LINE_8, SHIFT)

    def fill3(self, pts3: np.ndarray, rgb, value: int, shade: float = 1.0) -> None:
        pts3 = np.asarray(pts3, np.float64).reshape(-1, 3)
        self.fill(self.cam.project(pts3), rgb, value, float(pts3[0, 2]), shade)

    def bill(self, x: float, z: float, uv, rgb, value: int, shade: float = 1.0) -> None:
        self.fill(self.cam.billboard(x, z, uv), rgb, value, z, shade)

    def darken(self, px: np.ndarray, factor: float) -> None:
        """Multiply the image (not the label) inside a polygon: cast shadows."""
        pts = np.asarray(px, np.float64)
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.cam.w), min(y1, self.cam.h)
        if x0 >= x1 or y0 >= y1:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = np.round((pts - (x0, y0)) * (1 << SHIFT)).astype(np.int32).reshape(1, -1, 2)
        cv2.fillPoly(mask, local, 1, cv2.LINE_8, SHIFT)
        sub = self.img[y0:y1, x0:x1]
        sub[mask.astype(bool)] *= factor


def _seg(p, q, width: float) -> np.ndarray:
    """A straight limb/tube from ``p`` to ``q`` (2D, metres) of a given width, as a quad."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    d = q - p
    n = np.array([-d[1], d[0]]) / max(1e-9, float(np.hypot(*d))) * (width / 2)
    return np.array([p + n, q + n, q - n, p - n])


def _disc(cx: float, cy: float, rx: float, ry: float | None = None) -> np.ndarray:
    return np.array([cx, cy]) + _CIRCLE * (rx, rx if ry is None else ry)


def _rect(u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], np.float64)


def _jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


# --------------------------------------------------------------------------------------------
# vertical planes (facades, far skyline, cross-street walls): computed per column
# --------------------------------------------------------------------------------------------
KIND_BUILDING, KIND_VEG, KIND_WALL, KIND_FENCE, KIND_GAP = 0, 1, 2, 3, 4


@dataclass
class Segments:
    """Consecutive stretches of one vertical plane along its axis ``u`` (metres), one row each."""

    start: np.ndarray
    kind: np.ndarray
    height: np.ndarray
    color: np.ndarray
    win_color: np.ndarray
    win_pitch: np.ndarray
    win_width: np.ndarray
    floor_h: np.ndarray
    win_height: np.ndarray
    ground_floor: np.ndarray
    hedge: np.ndarray
    phase: np.ndarray


def _segments(rng: np.random.Generator, u0: float, u1: float, length: tuple[float, float],
              height: tuple[float, float], p_kind: tuple[float, float, float, float],
              gaps: tuple[tuple[float, float], ...] = ()) -> Segments:
    """Random stretches covering ``[u0, u1)``: buildings, vegetation, walls, fences; gaps forced."""
    rows = []
    u = u0
    while u < u1:
        gap = next((g for g in gaps if g[0] <= u < g[1]), None)
        if gap is not None:
            rows.append((u, KIND_GAP, 0.0))
            u = gap[1]
            continue
        seg_len = rng.uniform(*length)
        nxt = min((g[0] for g in gaps if g[0] > u), default=math.inf)
        end = min(u + seg_len, nxt)
        kind = int(rng.choice(4, p=p_kind))
        if kind == KIND_BUILDING:
            hgt = rng.uniform(*height)
        elif kind == KIND_VEG:
            hgt = rng.uniform(4.0, 11.0)
        else:
            hgt = rng.uniform(0.9, 2.4)
        rows.append((u, kind, hgt))
        u = end
    n = len(rows)
    base = _FACADES[rng.integers(len(_FACADES), size=n)] + rng.uniform(-18, 18, (n, 3)).astype(np.float32)
    kinds = np.array([r[1] for r in rows], np.int64)
    green = np.array([70, 96, 42], np.float32) + rng.uniform(-22, 22, (n, 3)).astype(np.float32)
    wall = np.array([150, 146, 138], np.float32) + rng.uniform(-40, 40, (n, 1)).astype(np.float32)
    color = np.where((kinds == KIND_VEG)[:, None], green, np.where((kinds >= KIND_WALL)[:, None], wall, base))
    reflect = rng.random(n) < 0.3
    win = np.where(reflect[:, None], np.array([150, 170, 190], np.float32),
                   np.array([48, 54, 62], np.float32)) * rng.uniform(0.6, 1.3, (n, 1)).astype(np.float32)
    return Segments(
        start=np.array([r[0] for r in rows], np.float64),
        kind=kinds,
        height=np.array([r[2] for r in rows], np.float64),
        color=np.clip(color, 0, 255).astype(np.float32),
        win_color=win.astype(np.float32),
        win_pitch=rng.uniform(2.3, 4.2, n),
        win_width=rng.uniform(0.35, 0.7, n),
        floor_h=rng.uniform(2.8, 3.7, n),
        win_height=rng.uniform(0.4, 0.65, n),
        ground_floor=rng.uniform(3.0, 4.6, n),
        hedge=np.where(rng.random(n) < 0.6, rng.uniform(0.5, 2.5, n), 0.0),
        phase=rng.uniform(0, 100, n),
    )


def _bumps(u: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """A bumpy profile in [-1, 1] along ``u``: the tops of tree rows and hedges."""
    return 0.5 * np.sin(u * 0.9 + phase) + 0.3 * np.sin(u * 2.3 + 1.7 * phase) + 0.2 * np.sin(u * 5.1 + phase * 0.3)


def _draw_plane(cv: Canvas, c0: int, c1: int, z: np.ndarray, u: np.ndarray, segs: Segments,
                shade: float) -> None:
    """Draw columns ``c0:c1`` of a vertical plane whose column ``c`` lies at depth ``z[c]`` and
    position ``u[c]`` along the plane (both metres)."""
    cam = cv.cam
    if c1 <= c0:
        return
    si = np.clip(np.searchsorted(segs.start, u, side="right") - 1, 0, len(segs.start) - 1)
    kind = segs.kind[si]
    height = segs.height[si]
    local = u - segs.start[si]
    bump = _bumps(u, segs.phase[si])
    veg_top = np.where(kind == KIND_VEG, height + 1.2 * bump, height + segs.hedge[si] * (0.75 + 0.25 * bump))
    top = np.where(kind == KIND_BUILDING, height, np.where(kind == KIND_GAP, 0.0, veg_top))
    y_top = cam.hz - cam.f * (top - cam.hc) / z
    y_bot = cam.hz + cam.f * cam.hc / z
    r0 = max(0, int(np.floor(y_top.min())))
    r1 = min(cam.h, int(np.ceil(y_bot.max())) + 1)
    if r1 <= r0:
        return
    rows = (np.arange(r0, r1, dtype=np.float32) + 0.5)[:, None]
    Y = cam.hc - (rows - cam.hz) * (z / cam.f).astype(np.float32)[None, :]  # height of each pixel above ground
    drawn = (Y >= 0) & (Y < top.astype(np.float32)[None, :])
    if not drawn.any():
        return
    ncol = c1 - c0
    h_row = height.astype(np.float32)[None, :]
    # label: the stretch's own class up to its height; above a wall or fence, a hedge
    low_id = np.select([kind == KIND_BUILDING, kind == KIND_WALL, kind == KIND_FENCE], [BUILDING, WALL, FENCE], VEG)
    val = np.where(Y < h_row, low_id.astype(np.uint16)[None, :], np.uint16(VEG))
    is_b = (kind == KIND_BUILDING)[None, :]
    veg = val == VEG

    # windows: a grid in facade coordinates, so it follows the perspective
    fu = local / segs.win_pitch[si]
    cu = np.floor(fu)
    ru = fu - cu
    in_col = (np.abs(ru - 0.5) < segs.win_width[si] / 2)[None, :]
    gf = segs.ground_floor[si].astype(np.float32)[None, :]
    fy = (Y - gf) / segs.floor_h[si].astype(np.float32)[None, :]
    cy = np.floor(fy)
    ry = fy - cy
    upper = is_b & (Y > gf) & (Y < h_row - 1.0)
    win = upper & in_col & (np.abs(ry - 0.5) < segs.win_height[si].astype(np.float32)[None, :] / 2)
    idx = (cy.astype(np.int32) * 31 + (cu.astype(np.int32) * 17 + si.astype(np.int32) * 7)[None, :]) % len(_WIN_TABLE)
    shop_u = (local / 5.0) % 1.0
    shop = is_b & (Y > 0.45) & (Y < gf - 0.5) & ((shop_u > 0.12) & (shop_u < 0.82))[None, :]
    darker = (is_b & (((Y > gf - 0.25) & (Y < gf)) | (Y > h_row - 0.6))) | (upper & (ry < 0.06))
    slat = ((kind == KIND_FENCE) & ((local / 0.14) % 1.0 < 0.35))[None, :] & ~veg
    # one brightness factor per pixel, then one colour gather: segment colour, glass or green
    fac = np.where(win, _WIN_TABLE[idx], np.float32(1.0))
    fac = np.where(shop, np.float32(0.7), fac)
    fac = np.where(darker | slat, fac * np.float32(0.65), fac)
    vtop = np.maximum(top, 0.1).astype(np.float32)[None, :]
    blotch = (0.85 + 0.25 * np.sin(local * 3.1 + si)).astype(np.float32)[None, :]
    fac = np.where(veg, (0.62 + 0.45 * np.clip(Y / vtop, 0, 1)) * blotch, fac)
    sel = np.where(veg, np.int8(2), np.where(win | shop, np.int8(1), np.int8(0)))
    green = np.where((kind == KIND_VEG)[:, None], segs.color[si], np.array([66, 96, 40], np.float32))
    pal = np.stack([segs.color[si], segs.win_color[si], green])  # (3, C, 3)
    col = pal[sel, np.arange(ncol)[None, :]]
    h = (1.0 - np.exp(-z / cv.light.haze_dist)).astype(np.float32)[None, :]
    col *= (fac * (shade * (1.0 - h)))[..., None]
    col += cv.light.haze * h[..., None]
    np.copyto(cv.img[r0:r1, c0:c1], col, where=drawn[..., None])
    np.copyto(cv.ids[r0:r1, c0:c1], val, where=drawn)


def _side_facade(cv: Canvas, side: int, xb: float, zmax: float, segs: Segments, shade: float) -> None:
    """The facade plane ``X = xb`` of one side of the street (``side`` -1 left, +1 right)."""
    cam = cv.cam
    dx = np.arange(cam.w, dtype=np.float64) + 0.5 - cam.cx
    zmin_px = cam.f * abs(xb) / zmax  # columns nearer the vanishing point than this look past zmax
    if side < 0:
        c0, c1 = 0, int(np.searchsorted(dx, -zmin_px))
    else:
        c0, c1 = int(np.searchsorted(dx, zmin_px, side="right")), cam.w
    if c1 <= c0:
        return
    z = cam.f * xb / dx[c0:c1]
    _draw_plane(cv, c0, c1, z, z.copy(), segs, shade)


def _front_plane(cv: Canvas, zp: float, x_lo: float, x_hi: float, segs: Segments, shade: float,
                 mirror: bool = False) -> None:
    """A plane facing the camera at depth ``zp``, spanning ``x_lo <= X < x_hi``."""
    cam = cv.cam
    xs = (np.arange(cam.w, dtype=np.float64) + 0.5 - cam.cx) * zp / cam.f
    c0 = int(np.searchsorted(xs, x_lo))
    c1 = int(np.searchsorted(xs, x_hi))
    if c1 <= c0:
        return
    u = -xs[c0:c1] if mirror else xs[c0:c1]
    _draw_plane(cv, c0, c1, np.full(c1 - c0, zp), u, segs, shade)


# --------------------------------------------------------------------------------------------
# the street plan
# --------------------------------------------------------------------------------------------
@dataclass
class Side:
    """One side of the street, from the road edge outwards."""

    sign: int
    edge: float  # X of the road edge (curb)
    park_w: float  # width of the parking lane between the outer travel lane and the curb (0: none)
    grass: float  # width of a grass strip along the curb (0: none)
    walk: float  # sidewalk width
    facade: float  # X of the facade plane
    parking: bool  # cars parked along this edge
    parking_marked: bool  # the parking lane is marked (raw 'parking', ignored in training)
    trees: bool
    segs: Segments


@dataclass
class Street:
    """The street the camera drives along (straight, along +Z), all distances in metres."""

    lanes: int
    lane_w: float
    left: float  # X of the left edge of the travel lanes
    right: float
    oncoming: int  # the leftmost lanes with traffic towards the camera
    zmax: float
    cross: tuple[float, float] | None
    sides: tuple[Side, Side]
    road_rgb: np.ndarray
    walk_rgb: np.ndarray
    grass_rgb: np.ndarray
    mark_rgb: np.ndarray
    dash: tuple[float, float, float]  # period, duty, phase
    edge_lines: bool
    tile: float


def _plan_street(rng: np.random.Generator) -> Street:
    """Lanes, parking lanes, grass strips, sidewalks, facades and surface colours of one street."""
    lanes = int(rng.choice([2, 2, 3, 4, 2, 3]))
    lane_w = rng.uniform(2.9, 3.6)
    oncoming = lanes // 2 if rng.random() < 0.65 else 0
    cam_lane = int(rng.integers(oncoming, lanes))
    left = -(cam_lane + rng.uniform(0.3, 0.7)) * lane_w
    right = left + lanes * lane_w
    zmax = rng.uniform(70, 220)
    cross = None
    if rng.random() < 0.4:
        c0 = rng.uniform(18, 55)
        cross = (c0, c0 + rng.uniform(10, 20))
    sides = []
    for sign, lane_edge in ((-1, left), (1, right)):
        parking = rng.random() < 0.45
        park_w = rng.uniform(2.1, 2.5) if parking else 0.0
        edge = lane_edge + sign * (park_w or rng.uniform(0.0, 0.4))
        grass = rng.uniform(0.8, 2.2) if rng.random() < 0.35 else 0.0
        walk = rng.uniform(1.8, 5.0)
        facade = edge + sign * (grass + walk + rng.uniform(0.0, 0.4))
        gaps = (cross,) if cross else ()
        segs = _segments(rng, 0.0, zmax + 1.0, (8, 35), (7, 32), (0.74, 0.14, 0.06, 0.06), gaps)
        sides.append(Side(sign, edge, park_w, grass, walk, facade, parking, parking and rng.random() < 0.25,
                          rng.random() < 0.5, segs))
    gray = rng.uniform(58, 125)
    road = np.array([gray, gray, gray], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    if rng.random() < 0.5:
        walk = _jitter(rng, [rng.uniform(110, 175)] * 3, 8)
    else:
        walk = _jitter(rng, (165, 120, 110), 20)  # reddish pavers
    grass = _jitter(rng, (96, 128, 58), 20)
    mark = _jitter(rng, (215, 215, 205), 15) if rng.random() < 0.9 else _jitter(rng, (215, 180, 60), 10)
    return Street(lanes, lane_w, left, right, oncoming, zmax, cross, tuple(sides), road, walk, grass, mark,
                  (rng.uniform(8, 13), rng.uniform(0.25, 0.5), rng.uniform(0, 10)), bool(rng.random() < 0.6),
                  rng.uniform(0.25, 0.6))


def _draw_sky(cv: Canvas, top: np.ndarray, horizon: np.ndarray) -> None:
    cam = cv.cam
    t = np.clip((np.arange(cam.h, dtype=np.float32) + 0.5) / max(cam.hz, 1.0), 0, 1) ** 1.5
    cv.img[:] = (top[None, :] * (1 - t[:, None]) + horizon[None, :] * t[:, None])[:, None, :]
    cv.ids[:] = SKY


def _draw_ground(cv: Canvas, st: Street) -> None:
    """Road, sidewalks, grass strips and the cross street, per pixel from the ground-plane
    coordinates of each pixel below the horizon."""
    cam, light = cv.cam, cv.light
    r0 = max(0, int(np.floor(cam.hz + 0.5)))
    if r0 >= cam.h:
        return
    rows = np.arange(r0, cam.h, dtype=np.float32) + 0.5
    Z = (cam.f * cam.hc / np.maximum(rows - cam.hz, 1e-3))[:, None]  # (R, 1)
    X = ((np.arange(cam.w, dtype=np.float32) + 0.5 - cam.cx) / cam.f)[None, :] * Z  # (R, W)
    L, R = st.sides
    # materials, coloured in one gather at the end: road, marking, parking, grass, sidewalk, curb
    M_ROAD, M_MARK, M_PARK, M_GRASS, M_WALK, M_CURB = range(6)
    val = np.full(X.shape, ROAD, np.uint16)
    mat = np.zeros(X.shape, np.uint8)
    fac = np.ones(X.shape, np.float32)
    # road markings, in world coordinates so that they follow the perspective
    mark = np.zeros(X.shape, bool)
    period, duty, phase = st.dash
    dashes = (((Z + phase) / period) % 1.0) < duty
    for i in range(1, st.lanes):
        xl = st.left + i * st.lane_w
        solid = bool(st.oncoming) and i == st.oncoming
        mark |= (np.abs(X - xl) < (0.11 if solid else 0.08)) & (dashes | solid)
    if st.edge_lines:
        edge_l = st.left + (0.0 if L.park_w else 0.3)
        edge_r = st.right - (0.0 if R.park_w else 0.3)
        mark |= (np.abs(X - edge_l) < 0.07) | (np.abs(X - edge_r) < 0.07)
    if st.cross:
        zc0, zc1 = st.cross
        zebra = (Z > zc0 - 4.5) & (Z < zc0 - 1.0) & (((X / 1.0) % 1.0) < 0.5)
        mark |= zebra & (X > st.left + 0.3) & (X < st.right - 0.3)
        mark &= ~((Z > zc0) & (Z < zc1))  # no lane lines across the junction
    mat[mark] = M_MARK
    # the edges of the street: parking lanes on the road, grass strips and sidewalks beyond
    for side in (L, R):
        d = (side.edge - X) if side.sign < 0 else (X - side.edge)  # distance outwards from the curb
        if side.parking_marked:
            park = (d > -side.park_w) & (d < 0) & ~mark
            val[park] = PARKING
            mat[park] = M_PARK
        out = d >= 0
        if st.cross:
            out &= ~((Z > st.cross[0] + 2.5) & (Z < st.cross[1] - 2.5)) | (d < side.grass + side.walk)
        grass = out & (d < side.grass)
        walk = out & ~grass
        val[grass] = TERRAIN
        mat[grass] = M_GRASS
        val[walk] = SIDEWALK
        mat[walk] = M_WALK
        mat[walk & ((d - side.grass) < 0.16)] = M_CURB
        paved = walk | (mat == M_PARK)  # parking lanes are paved too, so they do not look like road
        tiles = paved & (((np.abs(d) / st.tile) % 1.0 < 0.07) | (((Z / st.tile) % 1.0) < 0.07))
        fac[tiles] = 0.85
        if st.cross:
            # the cross street: road between its own two sidewalks, beyond the main sidewalks
            in_cross = (d >= side.grass + side.walk) & (Z > st.cross[0] + 2.5) & (Z < st.cross[1] - 2.5)
            val[in_cross] = ROAD
            mat[in_cross] = M_ROAD
    if light.sunny:
        # shadows cast by the facades on the side facing away from the sun
        src = R if light.direction[0] > 0 else L
        k = abs(light.direction[0]) / max(light.direction[1], 0.2)
        si = np.clip(np.searchsorted(src.segs.start, Z[:, 0], side="right") - 1, 0, len(src.segs.start) - 1)
        hgt = (np.where(src.segs.kind[si] == KIND_GAP, 0.0, src.segs.height[si])[:, None] * k).astype(np.float32)
        shadow = (X > src.facade - hgt) if src.sign > 0 else (X < src.facade + hgt)
        fac[shadow] *= 0.52
    pal = np.stack([st.road_rgb, st.mark_rgb, st.road_rgb * 1.12 + 6, st.grass_rgb, st.walk_rgb,
                    np.minimum(st.walk_rgb * 1.12 + 8, 255)]).astype(np.float32)
    h = (1.0 - np.exp(-Z / light.haze_dist)).astype(np.float32)
    col = pal[mat]
    col *= (fac * (1 - h))[..., None]
    col += light.haze * h[..., None]
    cv.img[r0:] = col
    cv.ids[r0:] = val


# --------------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------------
_FACES = ((0, 1, 5, 4), (2, 3, 7, 6), (3, 0, 4, 7), (1, 2, 6, 5), (4, 5, 6, 7))
FRONT, BACK, LEFT, RIGHT, TOP = range(5)
_FACE_IDX = np.array(_FACES)


def _hexa(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
          ix: float = 0.0, iz0: float = 0.0, iz1: float = 0.0) -> np.ndarray:
    """The 8 corners of a box whose top is inset by ``ix`` sideways and ``iz0``/``iz1`` at its ends."""
    return np.array([
        (x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1),
        (x0 + ix, y1, z0 + iz0), (x1 - ix, y1, z0 + iz0), (x1 - ix, y1, z1 - iz1), (x0 + ix, y1, z1 - iz1),
    ], np.float64)


def _draw_hexa(cv: Canvas, verts: np.ndarray, rgb, value: int) -> dict[int, np.ndarray]:
    """Draw the faces of a convex box that face the camera; returns them (3D quads) by face index."""
    q = verts[_FACE_IDX]  # (5, 4, 3)
    c = q.mean(1)
    n = np.cross(q[:, 1] - q[:, 0], q[:, 3] - q[:, 0])
    n *= np.where(np.einsum("ij,ij->i", n, c - verts.mean(0)) < 0, -1.0, 1.0)[:, None]  # outwards
    eye = np.array([0.0, cv.cam.hc, 0.0])
    visible = np.einsum("ij,ij->i", n, eye - c) > 1e-9
    n /= np.maximum(np.linalg.norm(n, axis=1), 1e-12)[:, None]
    light = cv.light
    shade = light.ambient + light.diffuse * np.maximum(0.0, n @ light.direction)
    px = cv.cam.project(q.reshape(-1, 3)).reshape(5, 4, 2)
    shown = {}
    for fi in np.flatnonzero(visible).tolist():
        shown[fi] = q[fi]
        cv.fill(px[fi], rgb, value, float(c[fi, 2]), float(shade[fi]))
    return shown


def _wheel(cv: Canvas, xs: float, zc: float, r: float, value: int, tire=(28, 28, 30), rim=(120, 120, 122)) -> None:
    pts = np.stack([np.full(len(_CIRCLE), xs), r + r * _CIRCLE[:, 1], zc + r * _CIRCLE[:, 0]], 1)
    cv.fill3(pts, tire, value)
    pts = np.stack([np.full(len(_CIRCLE), xs), r + 0.55 * r * _CIRCLE[:, 1], zc + 0.55 * r * _CIRCLE[:, 0]], 1)
    cv.fill3(pts, rim, value)


# a rounded-rectangle outline (superellipse): soft-looking footprints without blurring the image
_SQUIRCLE = np.sign(_CIRCLE) * np.abs(_CIRCLE) ** 0.5


def _ground_shadow(cv: Canvas, x0: float, x1: float, z0: float, z1: float, strength: float) -> None:
    """Darken the ground under an object: a rounded footprint, with a darker core."""
    xc, zc, rx, rz = (x0 + x1) / 2, (z0 + z1) / 2, (x1 - x0) / 2, (z1 - z0) / 2
    outer = 0.5 + 0.5 * strength
    for scale, k in ((1.0, outer), (0.8, strength / outer)):  # the core ends up at ``strength``
        pts = np.zeros((len(_SQUIRCLE), 3))
        pts[:, 0] = xc + scale * rx * _SQUIRCLE[:, 0]
        pts[:, 2] = zc + scale * rz * _SQUIRCLE[:, 1]
        cv.darken(cv.cam.project(pts), k)


@dataclass
class Vehicle:
    kind: int  # CAR, TRUCK or BUS
    x: float  # centre X
    z: float  # nearest end
    front: bool  # the near end is the front (oncoming or parked facing us)
    rng_seed: int  # details drawn from their own generator, so planning does not depend on them


def _draw_vehicle(cv: Canvas, v: Vehicle) -> None:
    rng = np.random.default_rng(v.rng_seed)
    if v.kind == CAR:
        _draw_car(cv, v, rng)
    else:
        _draw_big(cv, v, rng)


def _draw_car(cv: Canvas, v: Vehicle, rng: np.random.Generator) -> None:
    style = rng.choice(4, p=[0.5, 0.25, 0.15, 0.10])  # sedan, hatchback, SUV, van
    width = rng.uniform(1.65, 1.95) + (0.1 if style >= 2 else 0)
    length = (rng.uniform(4.3, 4.9), rng.uniform(3.7, 4.2), rng.uniform(4.4, 4.9), rng.uniform(4.6, 5.2))[style]
    y0, y1 = 0.3, rng.uniform(0.85, 1.0) + (0.12 if style >= 2 else 0)
    y2 = (rng.uniform(1.38, 1.5), rng.uniform(1.4, 1.52), rng.uniform(1.65, 1.8), rng.uniform(1.9, 2.1))[style]
    paint = _CAR_COLORS[rng.choice(len(_CAR_COLORS), p=_CAR_WEIGHTS / _CAR_WEIGHTS.sum())]
    paint = _jitter(rng, paint, 10)
    x0, x1, z0 = v.x - width / 2, v.x + width / 2, v.z
    z1 = z0 + length
    val = cv.instance(CAR)
    tiny = cv.cam.f * width / z0 < 10  # a few pixels wide: details would be sub-pixel, skip them
    if tiny:
        y0 = 0.05
    else:
        _ground_shadow(cv, x0 - 0.2, x1 + 0.2, z0 - 0.25, z1 + 0.15, 0.45 if cv.light.sunny else 0.55)
        tire, dark = (28, 28, 30), (18, 18, 20)
        for xa, xb in ((x0 + 0.04, x0 + 0.3), (x1 - 0.3, x1 - 0.04)):  # tyres seen under the near bumper
            cv.fill3([(xa, 0, z0 + 0.6), (xb, 0, z0 + 0.6), (xb, 0.6, z0 + 0.6), (xa, 0.6, z0 + 0.6)], tire, val)
        cv.fill3([(x0 + 0.3, 0.1, z0 + 0.5), (x1 - 0.3, 0.1, z0 + 0.5), (x1 - 0.3, 0.4, z0 + 0.5),
                  (x0 + 0.3, 0.4, z0 + 0.5)], dark, val)
    body = _draw_hexa(cv, _hexa(x0, x1, y0, y1, z0, z1, 0.05, 0.12, 0.12), paint, val)
    # cabin: long bonnet at the front, short boot at the back; vans are nearly all cabin
    hood, boot = ((1.3, 0.8), (1.3, 0.25), (1.2, 0.5), (0.6, 0.15))[style]
    near, far = (hood, boot) if v.front else (boot, hood)
    slope_n, slope_f = (0.55, 0.35) if v.front else (0.35, 0.55)
    if style == 3:
        slope_n, slope_f = (0.35, 0.05) if v.front else (0.05, 0.35)
    cab = _hexa(x0 + 0.1, x1 - 0.1, y1, y2, z0 + near, z1 - far, 0.12, slope_n, slope_f)
    glass = np.clip(np.array([45, 52, 62], np.float32) * rng.uniform(0.7, 1.5), 0, 255)
    faces = _draw_hexa(cv, cab, paint, val)
    if tiny:
        return
    for fi, q in faces.items():
        if fi == TOP:
            continue
        c = q.mean(0)
        g = c + (q - c) * np.array([0.86, 0.86, 0.8, 0.8])[:, None]
        g[:2] = c + (q[:2] - c) * 0.86  # keep a sill under the window
        cv.fill3(g, glass * (1.25 if fi in (FRONT, BACK) else 1.0), val)
    # lights and number plate on the near face
    if FRONT in body:
        zf = z0
        lamp = (225, 225, 205) if v.front else ((250, 60, 50) if rng.random() < 0.3 else (170, 28, 30))
        for a, b in ((x0 + 0.08, x0 + 0.42), (x1 - 0.42, x1 - 0.08)):
            cv.fill3([(a, y1 - 0.26, zf), (b, y1 - 0.26, zf), (b, y1 - 0.08, zf), (a, y1 - 0.08, zf)], lamp, val)
        if v.front:
            cv.fill3([(v.x - 0.45, 0.48, zf), (v.x + 0.45, 0.48, zf), (v.x + 0.45, y1 - 0.12, zf),
                      (v.x - 0.45, y1 - 0.12, zf)], (35, 36, 38), val)
        cv.fill3([(v.x - 0.26, 0.36, zf), (v.x + 0.26, 0.36, zf), (v.x + 0.26, 0.47, zf), (v.x - 0.26, 0.47, zf)],
                 (215, 215, 210), val)
    xs = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    if xs is not None:
        for zc in (z0 + 0.78, z1 - 0.78):
            _wheel(cv, xs, zc, 0.32, val)


def _draw_big(cv: Canvas, v: Vehicle, rng: np.random.Generator) -> None:
    """A bus (one tall box with window bands) or a truck (cab + cargo box)."""
    width = rng.uniform(2.45, 2.55)
    x0, x1, z0 = v.x - width / 2, v.x + width / 2, v.z
    val = cv.instance(v.kind)
    paint = _jitter(rng, _VEHICLE_PAINT[rng.integers(len(_VEHICLE_PAINT))], 12)
    glass = np.array([40, 48, 58], np.float32) * rng.uniform(0.8, 1.4)
    if v.kind == BUS:
        length, height = rng.uniform(10, 13), rng.uniform(2.9, 3.2)
        z1 = z0 + length
        _ground_shadow(cv, x0 - 0.2, x1 + 0.2, z0 - 0.3, z1 + 0.2, 0.5)
        faces = _draw_hexa(cv, _hexa(x0, x1, 0.35, height, z0, z1, 0.03, 0.05, 0.05), paint, val)
        if FRONT in faces:
            top = 2.75 if v.front else 2.6
            bottom = 1.0 if v.front else 1.9
            cv.fill3([(x0 + 0.15, bottom, z0), (x1 - 0.15, bottom, z0), (x1 - 0.15, top, z0), (x0 + 0.15, top, z0)],
                     glass * 1.2, val)
            if v.front:
                cv.fill3([(x0 + 0.4, top + 0.05, z0), (x1 - 0.4, top + 0.05, z0), (x1 - 0.4, height - 0.08, z0),
                          (x0 + 0.4, height - 0.08, z0)], (20, 20, 20), val)
        xs = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if xs is not None:
            pane = rng.uniform(1.3, 1.8)
            zz = z0 + 0.5
            while zz + pane < z1 - 0.4:
                cv.fill3([(xs, 1.3, zz), (xs, 1.3, zz + pane - 0.12), (xs, 2.6, zz + pane - 0.12), (xs, 2.6, zz)],
                         glass, val)
                zz += pane
            for zc in (z0 + 2.4, z1 - 2.8):
                _wheel(cv, xs, zc, 0.5, val)
        return
    cab_len, cargo_len = rng.uniform(2.0, 2.5), rng.uniform(4.5, 8.0)
    cab_h, cargo_h = rng.uniform(2.6, 3.0), rng.uniform(3.1, 3.8)
    cargo_rgb = _jitter(rng, (210, 210, 208) if rng.random() < 0.6 else _VEHICLE_PAINT[rng.integers(6)], 15)
    z1 = z0 + cab_len + cargo_len + 0.2
    _ground_shadow(cv, x0 - 0.2, x1 + 0.2, z0 - 0.3, z1 + 0.2, 0.5)
    if v.front:  # cab nearest, cargo box behind it (drawn first)
        _draw_hexa(cv, _hexa(x0, x1, 0.6, cargo_h, z0 + cab_len + 0.2, z1), cargo_rgb, val)
        faces = _draw_hexa(cv, _hexa(x0 + 0.05, x1 - 0.05, 0.45, cab_h, z0, z0 + cab_len, 0.05, 0.15, 0.0), paint, val)
        if FRONT in faces:
            cv.fill3([(x0 + 0.2, 1.6, z0 + 0.1), (x1 - 0.2, 1.6, z0 + 0.1), (x1 - 0.2, cab_h - 0.2, z0 + 0.13),
                      (x0 + 0.2, cab_h - 0.2, z0 + 0.13)], glass * 1.2, val)
    else:  # cargo box nearest; the cab hides behind it
        _draw_hexa(cv, _hexa(x0 + 0.05, x1 - 0.05, 0.45, cab_h, z1 - cab_len, z1, 0.05, 0.0, 0.15), paint, val)
        faces = _draw_hexa(cv, _hexa(x0, x1, 0.6, cargo_h, z0, z0 + cargo_len), cargo_rgb, val)
        if FRONT in faces:
            cv.fill3([(v.x - 0.03, 0.7, z0), (v.x + 0.03, 0.7, z0), (v.x + 0.03, cargo_h - 0.1, z0),
                      (v.x - 0.03, cargo_h - 0.1, z0)], (60, 60, 60), val)
            for a, b in ((x0 + 0.1, x0 + 0.35), (x1 - 0.35, x1 - 0.1)):
                cv.fill3([(a, 0.65, z0), (b, 0.65, z0), (b, 0.8, z0), (a, 0.8, z0)], (180, 30, 30), val)
    cv.fill3([(x0 + 0.2, 0.15, z0 + 0.4), (x1 - 0.2, 0.15, z0 + 0.4), (x1 - 0.2, 0.6, z0 + 0.4),
              (x0 + 0.2, 0.15 + 0.45, z0 + 0.4)], (20, 20, 22), val)
    xs = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    if xs is not None:
        for zc in (z0 + 1.2, z1 - 1.6, z1 - 2.7):
            _wheel(cv, xs, zc, 0.5, val)


def _person_parts(h: float, stride: float, swing: float) -> dict[str, list[np.ndarray]]:
    """Body parts of a standing/walking person of height ``h`` (metres, feet at the origin)."""
    hip, sh = 0.52 * h, 0.81 * h
    sw, hw = 0.125 * h, 0.085 * h
    legs = [_seg((-0.045 * h, hip), (-0.045 * h - stride, 0.03 * h), 0.075 * h),
            _seg((0.045 * h, hip), (0.045 * h + stride, 0.03 * h), 0.075 * h)]
    arms = [_seg((-sw + 0.02 * h, sh - 0.02 * h), (-sw - 0.02 * h + swing, 0.44 * h), 0.05 * h),
            _seg((sw - 0.02 * h, sh - 0.02 * h), (sw + 0.02 * h - swing, 0.44 * h), 0.05 * h)]
    torso = [np.array([(-sw, sh), (sw, sh), (hw + 0.01 * h, hip - 0.03 * h), (-hw - 0.01 * h, hip - 0.03 * h)])]
    neck = [_rect(-0.025 * h, sh - 0.01 * h, 0.025 * h, 0.88 * h)]
    head = [_disc(0, 0.93 * h, 0.058 * h, 0.068 * h)]
    hair = [np.array([p for p in _disc(0, 0.935 * h, 0.06 * h, 0.068 * h) if p[1] >= 0.945 * h])]
    shoes = [_rect(-0.075 * h - stride, 0, -0.01 * h - stride, 0.035 * h),
             _rect(0.01 * h + stride, 0, 0.075 * h + stride, 0.035 * h)]
    return {"legs": legs, "shoes": shoes, "torso": torso, "arms": arms, "neck": neck, "head": head, "hair": hair}


@dataclass
class Pedestrian:
    x: float
    z: float
    height: float
    rng_seed: int


def _draw_person(cv: Canvas, p: Pedestrian) -> None:
    rng = np.random.default_rng(p.rng_seed)
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10)
    top = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 15)
    trousers = _jitter(rng, _CLOTHES[rng.integers(4)], 10)
    hair = _jitter(rng, (40, 30, 25) if rng.random() < 0.8 else (160, 130, 80), 10)
    stride = rng.uniform(-0.11, 0.11) * p.height
    swing = rng.uniform(-0.05, 0.05) * p.height
    _ground_shadow(cv, p.x - 0.4, p.x + 0.4, p.z - 0.3, p.z + 0.4, 0.6)
    val = cv.instance(PERSON)
    parts = _person_parts(p.height, stride, swing)
    colours = {"legs": trousers, "shoes": (25, 25, 25), "torso": top, "arms": top, "neck": skin, "head": skin,
               "hair": hair}
    for name in ("legs", "shoes", "torso", "arms", "neck", "head", "hair"):
        for poly in parts[name]:
            if len(poly) >= 3:
                cv.bill(p.x, p.z, poly, colours[name], val)
    if rng.random() < 0.25:  # a bag
        s = rng.choice([-1, 1])
        cv.bill(p.x, p.z, _rect(s * 0.12 * p.height, 0.4 * p.height, s * 0.2 * p.height, 0.56 * p.height),
                _jitter(rng, (60, 50, 45), 30), val)


@dataclass
class Cyclist:
    x: float
    z: float
    motor: bool
    side_view: bool  # crossing (seen from the side) or riding along the street (seen from behind)
    direction: int
    rng_seed: int


def _draw_cyclist(cv: Canvas, c: Cyclist) -> None:
    rng = np.random.default_rng(c.rng_seed)
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10)
    top = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 15)
    legs = _jitter(rng, _CLOTHES[rng.integers(4)], 10)
    frame = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 20)
    helmet = _jitter(rng, (30, 30, 30) if c.motor else (200, 60, 40), 30)
    d = c.direction
    x, z = c.x, c.z
    _ground_shadow(cv, x - 0.9, x + 0.9, z - 0.3, z + 0.4, 0.6)
    vid = cv.instance(MOTORCYCLE if c.motor else BICYCLE)
    rid = cv.instance(RIDER)
    if c.side_view:
        r = 0.32 if c.motor else 0.34
        wx = 0.68 if c.motor else 0.53
        for u in (-wx, wx):
            cv.bill(x, z, _disc(u, r, r), (25, 25, 27), vid)
            cv.bill(x, z, _disc(u, r, 0.6 * r), (110, 110, 112) if c.motor else (150, 150, 150), vid)
        if c.motor:
            body = np.array([(-0.85, 0.55), (-0.5, 0.82), (0.05, 0.8), (0.2, 0.98), (0.5, 0.92), (0.45, 0.6),
                             (0.15, 0.3), (-0.3, 0.3)]) * (d, 1)
            cv.bill(x, z, body, frame, vid)
            cv.bill(x, z, _seg((0.45 * d, 0.9), (wx * d, r), 0.07), (90, 90, 90), vid)
            cv.bill(x, z, _seg((0.4 * d, 1.05), (0.55 * d, 1.05), 0.05), (40, 40, 40), vid)
            hip, shoulder, hand, knee, foot = (-0.3, 1.0), (0.05, 1.5), (0.45, 1.05), (0.15, 0.85), (0.05, 0.45)
        else:
            bb, seat, head_t = (0.0, 0.32), (-0.15, 0.88), (0.45, 0.88)
            for p, q in ((bb, seat), (seat, head_t), (bb, head_t), (bb, (-wx, r)), (seat, (-wx, r)),
                         (head_t, (wx, r)), (head_t, (0.42, 1.02))):
                cv.bill(x, z, _seg((p[0] * d, p[1]), (q[0] * d, q[1]), 0.045), frame, vid)
            hip, shoulder, hand, knee, foot = (-0.15, 0.95), (0.12, 1.48), (0.42, 1.02), (0.12, 0.68), (0.02, 0.22)
        sc = (d, 1)
        cv.bill(x, z, _seg(np.multiply(hip, sc), np.multiply(knee, sc), 0.15), legs, rid)
        cv.bill(x, z, _seg(np.multiply(knee, sc), np.multiply(foot, sc), 0.11), legs, rid)
        cv.bill(x, z, _seg(np.multiply(hip, sc), np.multiply(shoulder, sc), 0.3), top, rid)
        cv.bill(x, z, _seg(np.multiply(shoulder, sc), np.multiply(hand, sc), 0.08), top, rid)
        hx, hy = shoulder[0] * d + 0.06 * d, shoulder[1] + 0.16
        cv.bill(x, z, _disc(hx, hy, 0.11, 0.12), skin, rid)
        cv.bill(x, z, np.array([p for p in _disc(hx, hy + 0.01, 0.125, 0.13) if p[1] >= hy]), helmet, rid)
        return
    # seen from behind: wheel edge-on, handlebar, rider's back
    tw = 0.14 if c.motor else 0.05
    cv.bill(x, z, _rect(-tw / 2, 0, tw / 2, 0.66), (25, 25, 27), vid)
    if c.motor:
        cv.bill(x, z, _rect(-0.25, 0.45, 0.25, 0.95), frame, vid)
        cv.bill(x, z, _rect(-0.1, 0.75, 0.1, 0.85), (190, 30, 30), vid)
    cv.bill(x, z, _rect(-0.3, 1.0, 0.3, 1.05), (40, 40, 40), vid)
    cv.bill(x, z, _rect(-0.04, 0.6, 0.04, 1.02), frame, vid)
    for s in (-1, 1):
        cv.bill(x, z, _seg((s * 0.1, 0.95), (s * 0.13, 0.35), 0.12), legs, rid)
        cv.bill(x, z, _seg((s * 0.19, 1.42), (s * 0.29, 1.03), 0.08), top, rid)
    cv.bill(x, z, np.array([(-0.2, 1.47), (0.2, 1.47), (0.16, 0.92), (-0.16, 0.92)]), top, rid)
    cv.bill(x, z, _disc(0, 1.6, 0.1, 0.12), skin, rid)
    cv.bill(x, z, np.array([p for p in _disc(0, 1.61, 0.115, 0.13) if p[1] >= 1.56]), helmet, rid)


@dataclass
class PoleThing:
    x: float
    z: float
    kind: str  # lamp, sign, light, plain, overhead
    toward_road: int  # +1: the road is at +X
    rng_seed: int


def _draw_pole(cv: Canvas, p: PoleThing) -> None:
    rng = np.random.default_rng(p.rng_seed)
    grey = _jitter(rng, [rng.uniform(90, 165)] * 3, 8)
    pw = rng.uniform(0.1, 0.2)
    height = {"lamp": rng.uniform(6, 9), "sign": rng.uniform(2.6, 3.4), "light": rng.uniform(3.0, 3.8),
              "plain": rng.uniform(3, 6), "overhead": rng.uniform(5.5, 6.5)}[p.kind]
    x, z, t = p.x, p.z, p.toward_road
    val = POLE
    cv.bill(x, z, _rect(-pw / 2, 0, pw / 2, height), grey, val)
    if p.kind == "lamp":
        arm = rng.uniform(1.0, 2.5)
        cv.bill(x, z, _seg((0, height - 0.4), (t * arm, height), 0.08), grey, val)
        cv.bill(x, z, _rect(t * arm - 0.25, height - 0.12, t * arm + 0.25, height + 0.08), grey * 0.8, val)
    elif p.kind == "sign":
        cy = height - rng.uniform(0.3, 0.5)
        r = rng.uniform(0.3, 0.42)
        shape = rng.integers(4)
        if rng.random() < 0.25:  # seen from behind: a grey disc or plate
            back = (150, 150, 150)
            cv.bill(x, z, _disc(0, cy, r) if shape < 2 else _rect(-r, cy - r, r, cy + r), back, SIGN)
        elif shape == 0:  # prohibition: red ring, white disc
            cv.bill(x, z, _disc(0, cy, r), (200, 30, 30), SIGN)
            cv.bill(x, z, _disc(0, cy, 0.74 * r), (235, 235, 235), SIGN)
        elif shape == 1:  # mandatory: blue disc with a white arrow
            cv.bill(x, z, _disc(0, cy, r), (30, 80, 170), SIGN)
            cv.bill(x, z, _rect(-0.08 * r, cy - 0.6 * r, 0.08 * r, cy + 0.5 * r), (235, 235, 235), SIGN)
        elif shape == 2:  # warning triangle
            tri = np.array([(-r * 1.1, cy - r * 0.8), (r * 1.1, cy - r * 0.8), (0, cy + r * 1.1)])
            cv.bill(x, z, tri, (200, 30, 30), SIGN)
            cv.bill(x, z, (tri - (0, cy)) * 0.7 + (0, cy - 0.05 * r), (235, 235, 235), SIGN)
        else:  # information plate
            rgb = ((30, 80, 170), (240, 200, 30), (235, 235, 235), (20, 110, 60))[rng.integers(4)]
            cv.bill(x, z, _rect(-r * 1.3, cy - r * 0.8, r * 1.3, cy + r * 0.8), rgb, SIGN)
            cv.bill(x, z, _rect(-r * 1.1, cy - r * 0.1, r * 1.1, cy + r * 0.1), (250, 250, 250), SIGN)
        if rng.random() < 0.3:
            cy2 = cy - r - 0.35
            cv.bill(x, z, _rect(-r, cy2 - 0.2, r, cy2 + 0.2), (235, 235, 235), SIGN)
    elif p.kind in ("light", "overhead"):
        if p.kind == "overhead":
            arm = rng.uniform(4.0, 7.0)
            cv.bill(x, z, _seg((0, height - 0.3), (t * arm, height - 0.1), 0.14), grey, val)
            lx, ly = t * arm * rng.uniform(0.55, 0.9), height - 0.2
        else:
            lx, ly = 0.0, height - 0.5
        back = rng.random() < 0.3
        box = (30, 32, 30) if not back else (60, 62, 58)
        cv.bill(x, z, _rect(lx - 0.16, ly - 0.95, lx + 0.16, ly), box, LIGHT)
        if not back:
            lit = rng.integers(3)
            for i, on in enumerate(((230, 40, 30), (240, 180, 20), (40, 220, 110))):
                rgb = on if i == lit else tuple(v * 0.25 for v in on)
                cv.bill(x, z, _disc(lx, ly - 0.17 - i * 0.3, 0.1), rgb, LIGHT)


@dataclass
class Tree:
    x: float
    z: float
    rng_seed: int
    bush: bool = False


def _draw_tree(cv: Canvas, t: Tree) -> None:
    rng = np.random.default_rng(t.rng_seed)
    base = _jitter(rng, (62, 92, 38), 18)
    if t.bush:
        for _ in range(int(rng.integers(3, 7))):
            r = rng.uniform(0.35, 0.8)
            cv.bill(t.x, t.z, _disc(rng.normal(0, 0.6), r * 0.8, r, r * rng.uniform(0.7, 1.0)),
                    base * rng.uniform(0.7, 1.2), VEG)
        return
    crown = rng.uniform(1.4, 3.2)
    trunk = rng.uniform(1.8, 3.4)
    cv.bill(t.x, t.z, _rect(-0.14, 0, 0.14, trunk + crown * 0.5), _jitter(rng, (85, 70, 55), 15), VEG)
    blobs = int(rng.integers(6, 12)) if cv.cam.f * crown / t.z > 6 else 3  # far crowns: fewer blobs
    for i in range(blobs):
        r = crown * rng.uniform(0.45, 0.75)
        cx = rng.normal(0, 0.45 * crown)
        cy = trunk + crown + rng.normal(0, 0.35 * crown)
        light = 0.7 + 0.5 * (i / 12) + rng.uniform(-0.1, 0.1)
        cv.bill(t.x, t.z, _disc(cx, cy, r, r * rng.uniform(0.8, 1.1)), base * light, VEG)


@dataclass
class Static:
    x: float
    z: float
    kind: str
    rng_seed: int


def _draw_static(cv: Canvas, s: Static) -> None:
    rng = np.random.default_rng(s.rng_seed)
    rgb = _jitter(rng, ((50, 80, 55), (90, 90, 95), (120, 100, 70))[rng.integers(3)], 15)
    if s.kind == "bin":
        _draw_hexa(cv, _hexa(s.x - 0.28, s.x + 0.28, 0, 1.0, s.z, s.z + 0.55), rgb, STATIC)
    elif s.kind == "bollard":
        _draw_hexa(cv, _hexa(s.x - 0.08, s.x + 0.08, 0, 0.85, s.z, s.z + 0.16), (70, 70, 72), STATIC)
    else:  # a bench or a planter box
        _draw_hexa(cv, _hexa(s.x - 0.3, s.x + 0.3, 0, 0.5, s.z, s.z + 1.6), rgb, STATIC)


def _visible_z(cam: Camera, x: float, zmin: float, margin: float = 0.15) -> float:
    """The smallest depth at which lateral position ``x`` is inside the picture (plus a margin)."""
    half = (cam.cx if x < 0 else cam.w - cam.cx) / cam.f
    return max(zmin, abs(x) / (half * (1 + margin)))


def _depth(rng: np.random.Generator, nearest: float, farthest: float) -> float:
    """A depth in ``[nearest, farthest]``; just beyond ``nearest`` where that is already farther."""
    return float(rng.uniform(nearest, max(farthest, nearest + 1.0)))


def _plan_objects(rng: np.random.Generator, cam: Camera, st: Street) -> list[tuple[float, object]]:
    """Everything standing on the ground, as ``(depth, object)``; drawn far to near.

    Nothing stands closer than about 2.5 m to the camera, so projected coordinates stay bounded."""
    objs: list[tuple[float, object]] = []
    boxes: list[tuple[float, float, float, float]] = []  # vehicle footprints (x0, x1, z0, z1), upper bounds

    def seed() -> int:
        return int(rng.integers(2**31))

    def add_vehicle(v: Vehicle) -> None:
        half, length = {CAR: (1.05, 5.3), BUS: (1.3, 13.1), TRUCK: (1.3, 10.8)}[v.kind]
        boxes.append((v.x - half, v.x + half, v.z, v.z + length))
        objs.append((v.z, v))

    def free(x0: float, x1: float, z0: float, z1: float) -> bool:
        """True when nothing planned so far stands there (no road user walks through a car)."""
        return all(x1 < a or x0 > b or z1 < c or z0 > d for a, b, c, d in boxes)

    zlim = min(st.zmax - 10, 90)
    # traffic in the lanes; one car always placed fairly close so the victim class is present
    lanes = [st.left + (i + 0.5) * st.lane_w for i in range(st.lanes)]
    sure_lane = int(rng.integers(st.lanes))
    sure_z = rng.uniform(9, 26)
    for i, xc in enumerate(lanes):
        oncoming = i < st.oncoming
        ego_lane = st.left + i * st.lane_w < 0 < st.left + (i + 1) * st.lane_w
        z = rng.uniform(12, 25) if ego_lane else rng.uniform(7, 20)
        if i == sure_lane:
            z = sure_z
        first = True
        while z < zlim:
            if first and i == sure_lane:
                kind = CAR
            else:
                u = rng.random()
                kind = CAR if u < 0.9 else (BUS if u < 0.95 else TRUCK)
            if first and i == sure_lane or rng.random() < 0.45:
                add_vehicle(Vehicle(kind, xc + rng.uniform(-0.3, 0.3), z, oncoming, seed()))
                z += (12 if kind != CAR else 5) + rng.uniform(5, 30)
            else:
                z += rng.uniform(5, 20)
            first = False
    # parked cars along the curbs
    for side in st.sides:
        if not side.parking:
            continue
        xc = side.edge - side.sign * (side.park_w / 2 + rng.uniform(-0.1, 0.1))
        z = _visible_z(cam, xc, 3.0, 0.3) + rng.uniform(2, 14)
        while z < zlim * 0.8:
            if st.cross and st.cross[0] - 6 < z < st.cross[1] + 1:
                z = st.cross[1] + 2
                continue
            if rng.random() < 0.55:
                u = rng.random()
                kind = CAR if u < 0.97 else TRUCK
                add_vehicle(Vehicle(kind, xc, z, side.sign < 0 and st.oncoming > 0, seed()))
                z += (8.5 if kind == TRUCK else 4.6) + rng.uniform(0.5, 2.5)
            else:
                z += rng.uniform(4, 10)
    # pedestrians on the sidewalks, now and then crossing
    for _ in range(int(rng.poisson(3.0))):
        side = st.sides[int(rng.integers(2))]
        d = side.grass + rng.uniform(0.4, max(0.5, side.walk - 0.3))
        x = side.edge + side.sign * d
        z = _depth(rng, _visible_z(cam, x, 3.5, 0.05), 60)
        n = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
        for k in range(n):
            objs.append((z + 0.4 * k, Pedestrian(x + rng.normal(0, 0.5) * (k > 0), z + 0.4 * k,
                                                  rng.uniform(1.5, 1.95), seed())))
    if rng.random() < 0.25:
        z = st.cross[0] - 3 if st.cross else rng.uniform(8, 30)
        for _ in range(int(rng.integers(1, 4))):
            x, zz, height, sd = rng.uniform(st.left, st.right), z + rng.uniform(-1, 1), rng.uniform(1.5, 1.95), seed()
            if free(x - 0.4, x + 0.4, zz - 0.4, zz + 0.4):
                objs.append((zz, Pedestrian(x, zz, height, sd)))
                boxes.append((x - 0.4, x + 0.4, zz - 0.4, zz + 0.4))
    # cyclists: along the street near the right curb, or crossing
    for _ in range(int(rng.poisson(0.7))):
        motor = rng.random() < 0.3
        if rng.random() < 0.6:
            x = st.right - rng.uniform(0.5, 1.0)
            z = _depth(rng, _visible_z(cam, x, 5.0, 0.05), 45)
            c = Cyclist(x, z, motor, False, 1, seed())
            foot = (x - 0.4, x + 0.4, z - 0.3, z + 2.2)
        else:
            z = rng.uniform(7, 35)
            c = Cyclist(rng.uniform(st.left, st.right), z, motor, True, int(rng.choice([-1, 1])), seed())
            foot = (c.x - 1.1, c.x + 1.1, z - 0.4, z + 0.4)
        if free(*foot):
            objs.append((z, c))
            boxes.append(foot)
    # poles, signs, traffic lights and trees along the curbs; odds and ends on the sidewalks
    for side in st.sides:
        x = side.edge + side.sign * (side.grass + 0.35 if side.grass else 0.4)
        z = _visible_z(cam, x, 4.0, 0.1) + rng.uniform(0, 10)
        while z < zlim:
            kind = str(rng.choice(["lamp", "sign", "light", "plain"], p=[0.4, 0.35, 0.12, 0.13]))
            objs.append((z, PoleThing(x, z, kind, -side.sign, seed())))
            z += rng.uniform(8, 28)
        if side.trees:
            x = side.edge + side.sign * (side.grass / 2 if side.grass else rng.uniform(0.8, 1.4))
            z = _visible_z(cam, x, 4.0, 0.5) + rng.uniform(0, 8)
            step = rng.uniform(7, 13)
            while z < zlim:
                if not (st.cross and st.cross[0] - 1 < z < st.cross[1] + 1):
                    objs.append((z, Tree(x, z, seed())))
                z += step * rng.uniform(0.85, 1.15)
        if side.grass and rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 5))):
                x = side.edge + side.sign * side.grass / 2
                z = _depth(rng, _visible_z(cam, x, 4.0, 0.2), 50)
                objs.append((z, Tree(x, z, seed(), bush=True)))
    if st.cross:
        side = st.sides[1]
        x = side.edge + 0.5
        objs.append((st.cross[0] - 1.5, PoleThing(x, st.cross[0] - 1.5, "overhead", -1, seed())))
    for _ in range(int(rng.poisson(1.5))):
        side = st.sides[int(rng.integers(2))]
        x = side.edge + side.sign * (side.grass + rng.uniform(0.3, max(0.4, side.walk - 0.3)))
        z = _depth(rng, _visible_z(cam, x, 4.0, 0.1), 40)
        objs.append((z, Static(x, z, str(rng.choice(["bin", "bollard", "bench"])), seed())))
    return objs


_DRAW = {Vehicle: _draw_vehicle, Pedestrian: _draw_person, Cyclist: _draw_cyclist, PoleThing: _draw_pole,
         Tree: _draw_tree, Static: _draw_static}


def _draw_bonnet(cv: Canvas, rng: np.random.Generator) -> None:
    """The ego vehicle's bonnet along the bottom edge (raw id 1), reflecting the scene above it."""
    cam = cv.cam
    hh = cam.h * rng.uniform(0.05, 0.09)
    xc = cam.w * rng.uniform(0.45, 0.55)
    bend = rng.uniform(0.5, 0.9)
    xs = np.linspace(-0.02, 1.02, 33) * cam.w
    ys = cam.h - hh + hh * bend * ((xs - xc) / (0.6 * cam.w)) ** 2
    poly = np.concatenate([np.stack([xs, ys], 1), [(xs[-1], cam.h + 2), (xs[0], cam.h + 2)]])
    paint = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] * 0.6
    top = int(np.floor(ys.min()))
    band = slice(max(top, 0), cam.h)
    before = cv.img[band].copy()
    cv.fill(poly, paint, EGO, 1.0)
    mask = cv.ids[band] == EGO
    rows = np.arange(band.start, cam.h)
    mirror = np.clip(2 * top - rows, 0, cam.h - 1)  # the scene mirrored in the bonnet's top edge
    refl = cv.img[mirror] if band.start > 0 else before
    mixed = cv.img[band] * 0.7 + refl * 0.3
    cv.img[band][mask] = mixed[mask]


def _noise_field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth unit-variance noise with features about ``cell`` pixels across."""
    gh, gw = max(2, int(round(h / cell)) + 1), max(2, int(round(w / cell)) + 1)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene, a pure function of ``rng``.

    Returns the RGB image ``(H, W, 3) uint8``, raw Cityscapes label ids ``(H, W) uint8`` and the
    instance map ``(H, W) uint16`` (``id * 1000 + k`` on thing instances, the raw id elsewhere).
    """
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ConfigError(f"synthetic images must be at least 8x8 pixels, got {h}x{w}")
    cam = Camera(h, w, f=w * rng.uniform(0.95, 1.25), cx=w * rng.uniform(0.43, 0.57),
                 hz=h * rng.uniform(0.38, 0.5), hc=rng.uniform(1.2, 1.6))
    sunny = bool(rng.random() < 0.35)
    if sunny:
        az = rng.uniform(-1, 1)
        direction = np.array([az, rng.uniform(0.35, 0.9), rng.uniform(-0.6, 0.6)])
        ambient, diffuse = rng.uniform(0.45, 0.6), rng.uniform(0.55, 0.75)
        sky_top = _jitter(rng, (70, 130, 205), 20)
        horizon = _jitter(rng, (185, 205, 228), 15)
    else:
        direction = np.array([rng.uniform(-0.3, 0.3), 1.0, rng.uniform(-0.3, 0.3)])
        ambient, diffuse = rng.uniform(0.7, 0.85), rng.uniform(0.15, 0.3)
        g = rng.uniform(175, 225)
        sky_top = _jitter(rng, (g - 10, g - 3, g + 5), 8)
        horizon = _jitter(rng, (g + 10, g + 12, g + 14), 6)
    direction = direction / np.linalg.norm(direction)
    light = Light(direction, ambient, diffuse, horizon.astype(np.float32), rng.uniform(180, 700), sunny)
    cv = Canvas(cam, light)
    st = _plan_street(rng)

    _draw_sky(cv, sky_top, horizon)
    _draw_ground(cv, st)
    far = _segments(rng, -300.0, 300.0, (8, 30), (4, 35), (0.75, 0.25, 0.0, 0.0))
    _front_plane(cv, st.zmax, -300.0, 300.0, far, 0.9)
    if st.cross:
        zc1 = st.cross[1]
        for side in st.sides:
            end = _segments(rng, abs(side.facade), 400.0, (10, 30), (8, 30), (0.9, 0.1, 0.0, 0.0))
            lo, hi = (-400.0, side.facade) if side.sign < 0 else (side.facade, 400.0)
            _front_plane(cv, zc1, lo, hi, end, light.shade(np.array([0.0, 0.0, -1.0])), mirror=side.sign < 0)
    for side in st.sides:
        _side_facade(cv, side.sign, side.facade, st.zmax, side.segs,
                     light.shade(np.array([-side.sign, 0.0, 0.0], np.float64)))
    objs = _plan_objects(rng, cam, st)
    for _, obj in sorted(objs, key=lambda o: -o[0]):  # stable: ties keep their planning order
        _DRAW[type(obj)](cv, obj)
    if rng.random() < 0.8:
        _draw_bonnet(cv, rng)

    # image-only appearance: per-class texture, exposure and white balance, vignette, saturation, sensor
    # noise; folded into few full-frame passes because this runs on every pixel of every image
    ids = cv.ids
    raw = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
    fine = rng.standard_normal((h, w + 2), dtype=np.float32)
    lum = (_A_LOW[raw] * _noise_field(rng, h, w, w / 10) + _A_MID[raw] * _noise_field(rng, h, w, w / 110)
           + _A_FINE[raw] * fine[:, 1:-1])
    lum += 1.0
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5)[None, :]
    lum *= 1.0 - rng.uniform(0.1, 0.35) * (xx**2 + yy**2)
    gain = (rng.uniform(0.78, 1.18) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    sat = np.float32(rng.uniform(0.75, 1.15))
    img = cv.img
    img *= lum[..., None]
    img *= gain
    grey = img[..., 0] + img[..., 1]  # a plain channel sum: numpy's mean over a length-3 axis is slow
    grey += img[..., 2]
    grey *= (1 - sat) / 3
    img *= sat
    img += grey[..., None]
    sigma = np.float32(rng.uniform(1.0, 4.0))
    for c in range(3):  # per-channel sensor noise: shifted views of one draw
        img[..., c] += sigma * fine[:, 2 - c : w + 2 - c][::-1]
    img += 0.5
    np.clip(img, 0, 255, out=img)
    rgb = img.astype(np.uint8)
    return rgb, raw, ids


# --------------------------------------------------------------------------------------------
# writing the dataset
# --------------------------------------------------------------------------------------------
def _sample_names(split: str, n: int) -> list[tuple[str, str]]:
    """``(city, sample id)`` for each index of a split, cities taking turns."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    return [(cities[i % len(cities)], f"{cities[i % len(cities)]}_{i // len(cities):06d}_{FRAME:06d}")
            for i in range(n)]


def _write_sample(root: str, split: str, split_index: int, index: int, city: str, sid: str,
                  size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
    rgb, raw, inst = render_scene(rng, size)
    base = Path(root)
    write_bytes(base / "leftImg8bit" / split / city / f"{sid}{IMG_SUFFIX}", encode_rgb(rgb, ".png"))
    gt = base / GT / split / city
    write_bytes(gt / f"{sid}_{GT}_labelIds.png", encode_png(raw))
    write_bytes(gt / f"{sid}_{GT}_labelTrainIds.png", encode_png(ID_TO_TRAIN[raw]))
    write_bytes(gt / f"{sid}_{GT}_instanceIds.png", encode_png(inst))
    write_bytes(gt / f"{sid}_{GT}_color.png", encode_png(colorize(raw)))


def generate(out: Path, train: int = 400, val: int = 100, size: tuple[int, int] = (256, 512), seed: int = 0,
             jobs: int = 1, overwrite: bool = False) -> dict:
    """Write the synthetic street scenes to ``out`` in the Cityscapes layout and return the
    dataset summary (read back from disk, so every file is checked once).

    The output is built in a temporary folder beside ``out`` and renamed into place when complete;
    an existing non-empty ``out`` is replaced only with ``overwrite``, and only then.
    """
    out = Path(out)
    h, w = int(size[0]), int(size[1])
    if train < 1 or val < 0:
        raise ConfigError(f"need at least one training image and no negative counts, got train={train}, val={val}")
    if h < 8 or w < 8:
        raise ConfigError(f"synthetic images must be at least 8x8 pixels, got {h}x{w}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} is not empty; pass --overwrite to replace it")
    jobs = max(1, int(jobs))
    with staging(out) as tmp:
        tasks = []
        for split_index, (split, n) in enumerate((("train", train), ("val", val))):
            for i, (city, sid) in enumerate(_sample_names(split, n)):
                tasks.append(delayed(_write_sample)(str(tmp), split, split_index, i, city, sid, (h, w), seed))
        parallel(jobs)(tasks)
        meta = {
            "generator": "poisongen.datasets.synthetic",
            "version": VERSION,
            "seed": seed,
            "train": train,
            "val": val,
            "size": [h, w],
            "cities": {"train": list(TRAIN_CITIES), "val": list(VAL_CITIES)},
            "sample_seed": "numpy SeedSequence([seed, split_index (train 0, val 1), sample_index])",
        }
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    summary = dataset_summary(Cityscapes(out), read=True, jobs=jobs)
    summary["layout"] = "synthetic (cityscapes layout)"
    return summary


#: CPU-seconds to generate the default set (500 images at 256x512; docs/synthetic.md measures 30)
DEFAULT_CPU_SECONDS = 35


def generate_default(root: Path) -> Path:
    """Generate the default synthetic set (400 train + 100 val, 256x512, seed 0) into ``root``, saying
    so on stderr in one line: where, and about how long."""
    root = Path(root)
    from ..parallel import default_jobs

    jobs = default_jobs()
    print(f"poisongen: first use of --src synthetic: generating 500 street scenes (400 train + 100 val, 256x512, "
          f"seed 0) in {root.resolve()}, about {max(5, math.ceil(DEFAULT_CPU_SECONDS / jobs))} s on {jobs} "
          f"core(s), once; set $POISONGEN_DATA to put them elsewhere, or run `poisongen synth --out DIR` for other "
          f"sizes", file=sys.stderr)
    generate(root, jobs=jobs)
    return root
