"""Trigger placement: eligibility, distances and strategies against brute force (SPEC section 3)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from poisongen.errors import ConfigError
from poisongen.placement import NO_CENTRE_IN_BAND, NO_WINDOW, Placement, choose, distance_map, eligible_centres

VICTIM = (1,)


def brute_eligible(label, victims, window, constraint, margin):
    H, W = label.shape
    h, w = window
    out = np.zeros((H, W), bool)
    for cy in range(H):
        for cx in range(W):
            y, x = cy - h // 2, cx - w // 2
            if y < margin or x < margin or y + h > H - margin or x + w > W - margin:
                continue
            win = label[y : y + h, x : x + w]
            bad = np.isin(win, list(victims) + [255])
            if constraint == "single":
                out[cy, cx] = bool((win == win.flat[0]).all() and not bad.any())
            elif constraint == "multiclass":
                out[cy, cx] = not bad.any()
            else:
                out[cy, cx] = True
    return out


def brute_distance(label, victims):
    vy, vx = np.nonzero(np.isin(label, victims))
    if vy.size == 0:
        return np.full(label.shape, np.inf)
    yy, xx = np.mgrid[: label.shape[0], : label.shape[1]]
    return np.sqrt(((yy[..., None] - vy) ** 2 + (xx[..., None] - vx) ** 2).min(-1))


# blocky label maps with a few classes, some ignore: windows of one class actually occur
blocky = arrays(
    np.uint8, st.tuples(st.integers(2, 7), st.integers(2, 9)), elements=st.sampled_from([0, 1, 2, 3, 255])
).map(lambda a: np.repeat(np.repeat(a, 3, axis=0), 2, axis=1))


@settings(max_examples=80, deadline=None)
@given(
    blocky, st.integers(1, 5), st.integers(1, 5), st.integers(0, 2), st.sampled_from(["single", "multiclass", "any"])
)
def test_eligible_matches_brute_force(label, h, w, margin, constraint):
    got = eligible_centres(label, VICTIM, (h, w), constraint, margin)
    assert np.array_equal(got, brute_eligible(label, VICTIM, (h, w), constraint, margin))


@settings(max_examples=60, deadline=None)
@given(blocky)
def test_euclidean_distance_matches_brute_force(label):
    got = distance_map(label, VICTIM, "euclidean")
    want = brute_distance(label, VICTIM)
    if np.isinf(want).all():
        assert np.isinf(got).all()
    else:
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_chessboard_metric():
    label = np.zeros((9, 9), np.uint8)
    label[4, 4] = 1
    d = distance_map(label, VICTIM, "chessboard")
    assert d[0, 0] == 4 and d[4, 0] == 4 and d[2, 3] == 2
    assert distance_map(label, VICTIM, "euclidean")[0, 0] == pytest.approx(math.sqrt(32), abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(blocky, st.integers(1, 4), st.integers(0, 1000))
def test_nearest_picks_a_minimal_distance_eligible_centre(label, k, seed):
    rng = np.random.default_rng(seed)
    p = choose(label, VICTIM, (k, k), rng, "nearest", 0.0, math.inf)
    ok = brute_eligible(label, VICTIM, (k, k), "single", 0)
    d = brute_distance(label, VICTIM)
    if not ok.any():
        assert p == NO_WINDOW
        return
    if np.isinf(d).all():  # no victim pixel: no distance, so no centre lies in any band
        assert p == NO_CENTRE_IN_BAND
        return
    cy, cx = p.centre
    assert ok[cy, cx]
    assert p.distance == pytest.approx(d[ok].min(), abs=1e-3)
    assert p.top_left == (cy - k // 2, cx - k // 2)
    y, x = p.top_left
    window = label[y : y + k, x : x + k]
    assert len(p.under) == 1 and (window == p.under[0]).all() and p.under[0] not in (1, 255)


@settings(max_examples=60, deadline=None)
@given(blocky, st.integers(1, 3), st.floats(0, 6), st.floats(0.5, 8), st.integers(0, 1000))
def test_random_respects_band_and_eligibility(label, k, lower, width, seed):
    upper = lower + width
    p = choose(label, VICTIM, (k, k), np.random.default_rng(seed), "random", lower, upper)
    ok = brute_eligible(label, VICTIM, (k, k), "single", 0)
    d = brute_distance(label, VICTIM)
    in_band = ok & (d >= lower) & (d < upper)
    if not ok.any():
        assert p == NO_WINDOW
    elif not in_band.any():
        assert p == NO_CENTRE_IN_BAND
    else:
        assert in_band[p.centre]


def test_random_is_uniform_over_eligible_centres():
    label = np.zeros((6, 6), np.uint8)
    label[0, 0] = 1
    ok = eligible_centres(label, VICTIM, (1, 1))
    rng = np.random.default_rng(0)
    hits = np.zeros(label.shape, int)
    for _ in range(7000):
        hits[choose(label, VICTIM, (1, 1), rng, "random").centre] += 1
    assert hits[0, 0] == 0 and (hits[ok] > 0).all()
    assert hits[ok].min() > 0.6 * hits[ok].mean()  # 35 centres, ~200 each: no centre is starved


def test_nearest_ties_are_broken_by_the_rng_not_by_scan_order():
    label = np.zeros((7, 7), np.uint8)
    label[3, 3] = 1
    picks = {choose(label, VICTIM, (1, 1), np.random.default_rng(s), "nearest").centre for s in range(40)}
    assert picks == {(2, 3), (4, 3), (3, 2), (3, 4)}


def test_fixed_position_and_its_constraint():
    label = np.zeros((10, 10), np.uint8)
    label[6:, 6:] = 1
    p = choose(label, VICTIM, (3, 3), np.random.default_rng(0), "fixed", position=(0, 0))
    assert p.top_left == (0, 0) and p.centre == (1, 1)
    assert choose(label, VICTIM, (3, 3), np.random.default_rng(0), "fixed", position=(5, 5)) == NO_WINDOW
    with pytest.raises(ConfigError, match="needs a position"):
        choose(label, VICTIM, (3, 3), np.random.default_rng(0), "fixed")


def test_unknown_strategy_names_the_options():
    with pytest.raises(ConfigError, match=r"unknown placement strategy 'far'; valid are \{random, nearest, fixed\}"):
        choose(np.zeros((4, 4), np.uint8), VICTIM, (1, 1), np.random.default_rng(0), "far")


def whole_image_choose(label, victims, window, rng, strategy, lower, upper, constraint, metric, margin):
    """The band strategies computed over the whole image (the definition; choose() restricts the work
    to the victims' neighbourhood and must give the very same placement and draws)."""
    dist = distance_map(label, victims, metric)
    ok = eligible_centres(label, victims, window, constraint, margin)
    if not ok.any():
        return NO_WINDOW
    # Euclidean bands are [L, U); chessboard bands (L, U], as in the published IBA code
    band = (dist > lower) & (dist <= upper) if metric == "chessboard" else (dist >= lower) & (dist < upper)
    flat = np.flatnonzero(ok & band)
    if flat.size == 0:
        return NO_CENTRE_IN_BAND
    if strategy == "nearest":
        d = dist.ravel()[flat]
        flat = flat[d == d.min()]
    pick = int(flat[rng.integers(flat.size)]) if flat.size > 1 else int(flat[0])
    cy, cx = divmod(pick, label.shape[1])
    y, x = cy - window[0] // 2, cx - window[1] // 2
    under = tuple(int(v) for v in np.unique(label[y : y + window[0], x : x + window[1]]))
    return Placement((y, x), (cy, cx), float(dist[cy, cx]), under)


wide_blocky = arrays(
    np.uint8, st.tuples(st.integers(2, 12), st.integers(2, 14)), elements=st.sampled_from([0, 0, 0, 1, 2, 3, 255])
).map(lambda a: np.repeat(np.repeat(a, 3, axis=0), 3, axis=1))


@settings(max_examples=150, deadline=None)
@given(
    wide_blocky, st.integers(1, 7), st.integers(1, 7), st.floats(0, 8), st.floats(0.5, 12), st.integers(0, 2),
    st.sampled_from(["nearest", "random"]), st.sampled_from(["single", "multiclass", "any"]),
    st.sampled_from(["euclidean", "chessboard"]), st.integers(0, 1000),
)
def test_band_search_near_victims_equals_whole_image(
    label, h, w, lower, width, margin, strategy, constraint, metric, seed
):
    args = (label, VICTIM, (h, w))
    band = (strategy, lower, lower + width, constraint, metric, margin)
    got = choose(*args, np.random.default_rng(seed), *band)
    assert got == whole_image_choose(*args, np.random.default_rng(seed), *band)
