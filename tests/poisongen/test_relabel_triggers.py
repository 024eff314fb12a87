"""Relabeling rules, PRL, RLE and trigger painting on tiny arrays (SPEC sections 3-4)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from poisongen.errors import TriggerError
from poisongen.relabel import (
    apply_pixels,
    change_counts,
    class_histogram,
    draw_prl_pixels,
    rle_decode,
    rle_encode,
    victim_to_target,
)
from poisongen.triggers import ASSET, load_pattern, make_builtin_pattern, paint, paint_line, prepare_pattern

labels = arrays(
    np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.sampled_from([0, 1, 2, 3, 4, 255])
)


@settings(max_examples=100, deadline=None)
@given(labels)
def test_victim_to_target_changes_exactly_the_victim_pixels(label):
    new = victim_to_target(label, (1, 3), 0)
    victim = np.isin(label, [1, 3])
    assert (new[victim] == 0).all()
    assert np.array_equal(new[~victim], label[~victim])


@settings(max_examples=100, deadline=None)
@given(labels, st.integers(0, 50), st.integers(0, 10_000))
def test_prl_pixels(label, q, seed):
    rng = np.random.default_rng(seed)
    px = draw_prl_pixels(label, (1,), 0, q, rng)
    pool = ~np.isin(label, [1, 255])
    assert len(px) == min(q, int(pool.sum()))
    if len(px):
        ys, xs, old, new = px.T
        assert pool[ys, xs].all(), "PRL never picks victim or ignore pixels"
        assert len({(y, x) for y, x in zip(ys, xs, strict=True)}) == len(px), "positions without replacement"
        assert np.array_equal(old, label[ys, xs])
        after = victim_to_target(label, (1,), 0)
        allowed = set(np.unique(after).tolist()) - {255}
        assert set(new.tolist()) <= allowed and 1 not in set(new.tolist()) and 255 not in set(new.tolist())


def test_prl_differs_between_images_of_the_same_size():
    label = np.zeros((32, 32), np.uint8)
    label[:, 16:] = 2
    a = draw_prl_pixels(label, (1,), 0, 100, np.random.default_rng(np.random.SeedSequence([0, 1])))
    b = draw_prl_pixels(label, (1,), 0, 100, np.random.default_rng(np.random.SeedSequence([0, 2])))
    assert not np.array_equal(a[:, :2], b[:, :2])


@settings(max_examples=100, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert sum(rle["counts"]) == mask.size
    assert np.array_equal(rle_decode(rle), mask)


def test_change_counts_and_apply_pixels():
    old = np.array([[1, 1, 2], [0, 255, 1]], np.uint8)
    new = victim_to_target(old, (1,), 0)
    new = apply_pixels(new, np.array([[0, 2, 2, 3]]))
    assert change_counts(old, new) == {"1->0": 3, "2->3": 1}


def test_builtin_pattern_ships_as_the_asset():
    assert np.array_equal(load_pattern("builtin"), make_builtin_pattern())
    assert np.array_equal(load_pattern(ASSET), make_builtin_pattern())


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10), st.integers(0, 10), st.floats(0.05, 1.0))
def test_paint_changes_only_the_window(h, w, y, x, alpha):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pattern = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    out = paint(image, pattern, alpha, (y, x))
    outside = np.ones((16, 16), bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(out[outside], image[outside])
    a = pattern[..., 3:4] / 255.0 * alpha
    want = np.clip(np.rint((1 - a) * image[y : y + h, x : x + w] + a * pattern[..., :3]), 0, 255)
    assert np.abs(out[y : y + h, x : x + w].astype(int) - want).max() <= 1


def test_paint_blends_instead_of_darkening():
    image = np.full((4, 4, 3), 200, np.uint8)
    pattern = np.zeros((2, 2, 4), np.uint8)
    pattern[..., :3] = 100
    pattern[..., 3] = 255
    assert (paint(image, pattern, 0.5, (1, 1))[1:3, 1:3] == 150).all()
    pattern[..., 3] = 0  # a transparent pattern leaves the image alone
    assert np.array_equal(paint(image, pattern, 1.0, (1, 1)), image)


def test_paint_outside_the_image_is_an_error():
    with pytest.raises(TriggerError, match="does not fit a 4x4 image"):
        paint(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3, 4), np.uint8), 1.0, (2, 2))


def test_line_trigger():
    image = np.full((10, 6, 3), 100, np.uint8)
    out = paint_line(image, 3, 1.0)
    assert (out[:3] == 0).all() and np.array_equal(out[3:], image[3:])


def test_trigger_file_with_alpha_and_unreadable(tmp_path):
    import cv2

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    rgba[..., 3] = 128
    cv2.imwrite(str(tmp_path / "t.png"), rgba)
    pattern, sha = prepare_pattern(tmp_path / "t.png", (8, 8))
    assert pattern.shape == (8, 8, 4) and (pattern[..., 0] == 255).all() and (pattern[..., 3] == 128).all()
    assert len(sha) == 64
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(TriggerError, match="unreadable trigger image"):
        load_pattern(tmp_path / "bad.png")


@settings(max_examples=80, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9))),
    st.lists(st.integers(0, 255), min_size=1, max_size=4),
)
def test_fast_relabel_and_histogram_equal_their_definitions(label, victims):
    lut = np.arange(256, dtype=np.uint8)
    lut[victims] = 7
    assert np.array_equal(victim_to_target(label, tuple(victims), 7), lut[label])
    assert np.array_equal(class_histogram(label), np.bincount(label.ravel(), minlength=256))
    assert np.array_equal(class_histogram(label.T), np.bincount(label.ravel(), minlength=256))  # not contiguous
