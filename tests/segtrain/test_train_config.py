"""TrainConfig: frozen, every value checked in one place (one line naming it and what is allowed),
registry defaults resolved at construction, a to_dict/from_dict round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from segtrain.config import TrainConfig
from segtrain.errors import SegTrainError


def test_config_is_frozen_and_changed_only_by_copies():
    cfg = TrainConfig(iters=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eval_every = 5  # what run() used to do after construction
    later = dataclasses.replace(cfg, eval_every=5, victim=[13])
    assert (cfg.eval_every, later.eval_every, later.victim) == (None, 5, (13,))
    with pytest.raises(SegTrainError, match="--eval-every 0"):
        dataclasses.replace(cfg, eval_every=0)  # a copy is checked again


def test_registry_defaults_and_aliases_are_resolved_at_construction():
    cfg = TrainConfig(iters=1, arch="DeepLabV3", backbone="mobilenet_v3")
    assert (cfg.arch, cfg.backbone, cfg.output_stride) == ("deeplabv3", "mobilenet_v3_large", 16)
    assert (TrainConfig(iters=1).backbone, TrainConfig(iters=1).output_stride) == ("resnet50", 8)
    with pytest.raises(SegTrainError, match="valid archs"):
        TrainConfig(iters=1, arch="segnet")  # unet is an smp arch now


BAD = [
    ({"iters": None}, "give exactly one of --iters or --epochs (got neither)"),
    ({"iters": 2, "epochs": 1}, "give exactly one of --iters or --epochs (got both)"),
    ({"iters": 0}, "--iters 0 is not allowed; it must be a whole number >= 1"),
    ({"iters": None, "epochs": -1}, "--epochs -1 is not allowed"),
    ({"batch": 1}, "--batch 1 is not allowed; it must be >= 2"),
    ({"crop": (0, 64)}, "--crop (0, 64) is not allowed"),
    ({"scale": (2.0, 1.0)}, "--scale 2,1 is not allowed; it must be LO,HI with 0 < LO <= HI"),
    ({"scale": (0.0, 1.0)}, "--scale 0,1 is not allowed"),
    ({"scale": (1.0, float("inf"))}, "--scale (1.0, inf) is not allowed; it must be two finite numbers"),
    ({"lr": 0.0}, "--lr 0.0 is not allowed; it must be a finite number > 0"),
    ({"lr": -1e-3}, "--lr -0.001 is not allowed"),
    ({"lr": float("nan")}, "--lr nan is not allowed"),
    ({"weight_decay": -1.0}, "--weight-decay -1.0 is not allowed; it must be a finite number >= 0"),
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid optimizers are {sgd, adamw}"),
    ({"device": "tpu"}, "unknown device 'tpu'; valid devices are {auto, cpu, cuda, cuda:N}"),
    ({"workers": -1}, "--workers -1 is not allowed"),
    ({"log_every": 0}, "--log-every 0 is not allowed"),
    ({"ckpt_every": 0}, "--ckpt-every 0 is not allowed"),
    ({"stop_after": 0}, "--stop-after 0 is not allowed"),
    ({"eval_every": -3}, "--eval-every -3 is not allowed"),
]


@pytest.mark.parametrize(("kw", "message"), BAD, ids=[m.split(" is")[0][:40] for _, m in BAD])
def test_each_bad_value_is_one_line_naming_it(kw, message):
    with pytest.raises(SegTrainError) as e:
        TrainConfig(**{"iters": 5, **kw})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_round_trip_through_json_and_schedule():
    cfg = TrainConfig(data="d", out="o", iters=None, epochs=3, batch=4, crop=[32, 64], victim=[13], target=0,
                      eval_poisoned=["a", "b"], dataset={"fingerprint": "f"})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["crop"] == [32, 64] and d["eval_poisoned"] == ["a", "b"]
    back = TrainConfig.from_dict({**d, "total_iters": 99, "not_a_field": 1})  # config.json's extra keys
    assert back == cfg and back.dataset == cfg.dataset
    assert cfg.per_epoch(10) == 2 and cfg.total_iters(10) == 6  # 10 samples at batch 4: 2 steps per epoch
    assert dataclasses.replace(cfg, iters=7, epochs=None).total_iters(10) == 7
