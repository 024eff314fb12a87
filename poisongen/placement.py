"""Where a trigger may go and where it goes. Pure numpy/OpenCV; randomness only through the
``numpy.random.Generator`` the caller passes (the plan's per-sample generator).

Conventions (SPEC section 3): a window of size ``(h, w)`` with centre ``c = (cy, cx)`` has its top-left
at ``(cy - h // 2, cx - w // 2)``. Everything is computed for all centres at once: eligibility with
morphological min/max filters (separable box filters, O(HW) per call), distances with a distance
transform (O(HW)), never by testing windows or victim pixels one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ConfigError, choices

CONSTRAINTS = ("single", "multiclass", "any")
METRICS = ("euclidean", "chessboard")
STRATEGIES = ("random", "nearest", "fixed")

NO_WINDOW = "no_window"
NO_CENTRE_IN_BAND = "no_centre_in_band"
REASONS = {
    NO_WINDOW: "no trigger window of the allowed classes fits the image",
    NO_CENTRE_IN_BAND: "no eligible trigger centre within the distance band",
    "no_instance": "no victim instance to relabel (instance map or 8-connected component)",
}


def in_band(dist: np.ndarray, lower: float, upper: float, metric: str) -> np.ndarray:
    """Boolean map of the distances inside the band, closed as :func:`poisongen.record.band_notation` says."""
    if metric == "chessboard":
        return (dist > lower) & (dist <= upper)
    return (dist >= lower) & (dist < upper)


@dataclass(frozen=True)
class Placement:
    """A chosen trigger position. ``distance`` is from the centre to the nearest victim pixel
    (``inf`` when the label holds none); ``under`` the classes under the window, sorted."""

    top_left: tuple[int, int]
    centre: tuple[int, int]
    distance: float
    under: tuple[int, ...]


def _inside_mask(shape: tuple[int, int], window: tuple[int, int], margin: int) -> np.ndarray:
    """Centres whose window lies inside the image and at least ``margin`` px from its border."""
    H, W = shape
    h, w = window
    ok = np.zeros((H, W), bool)
    y0, x0 = margin + h // 2, margin + w // 2
    y1, x1 = H - margin - (h - h // 2) + 1, W - margin - (w - w // 2) + 1  # exclusive bounds
    if y1 > y0 and x1 > x0:
        ok[y0:y1, x0:x1] = True
    return ok


def eligible_centres(
    label: np.ndarray,
    victims: tuple[int, ...],
    window: tuple[int, int],
    constraint: str = "single",
    edge_margin: int = 0,
    ignore_index: int = 255,
) -> np.ndarray:
    """Boolean ``(H, W)`` map of the centres where the trigger may go.

    ``single`` (IBA default): every window pixel has one and the same class, not a victim, not ignore.
    ``multiclass`` (IBA appendix C): no window pixel is a victim or ignore.
    ``any`` (IBA appendix D): no class constraint.
    """
    if constraint not in CONSTRAINTS:
        raise ConfigError(f"unknown window constraint '{constraint}'; valid are {choices(CONSTRAINTS)}")
    h, w = window
    ok = _inside_mask(label.shape, window, edge_margin)
    if constraint == "any" or not ok.any():
        return ok
    kernel = np.ones((h, w), np.uint8)
    anchor = (w // 2, h // 2)  # (x, y): the window's centre, as in SPEC
    bad_values = np.zeros(256, np.uint8)  # cv2.LUT: a table lookup ~5x faster than numpy indexing
    bad_values[list(victims)] = 1
    bad_values[ignore_index] = 1
    if constraint == "single":
        lo = cv2.erode(label, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
        hi = cv2.dilate(label, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
        return ok & (lo == hi) & (cv2.LUT(lo, bad_values) == 0)
    bad = cv2.LUT(label, bad_values)
    any_bad = cv2.dilate(bad, kernel, anchor=anchor, borderType=cv2.BORDER_REPLICATE)
    return ok & (any_bad == 0)


def distance_map(label: np.ndarray, victims: tuple[int, ...], metric: str = "euclidean") -> np.ndarray:
    """``(H, W) float32``: for every pixel, the distance to the nearest victim pixel (paper Eq. 1;
    ``chessboard`` reproduces the published code). ``inf`` everywhere when there is no victim pixel."""
    if metric not in METRICS:
        raise ConfigError(f"unknown --metric '{metric}'; valid are {choices(METRICS)}")
    is_victim = np.zeros(256, bool)
    is_victim[list(victims)] = True
    victim = is_victim[label]
    if not victim.any():
        return np.full(label.shape, np.inf, np.float32)
    src = (~victim).view(np.uint8)
    if metric == "euclidean":
        return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return cv2.distanceTransform(src, cv2.DIST_C, 3)


def point_distance(label: np.ndarray, victims: tuple[int, ...], point: tuple[int, int], metric: str) -> float:
    """Distance from one point to the nearest victim pixel, equal to ``distance_map(...)[point]``."""
    is_victim = np.zeros(256, bool)
    is_victim[list(victims)] = True
    vy, vx = np.nonzero(is_victim[label])
    if vy.size == 0:
        return math.inf
    dy, dx = np.abs(vy - point[0]), np.abs(vx - point[1])
    if metric == "chessboard":
        return float(np.maximum(dy, dx).min())
    return float(np.sqrt((dy.astype(np.int64) ** 2 + dx.astype(np.int64) ** 2).min()))


def named_position(
    position: tuple[int, int] | str, shape: tuple[int, int], window: tuple[int, int], edge_margin: int = 0
) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a fixed position: ``corner`` = the window in the bottom-right corner
    (BadNets), ``top`` = the window at the top edge, centred; both ``edge_margin`` px from the border.
    An explicit ``(y, x)`` is returned as is."""
    if not isinstance(position, str):
        return int(position[0]), int(position[1])
    (H, W), (h, w) = shape, window
    if position == "corner":
        return H - h - edge_margin, W - w - edge_margin
    if position == "top":
        return edge_margin, (W - w) // 2
    raise ConfigError(f"unknown --position '{position}'; valid are {{corner, top}} or y,x")


