"""The manifest's record format, with one owner: the names of a sample record's fields, how a distance
band is written (``[L, U)``, SPEC section 3), how "no upper bound" and "no distance" are stored (JSON
``null`` for an infinite value) and how a manifest's ``config`` is read back.

The writer (plan, apply, pipeline), ``verify``, ``show``, ``diff`` and segtrain read and write manifests
through these names and functions, so that a field is renamed or a notation changed in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import PoisonGenError

#: a sample record's fields that the plan decides from the seed (``verify --src`` re-plans and compares them)
PLAN_FIELDS = ("top_left", "centre", "distance", "under", "victim_pixels", "prl", "instances", "condition")
#: a sample record's fields that applying the plan derives (``verify --src`` re-applies and compares them)
DERIVED_FIELDS = ("changes", "changed_pixels", "changed_mask", "image_size", "target_changes", "target_labels")
#: what ``diff`` compares per sample present in both manifests
DIFF_FIELDS = ("top_left", "centre", "distance", "under", "changes", "prl", "changed_pixels", "instances",
               "condition", "target_changes")
#: JSON for "no upper bound" (U = inf) and "no distance" (no victim pixel in the image)
UNBOUNDED = None
#: how band_text writes an infinite upper bound
NO_UPPER_TEXT = "inf"


def bound_to_json(value: float) -> float | None:
    """An upper bound or a distance as stored: ``None`` for infinity (JSON has none)."""
    return UNBOUNDED if math.isinf(value) else value


def bound_from_json(value) -> float:
    """The inverse of :func:`bound_to_json`: ``None`` -> infinity."""
    return math.inf if value is UNBOUNDED else float(value)


def distance_to_json(d: float) -> float | None:
    """A distance to the nearest victim pixel as recorded: 4 decimals, ``None`` for none."""
    return UNBOUNDED if math.isinf(d) else round(float(d), 4)


#: how a band of each distance metric is closed: Euclidean ``[L, U)`` (SPEC 3), chessboard ``(L, U]`` (the
#: published IBA code's ``L < d <= U``)
BAND_NOTATIONS = {"euclidean": "[L, U)", "chessboard": "(L, U]"}


def band_notation(metric: str | None) -> str:
    """How a distance band of ``metric`` is closed (``None``: Euclidean, the default)."""
    return BAND_NOTATIONS.get(metric or "euclidean", BAND_NOTATIONS["euclidean"])


def band_text(lower: float, upper: float | None, notation: str | None = None) -> str:
    """The band as text, e.g. ``[0, 60)`` (``notation`` ``[L, U)``, the default) or ``(0, 60]`` (``(L, U]``);
    ``upper`` None or inf: no upper bound, written ``inf``."""
    up = NO_UPPER_TEXT if upper is None or math.isinf(upper) else f"{upper:g}"
    left, right = ("(", "]") if notation == BAND_NOTATIONS["chessboard"] else ("[", ")")
    return f"{left}{lower:g}, {up}{right}"


@dataclass(frozen=True)
class ConfigRecord:
    """What a manifest's ``config`` says about the attack, for readers of data that may come from other
    tools (segtrain): every field optional. ``band`` is ``(L, U)`` with U = inf for no upper bound."""

    kind: str
    attack: str | None
    split: str | None
    victim: tuple[int, ...]
    target: int | None
    band: tuple[float, float] | None
    rule: str | None
    band_notation: str | None = None  # "[L, U)" or "(L, U]" (chessboard); None: a manifest without placement

    def band_text(self) -> str | None:
        return None if self.band is None else band_text(*self.band, self.band_notation)


def config_record(m: dict) -> ConfigRecord:
    """Read a manifest's config leniently (missing keys are None/empty); wrong types raise a
    :class:`PoisonGenError` naming the key."""
    cfg = m.get("config") or {}
    if not isinstance(cfg, dict):
        raise PoisonGenError(f"manifest config is a {type(cfg).__name__}, not a mapping")
    try:
        victim = cfg.get("victim") or ()
        victim = (victim,) if isinstance(victim, int) else tuple(int(v) for v in victim)
        target = cfg.get("target")
        target = None if target is None else int(target)
        placement = cfg.get("placement") or {}
        band, notation = None, None
        if "lower" in placement:
            band = (float(placement.get("lower") or 0.0), bound_from_json(placement.get("upper")))
            notation = m.get("band_notation") or band_notation(placement.get("metric"))
    except (TypeError, ValueError) as exc:
        raise PoisonGenError(f"manifest config has a value of the wrong type ({exc})") from None
    return ConfigRecord(kind=str(m.get("kind", "train")), attack=cfg.get("attack"), split=cfg.get("split"),
                        victim=victim, target=target, band=band, rule=(cfg.get("relabel") or {}).get("rule"),
                        band_notation=notation)


def attack_config(m: dict, path: str = "manifest.json"):
    """The full :class:`~poisongen.config.AttackConfig` a poisongen manifest was made with (verify,
    ``testset --from-manifest``); a malformed config raises a :class:`PoisonGenError` naming ``path``."""
    from .config import AttackConfig

    try:
        return AttackConfig.from_dict(m["config"])
    except PoisonGenError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"key {exc} is missing" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise PoisonGenError(f"manifest {path} has a malformed config: {what}") from None
