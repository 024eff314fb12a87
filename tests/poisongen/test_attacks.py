"""Invariants of every attack preset on random small label maps (hypothesis): which samples are
eligible, which label pixels may change and to what, where the image may change. Each case runs the
real per-sample plan (plan._analyse) and the real apply (apply.transform) on an in-memory layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from poisongen.apply import attacked_label, transform
from poisongen.config import ALL, AttackConfig, PlacementSpec, RelabelSpec, TriggerSpec
from poisongen.datasets.base import ClassInfo, DatasetMeta, Layout, Sample
from poisongen.instances import instance_ids
from poisongen.plan import _analyse
from poisongen.relabel import matrix_lut
from poisongen.triggers import make_builtin_pattern, resize_pattern

ROAD, CAR, PERSON, BUILDING, IGNORE = 0, 1, 2, 3, 255
META = DatasetMeta("toy", (
    ClassInfo("road", "stuff", (128, 64, 128)), ClassInfo("car", "thing", (0, 0, 142)),
    ClassInfo("person", "thing", (220, 20, 60)), ClassInfo("building", "stuff", (70, 70, 70)),
))
WINDOW = (2, 3)
PATTERN = resize_pattern(make_builtin_pattern(), WINDOW)


class OneSample(Layout):
    """An in-memory layout holding one training sample (and, for badnets, a target image)."""

    name = "toy"

    def __init__(self, label, instances=None, target_label=None):
        self.root = Path(".")
        self._samples = {}
        self.label, self.inst, self.target_label = label, instances, target_label
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, label.shape + (3,), dtype=np.uint8)

    @classmethod
    def detect(cls, root):
        return False

    @classmethod
    def expected(cls):
        return "nothing"

    @property
    def meta(self):
        return META

    def splits(self):
        return ["train"]

    def _scan(self, split):
        return [Sample("s", "train", "s.png", "s_label.png", "s_inst.png" if self.inst is not None else None),
                Sample("t", "train", "t.png", "t_label.png")]

    def read_image(self, sample):
        return self.image

    def read_label(self, sample):
        return self.target_label if sample.id == "t" else self.label

    def read_instances(self, sample):
        return self.inst

    def encode_label(self, sample, label):
        return {}


def config(rule="victim_to_target", victim=(CAR,), target=ROAD, trigger=TriggerSpec("builtin", WINDOW),
           constraint="single", strategy="random", position=None, **relabel) -> AttackConfig:
    return AttackConfig("x", "train", "train", victim, target, trigger,
                        PlacementSpec(strategy, constraint=constraint, position=position),
                        RelabelSpec(rule, **relabel), count=1)


def run(ds: OneSample, cfg: AttackConfig):
    """(status, plan, poisoned image, poisoned label) of the one sample."""
    status, _, _, sp = _analyse(ds, ds.samples("train")[0], cfg)
    if status != "ok":
        return status, None, None, None
    extra = {"target_map": ds.target_label} if cfg.relabel.rule == "image_target" else {}
    if cfg.relabel.rule == "instance" and sp.instance_source == "instanceIds":
        extra["instance_map"] = ds.inst
    image, label = transform(ds.image, ds.label, sp, cfg, PATTERN if cfg.trigger.kind == "pattern" else None,
                             META.num_classes, **extra)
    return status, sp, image, label


def window_mask(shape, sp, size=WINDOW):
    m = np.zeros(shape, bool)
    y, x = sp.placement.top_left
    m[y : y + size[0], x : x + size[1]] = True
    return m


# blocky label maps of the toy classes and ignore, 6..21 x 6..24 px
blocky = arrays(
    np.uint8, st.tuples(st.integers(2, 7), st.integers(2, 8)), elements=st.sampled_from([0, 1, 2, 3, 255])
).map(lambda a: np.repeat(np.repeat(a, 3, axis=0), 3, axis=1))
victims = st.sampled_from([(CAR,), (PERSON,), (CAR, PERSON)])
constraints = st.sampled_from(["single", "multiclass", "any"])


def check_window_constraint(label, sp, victim, constraint):
    under = label[window_mask(label.shape, sp)]
    bad = np.isin(under, list(victim) + [IGNORE])
    if constraint == "single":
        assert (under == under[0]).all() and not bad.any()
    elif constraint == "multiclass":
        assert not bad.any()


@settings(max_examples=60, deadline=None)
@given(blocky, victims, constraints, st.sampled_from([ROAD, BUILDING]), st.sampled_from(["random", "nearest"]))
def test_victim_to_target(label, victim, constraint, target, strategy):
    """IBA and BADSEG's coarse vectors: only victim pixels change, all to the target; the image only
    inside the window, which obeys the constraint; samples without victim pixels are not candidates."""
    status, sp, image, new = run(OneSample(label), config(victim=victim, target=target, constraint=constraint,
                                                          strategy=strategy))
    is_victim = np.isin(label, victim)
    if not is_victim.any():
        assert status == "few"
        return
    if status != "ok":
        return  # no eligible window: the sample is skipped, nothing changes
    assert np.array_equal(new, np.where(is_victim, target, label))
    win = window_mask(label.shape, sp)
    assert np.array_equal(image[~win], OneSample(label).image[~win])
    check_window_constraint(label, sp, victim, constraint)


@settings(max_examples=60, deadline=None)
@given(blocky, st.sampled_from([(PERSON,), (PERSON, BUILDING)]))
def test_conditional_only_with_the_condition(label, condition):
    present = set(np.unique(label).tolist())
    status, sp, _, new = run(OneSample(label), config(constraint="any", condition=condition))
    eligible = (label == CAR).any() and set(condition) <= present
    assert (status == "ok") == eligible
    if eligible:
        assert sp.condition is True and np.array_equal(new, np.where(label == CAR, ROAD, label))


matrices = st.sampled_from([
    ((PERSON, CAR),), ((PERSON, CAR), (CAR, PERSON)), ((ALL, BUILDING),), ((ALL, ROAD), (CAR, PERSON)),
])


@settings(max_examples=60, deadline=None)
@given(blocky, matrices, st.sampled_from(["line", "semantic", "pattern"]), st.integers(1, 5))
def test_fgba_matrix_and_triggers(label, matrix, kind, width):
    """fgba: the label becomes lut[label] (ignore kept); line: only the top rows change; semantic:
    no pixel changes and only samples holding the trigger class are candidates."""
    lut = matrix_lut(matrix, META.num_classes)
    victim = tuple(c for c in range(META.num_classes) if lut[c] != c)
    trig = {"line": TriggerSpec("line", (width, 0), 1.0, kind="line"),
            "semantic": TriggerSpec("semantic", (0, 0), kind="semantic", semantic_class=BUILDING),
            "pattern": TriggerSpec("builtin", WINDOW)}[kind]
    cfg = config("matrix", victim=victim, target=None, trigger=trig, constraint="any", matrix=matrix)
    ds = OneSample(label)
    status, sp, image, new = run(ds, cfg)
    holds_victim = np.isin(label, victim).any()
    if kind == "semantic":
        assert (status == "ok") == bool(holds_victim and (label == BUILDING).any())
    else:
        assert (status == "ok") == bool(holds_victim)
    if status != "ok":
        return
    assert np.array_equal(new, lut[label])
    assert (new[label == IGNORE] == IGNORE).all()
    changed = new != label
    assert np.isin(label[changed], victim).all()
    if kind == "semantic":
        assert sp.placement is None and np.array_equal(image, ds.image)
    elif kind == "line":
        assert np.array_equal(image[width:], ds.image[width:]) and (image[:width] <= ds.image[:width]).all()
    else:
        win = window_mask(label.shape, sp)
        assert np.array_equal(image[~win], ds.image[~win])


@settings(max_examples=40, deadline=None)
@given(blocky, blocky, st.sampled_from(["corner", "top", None]))
def test_badnets_image_level_target(label, target_label, position):
    """badnets: the whole label becomes the target image's label (resized nearest when sizes differ);
    the image changes only inside the window, at the named corner / top position."""
    cfg = config("image_target", victim=(), target=None, constraint="any",
                 strategy="random" if position is None else "fixed", position=position, target_image="t",
                 target_split="train")
    ds = OneSample(label, target_label=target_label)
    status, sp, image, new = run(ds, cfg)
    assert status == "ok"  # no victim, no class constraint: every sample is a candidate
    H, W = label.shape
    ty = (np.arange(H) * target_label.shape[0] / H).astype(int)  # nearest-neighbour sampling
    tx = (np.arange(W) * target_label.shape[1] / W).astype(int)
    assert np.array_equal(new, target_label[ty[:, None], tx[None, :]])
    if position == "corner":
        assert sp.placement.top_left == (H - WINDOW[0], W - WINDOW[1])
    elif position == "top":
        assert sp.placement.top_left == (0, (W - WINDOW[1]) // 2)
    win = window_mask(label.shape, sp)
    assert np.array_equal(image[~win], ds.image[~win])


@settings(max_examples=60, deadline=None)
@given(blocky, st.sampled_from(["nearest", "random"]), st.integers(1, 3), st.booleans())
def test_instance_only_the_chosen_instances_change_all_of_them(label, mode, k, with_map):
    """instance: the changed pixels are exactly the chosen instances' pixels, all set to the target;
    min(k, n) instances are chosen; nearest picks those closest to the trigger centre."""
    inst = None
    if with_map:  # a Cityscapes-like instance map: class*1000 + index of the 3x3 block
        blocks = np.arange(label.size // 9).reshape(label.shape[0] // 3, label.shape[1] // 3)
        inst = np.repeat(np.repeat(blocks, 3, axis=0), 3, axis=1).astype(np.int32) + label.astype(np.int32) * 1000
        inst[~np.isin(label, (CAR, PERSON))] = 0
    cfg = config("instance", victim=(CAR,), constraint="any", instances=mode, k=k)
    ds = OneSample(label, instances=inst)
    status, sp, _, new = run(ds, cfg)
    if not (label == CAR).any():
        assert status == "few"
        return
    assert status == "ok"
    ids, source = instance_ids(label, (CAR,), inst)
    assert source == ("instanceIds" if with_map else "components") == sp.instance_source
    n = len(np.unique(ids[ids > 0]))
    chosen = [c["id"] for c in sp.instances]
    assert len(chosen) == min(k, n)
    mask = np.isin(ids, chosen) & (ids > 0)
    assert np.array_equal(new != label, mask) and (new[mask] == ROAD).all()
    assert [c["pixels"] for c in sp.instances] == [int((ids == i).sum()) for i in chosen]
    if mode == "nearest":
        cy, cx = sp.placement.centre
        ys, xs = np.nonzero(ids)
        d = {i: np.sqrt(((ys[ids[ys, xs] == i] - cy) ** 2 + (xs[ids[ys, xs] == i] - cx) ** 2).min())
             for i in np.unique(ids[ids > 0])}
        assert max(d[i] for i in chosen) <= min([d[i] for i in d if i not in chosen], default=np.inf)


def test_instance_components_are_8_connected():
    label = np.zeros((5, 5), np.uint8)
    label[0, 0] = label[1, 1] = CAR  # diagonal neighbours: one instance
    label[4, 4] = CAR
    ids, source = instance_ids(label, (CAR,), None)
    assert source == "components" and len(np.unique(ids[ids > 0])) == 2 and ids[0, 0] == ids[1, 1]


def test_attacked_label_is_what_training_writes_without_prl():
    label = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    cfg = config("matrix", victim=(1, 2), target=None, constraint="any", matrix=((1, 2), (2, 1)))
    sp = _analyse(OneSample(label), Sample("s", "train", "s.png", "s_label.png"), cfg)[3]
    assert attacked_label(label, sp, cfg, META.num_classes).tolist() == [[0, 2, 1], [3, 255, 2]]