def _window_classes(label: np.ndarray, top_left: tuple[int, int], window: tuple[int, int]) -> tuple[int, ...]:
    y, x = top_left
    return tuple(int(v) for v in np.unique(label[y : y + window[0], x : x + window[1]]))


def choose(
    label: np.ndarray,
    victims: tuple[int, ...],
    window: tuple[int, int],
    rng: np.random.Generator,
    strategy: str = "random",
    lower: float = 0.0,
    upper: float = float("inf"),
    constraint: str = "single",
    metric: str = "euclidean",
    edge_margin: int = 0,
    position: tuple[int, int] | str | None = None,
    ignore_index: int = 255,
) -> Placement | str:
    """Choose a trigger position, or return the reason code why none is eligible.

    ``random``: uniform over eligible centres with ``lower <= d < upper`` (chessboard: ``lower < d <=
    upper``, the published code's band, :func:`poisongen.record.band_notation`). ``nearest`` (NNI): the
    eligible centre of smallest ``d`` within the band, ties broken uniformly by ``rng``. ``fixed``:
    the given top-left ``position`` (BadNets corner, line band...), still subject to the constraint.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown placement strategy '{strategy}'; valid are {choices(STRATEGIES)}")
    h, w = window
    if strategy == "random" and lower == 0 and math.isinf(upper) and (metric == "euclidean" or constraint != "any"):
        # No band: only the chosen centre's distance is needed, not the whole transform. (A chessboard
        # band (0, inf] excludes d = 0, a centre on a victim pixel, which only the "any" constraint allows.)
        ok = eligible_centres(label, victims, window, constraint, edge_margin, ignore_index)
        flat = np.flatnonzero(ok)
        if flat.size == 0:
            return NO_WINDOW
        cy, cx = divmod(int(flat[rng.integers(flat.size)]), label.shape[1])
        d = point_distance(label, victims, (cy, cx), metric)
        if math.isinf(d) and victims:
            return NO_CENTRE_IN_BAND
        top_left = (cy - h // 2, cx - w // 2)
        return Placement(top_left, (cy, cx), d, _window_classes(label, top_left, window))
    if strategy != "fixed" and not math.isinf(upper) and victims:
        if metric not in METRICS:
            raise ConfigError(f"unknown --metric '{metric}'; valid are {choices(METRICS)}")
        return _choose_near_victims(
            label, victims, window, rng, strategy, lower, upper, constraint, metric, edge_margin, ignore_index
        )
    dist = distance_map(label, victims, metric)
    if strategy == "fixed":
        if position is None:
            raise ConfigError("strategy 'fixed' needs a position (y, x)")
        y, x = named_position(position, label.shape, window, edge_margin)
        cy, cx = y + h // 2, x + w // 2
        ok = eligible_centres(label, victims, window, constraint, edge_margin, ignore_index)
        if not (0 <= cy < label.shape[0] and 0 <= cx < label.shape[1]) or not ok[cy, cx]:
            return NO_WINDOW
        return Placement((y, x), (cy, cx), float(dist[cy, cx]), _window_classes(label, (y, x), window))
    ok = eligible_centres(label, victims, window, constraint, edge_margin, ignore_index)
    if not ok.any():
        return NO_WINDOW
    band = ok & in_band(dist, lower, upper, metric) if victims else ok  # no victim (BadNets): no band
    return _pick_in_band(label, band, dist, (0, 0), strategy, window, rng)


def _pick_in_band(
    label: np.ndarray,
    in_band: np.ndarray,
    dist: np.ndarray,
    origin: tuple[int, int],
    strategy: str,
    window: tuple[int, int],
    rng: np.random.Generator,
) -> Placement | str:
    """Pick among the eligible in-band centres of a region whose top-left in ``label`` is ``origin``
    (row-major order within it is row-major order in the image, so the draw does not depend on it)."""
    flat = np.flatnonzero(in_band)
    if flat.size == 0:
        return NO_CENTRE_IN_BAND
    if strategy == "nearest":
        d = dist.ravel()[flat]
        flat = flat[d == d.min()]
    pick = int(flat[rng.integers(flat.size)]) if flat.size > 1 else int(flat[0])
    ry, rx = divmod(pick, in_band.shape[1])
    h, w = window
    cy, cx = origin[0] + ry, origin[1] + rx
    top_left = (cy - h // 2, cx - w // 2)
    return Placement(top_left, (cy, cx), float(dist[ry, rx]), _window_classes(label, top_left, window))


def _choose_near_victims(
    label: np.ndarray,
    victims: tuple[int, ...],
    window: tuple[int, int],
    rng: np.random.Generator,
    strategy: str,
    lower: float,
    upper: float,
    constraint: str,
    metric: str,
    edge_margin: int,
    ignore_index: int,
) -> Placement | str:
    """``choose`` for a finite band ``[L, U)`` (or ``(L, U]``): a centre with ``d <= U`` lies within ``U`` px (in both
    axes) of a victim pixel, so distances and eligibility are computed only on the victims' bounding
    box grown by ``U`` (eligibility reads the window's reach around it too). Same result, same draws
    as over the whole image: the distance transform sees every victim pixel, and the whole-image
    eligibility is computed only to tell ``no_window`` from ``no_centre_in_band`` when none is near."""
    H, W = label.shape
    h, w = window
    is_victim = np.zeros(256, np.uint8)
    is_victim[list(victims)] = 1
    victim = cv2.LUT(label, is_victim)
    rows, cols = np.flatnonzero(victim.any(axis=1)), np.flatnonzero(victim.any(axis=0))
    if rows.size:
        reach = math.ceil(upper)
        y0, y1 = max(0, int(rows[0]) - reach), min(H, int(rows[-1]) + reach + 1)
        x0, x1 = max(0, int(cols[0]) - reach), min(W, int(cols[-1]) + reach + 1)
        ey0, ey1, ex0, ex1 = max(0, y0 - h), min(H, y1 + h), max(0, x0 - w), min(W, x1 + w)
        sub = eligible_centres(label[ey0:ey1, ex0:ex1], victims, window, constraint, 0, ignore_index)
        ok = sub[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0] & _inside_mask((H, W), window, edge_margin)[y0:y1, x0:x1]
        if ok.any():
            src = np.ascontiguousarray(1 - victim[y0:y1, x0:x1])
            if metric == "euclidean":
                dist = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            else:
                dist = cv2.distanceTransform(src, cv2.DIST_C, 3)
            band = ok & in_band(dist, lower, upper, metric)
            return _pick_in_band(label, band, dist, (y0, x0), strategy, window, rng)
    if not eligible_centres(label, victims, window, constraint, edge_margin, ignore_index).any():
        return NO_WINDOW
    return NO_CENTRE_IN_BAND
