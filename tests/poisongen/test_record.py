"""poisongen.record: the one owner of the manifest's record format (field names, band notation,
"no upper bound"), and its readers."""

import math

import pytest

from poisongen import manifest as mf
from poisongen import record, verify
from poisongen.config import AttackConfig, PlacementSpec
from poisongen.errors import PoisonGenError


def test_band_text_is_half_open_with_no_upper_bound_as_inf():
    assert record.band_text(0, 60) == "[0, 60)"
    assert record.band_text(30.5, math.inf) == "[30.5, inf)"
    assert record.band_text(0, None) == "[0, inf)"


def test_bounds_and_distances_store_infinity_as_null():
    assert record.bound_to_json(math.inf) is None and record.bound_to_json(30.0) == 30.0
    assert math.isinf(record.bound_from_json(None)) and record.bound_from_json(60) == 60.0
    assert record.distance_to_json(math.inf) is None and record.distance_to_json(1 / 3) == 0.3333


def test_the_config_and_the_readers_use_the_owner():
    cfg = AttackConfig("nni", "train", "train", (13,), 0, placement=PlacementSpec("nearest", 0.0, math.inf),
                       rate=0.1)
    d = cfg.to_dict()
    assert d["placement"]["upper"] is record.UNBOUNDED
    assert AttackConfig.from_dict(d) == cfg
    assert verify.PLAN_FIELDS is record.PLAN_FIELDS and verify.DERIVED_FIELDS is record.DERIVED_FIELDS
    assert mf.SAMPLE_FIELDS is record.DIFF_FIELDS
    assert record.attack_config({"config": d}) == cfg


def test_config_record_reads_partial_configs_leniently():
    r = record.config_record({"kind": "testset", "config": {"victim": [13], "target": None, "split": "val",
                                                            "placement": {"lower": 0, "upper": None}}})
    assert (r.kind, r.victim, r.target, r.split, r.band, r.rule) == ("testset", (13,), None, "val", (0.0, math.inf),
                                                                      None)
    assert r.band_text() == "[0, inf)"
    r = record.config_record({"config": {"victim": 13}})
    assert (r.kind, r.victim, r.band, r.band_text()) == ("train", (13,), None, None)
    assert record.config_record({}).victim == ()


@pytest.mark.parametrize("m,needle", [
    ({"config": [1, 2]}, "manifest config is a list, not a mapping"),
    ({"config": {"victim": ["car"]}}, "wrong type"),
    ({"config": {"target": "road"}}, "wrong type"),
    ({"config": {"placement": {"lower": 0, "upper": "far"}}}, "wrong type"),
])
def test_config_record_names_wrong_types(m, needle):
    with pytest.raises(PoisonGenError, match=needle):
        record.config_record(m)


@pytest.mark.parametrize("config", [{"kind": "scale", "seed": None, "scale": 0.5}, {"attack": "nni"}, None])
def test_attack_config_of_a_malformed_or_scale_manifest_is_one_error(config):
    with pytest.raises(PoisonGenError, match="has a malformed config"):
        record.attack_config({"config": config})
