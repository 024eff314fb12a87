"""Chessboard bands are the published code's (L, U]; --protocol iba-code places NNI's trigger as that code
does (uniformly random in the chessboard band (0, U], centres kept from the border). Hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import build_cityscapes

from poisongen.cli import app as poisongen_app
from poisongen.manifest import load
from poisongen.placement import NO_CENTRE_IN_BAND, choose, in_band
from poisongen.record import band_notation

CAR = 13


def test_in_band_on_a_hand_made_distance_map():
    d = np.array([[0, 1, 2, 3]], np.float32)
    assert in_band(d, 1, 3, "euclidean").tolist() == [[False, True, True, False]]  # [1, 3)
    assert in_band(d, 1, 3, "chessboard").tolist() == [[False, False, True, True]]  # (1, 3]
    assert band_notation("euclidean") == "[L, U)" and band_notation("chessboard") == "(L, U]"


def ring_label():
    """One victim pixel (class 1) at (5, 5) on class 0, 11x11: chessboard distance = max(|dy|, |dx|)."""
    label = np.zeros((11, 11), np.uint8)
    label[5, 5] = 1
    return label


@pytest.mark.parametrize("strategy", ["random", "nearest"])
def test_chessboard_band_includes_its_upper_bound_and_excludes_its_lower(strategy):
    label = ring_label()
    seen = set()
    for seed in range(40):
        p = choose(label, (1,), (1, 1), np.random.default_rng(seed), strategy, 2, 3, "single", "chessboard")
        cy, cx = p.centre
        d = max(abs(cy - 5), abs(cx - 5))
        assert d == p.distance and 2 < d <= 3
        seen.add(d)
    assert seen == {3}
    # Euclidean keeps [L, U): distance exactly U = 3 (straight up) is outside, exactly L = 2 inside
    for seed in range(40):
        p = choose(label, (1,), (1, 1), np.random.default_rng(seed), strategy, 2, 3, "single", "euclidean")
        dy, dx = p.centre[0] - 5, p.centre[1] - 5
        assert 2 <= math.hypot(dy, dx) < 3
    # a band (2, 2.5] holds no chessboard centre; [2, 2.5) holds the ring at d = 2
    assert choose(label, (1,), (1, 1), np.random.default_rng(0), strategy, 2, 2.5, "single", "chessboard") \
        == NO_CENTRE_IN_BAND
    p = choose(label, (1,), (1, 1), np.random.default_rng(0), strategy, 2, 2.5, "single", "euclidean")
    assert p.distance == 2


def test_chessboard_band_from_zero_never_sits_on_the_victim():
    """(0, U] excludes d = 0 also where the window may cover the victim (--allow-on-victim)."""
    label = ring_label()
    for seed in range(30):
        p = choose(label, (1,), (1, 1), np.random.default_rng(seed), "random", 0, math.inf, "any", "chessboard")
        assert p.centre != (5, 5)


def chessboard_distance(label: np.ndarray, centre) -> int:
    ys, xs = np.nonzero(label == CAR)
    return int(np.maximum(np.abs(ys - centre[0]), np.abs(xs - centre[1])).min())


def test_iba_code_testset_places_randomly_in_the_chessboard_band_away_from_the_border(tmp_path, run_cli):
    """At 32x64 (Cityscapes defaults scaled by 32/512): trigger 3 px, U = 60 * 32/512 = 3.75, centre margin
    round(200 * 32/512) = 13 px, so the window's edge margin is 13 - 3 // 2 = 12."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 6}, size=(32, 64))
    out = tmp_path / "iba"
    r = run_cli(poisongen_app, ["testset", "--src", built.root, "--out", out, "--attack", "nni", "--protocol",
                                "iba-code", "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    m = load(out)
    p = m["config"]["placement"]
    assert m["config"]["protocol"] == "iba-code" and m["band_notation"] == "(L, U]"
    assert (p["strategy"], p["metric"], p["lower"], p["upper"], p["edge_margin"]) == \
        ("random", "chessboard", 0.0, 3.75, 12)
    assert m["samples"], "the case must place triggers"
    for rec in m["samples"]:
        cy, cx = rec["centre"]
        assert 13 <= cy < 32 - 13 and 13 <= cx < 64 - 13
        d = chessboard_distance(built.labels["val"][rec["id"]], (cy, cx))
        assert 0 < d <= 3.75 and d == rec["distance"]
    # the paper protocol on the same data: nearest, Euclidean [0, U), no margin
    out2 = tmp_path / "paper"
    r = run_cli(poisongen_app, ["testset", "--src", built.root, "--out", out2, "--attack", "nni", "--jobs", "1",
                                "-q"])
    assert r.exit_code == 0, r.stderr
    m2 = load(out2)
    q = m2["config"]["placement"]
    assert (q["strategy"], q["metric"], q["edge_margin"], m2["band_notation"]) == ("nearest", "euclidean", 0, "[L, U)")


def test_iba_code_refuses_a_lower_bound(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 2}, size=(32, 64))
    r = run_cli(poisongen_app, ["testset", "--src", built.root, "--out", tmp_path / "o", "--attack", "nni",
                                "--protocol", "iba-code", "--lower", "1", "-q"])
    assert r.exit_code == 2 and "--lower 1.0 must be 0" in r.stderr
    r = run_cli(poisongen_app, ["nni", "--src", built.root, "--out", tmp_path / "o", "--rate", "0.5",
                                "--protocol", "mmseg", "-q"])
    assert r.exit_code == 2 and "mmseg" in r.stderr and "iba-code" in r.stderr
    assert not (tmp_path / "o").exists()
