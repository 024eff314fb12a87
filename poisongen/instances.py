"""Victim instances of one label, and which of them an instance-level attack relabels (SPEC section 4).

Pure numpy/OpenCV; the only randomness (``random`` mode) comes from the generator the plan passes, and
the choice is returned as explicit ids, recorded in the manifest and replayed by ``apply``.

Instances come from the layout's instance map where it has one and every victim class is a thing
(Cityscapes ``*_instanceIds.png``: ``class*1000+k``; pixels of group regions without an instance id are
never selected), else from the 8-connected components of the victim mask (ids 1..n, numbered by
``cv2.connectedComponents`` in row-major order of their first pixel).
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError, choices

MODES = ("nearest", "random")
NO_INSTANCE = "no_instance"


def victim_mask(label: np.ndarray, victims: tuple[int, ...]) -> np.ndarray:
    """Boolean ``(H, W)``: pixels of a victim class."""
    is_victim = np.zeros(256, bool)
    is_victim[list(victims)] = True
    return is_victim[label]


def instance_ids(
    label: np.ndarray, victims: tuple[int, ...], instance_map: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """``(H, W) int64`` instance id per victim pixel (0 = none) and where the ids come from:
    ``instanceIds`` (the layout's map, ``instance_map`` given) or ``components`` (8-connected)."""
    mask = victim_mask(label, victims)
    if instance_map is not None:
        return np.where(mask, instance_map.astype(np.int64), 0), "instanceIds"
    _, comp = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return comp.astype(np.int64), "components"


def select(
    ids: np.ndarray, mode: str, k: int, centre: tuple[int, int] | None, rng: np.random.Generator
) -> list[dict]:
    """Choose ``min(k, n)`` of the ``n`` instances in ``ids`` (0 = none).

    ``nearest``: the k instances with the smallest Euclidean distance from ``centre`` (the trigger's
    centre) to any of their pixels, ties broken by the smaller id. ``random``: k drawn uniformly
    without replacement with ``rng``. Returns records ``{"id", "pixels", "distance"}`` sorted by id
    (``distance`` rounded to 4 decimals, None without a centre); empty when there is no instance.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown --instances '{mode}'; valid are {choices(MODES)}")
    flat = ids.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return []
    uniq, inverse, pixels = np.unique(flat[where], return_inverse=True, return_counts=True)
    dist = None
    if centre is not None:
        ys, xs = np.divmod(where, ids.shape[1])
        d2 = (ys - centre[0]).astype(np.int64) ** 2 + (xs - centre[1]).astype(np.int64) ** 2
        best = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(best, inverse, d2)
        dist = np.sqrt(best.astype(np.float64))
    n = min(k, uniq.size)
    if mode == "nearest":
        if dist is None:
            raise ConfigError("--instances nearest needs a trigger position; use --instances random")
        order = np.lexsort((uniq, dist))[:n]
    else:
        order = rng.choice(uniq.size, size=n, replace=False)
    order = np.sort(order)
    return [
        {
            "id": int(uniq[i]),
            "pixels": int(pixels[i]),
            "distance": None if dist is None else round(float(dist[i]), 4),
        }
        for i in order
    ]


def selected_mask(ids: np.ndarray, chosen: list[dict]) -> np.ndarray:
    """Boolean ``(H, W)``: the pixels of the chosen instances."""
    if not chosen:
        return np.zeros(ids.shape, bool)
    return np.isin(ids, np.array([c["id"] for c in chosen], np.int64)) & (ids != 0)
