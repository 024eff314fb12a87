"""poisongen.plan: which samples, which positions, from the seed alone (on a tiny on-disk Cityscapes)."""

import math
from dataclasses import replace

import pytest
from builders import build_cityscapes

from poisongen.attacks import resolve
from poisongen.datasets import open_dataset
from poisongen.errors import SelectionError
from poisongen.plan import SamplePlan, build_plan, draw_key, requested_count, sample_rng


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    built = build_cityscapes(tmp_path_factory.mktemp("plan") / "cs", splits={"train": 10, "val": 3}, size=(32, 64))
    return open_dataset(built.root)


def cfg_of(ds, **kw):
    return resolve(ds, kw.pop("attack", "nni"), trigger_size=(4, 4), **kw)


def test_requested_count_rounds_halves_up(ds):
    cfg = cfg_of(ds, rate=0.25)
    assert requested_count(cfg, 10) == 3 and requested_count(replace(cfg, rate=0.2), 10) == 2
    assert requested_count(replace(cfg, rate=None, count=7), 10) == 7
    with pytest.raises(SelectionError, match="poisons 0 samples"):
        requested_count(replace(cfg, rate=0.01), 10)


def test_the_seed_alone_decides_and_the_lazy_scan_selects_what_the_full_scan_does(ds):
    cfg = cfg_of(ds, rate=0.3, seed=5)
    a, b = build_plan(ds, cfg), build_plan(ds, cfg)
    assert [sp.to_dict() for sp in a.selected] == [sp.to_dict() for sp in b.selected]
    assert len(a.selected) == 3
    full = build_plan(ds, replace(cfg, full_scan=True))
    assert [sp.id for sp in full.selected] == [sp.id for sp in a.selected]
    order = sorted(s.id for s in ds.samples("train"))
    expected = sorted(order, key=lambda i: draw_key(5, i))[:3]  # every builder sample is a candidate
    assert sorted(sp.id for sp in a.selected) == sorted(expected)
    other = build_plan(ds, cfg_of(ds, rate=0.3, seed=6))
    assert {sp.id for sp in other.selected} != {sp.id for sp in a.selected} or [
        sp.placement for sp in other.selected] != [sp.placement for sp in a.selected]


def test_sample_rng_depends_on_seed_and_id_only():
    assert sample_rng(1, "a").integers(1 << 30) == sample_rng(1, "a").integers(1 << 30)
    assert sample_rng(1, "a").integers(1 << 30) != sample_rng(1, "b").integers(1 << 30)


def test_nearest_is_within_the_band_and_records_round_trip(ds):
    plan = build_plan(ds, cfg_of(ds, rate=0.5, upper=10.0))
    for sp in plan.selected:
        assert 0 <= sp.placement.distance < 10
        again = SamplePlan.from_dict(sp.to_dict())
        assert again.to_dict() == sp.to_dict()


def test_a_test_set_triggers_every_candidate_of_the_validation_split(ds):
    plan = build_plan(ds, cfg_of(ds, kind="testset"))
    assert plan.config.split == "val"
    assert len(plan.selected) + len(plan.skipped) == len(ds.samples("val")) == 3


def test_an_empty_band_skips_with_a_reason_or_fails_without_allow_fewer(ds):
    with pytest.raises(SelectionError):
        build_plan(ds, cfg_of(ds, rate=0.3, lower=200.0, upper=300.0))
    plan = build_plan(ds, cfg_of(ds, rate=0.3, lower=200.0, upper=300.0, allow_fewer=True, full_scan=True))
    assert plan.selected == [] and len(plan.skipped) == 10
    assert all(s["reason"] and s["detail"] for s in plan.skipped)
    assert math.isinf(plan.config.placement.upper) is False
