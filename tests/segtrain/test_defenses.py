"""Defenses as library calls: pruning zeroes exactly k channels of the right layer and nothing else (and the
layer is found for every registered arch), fine-tuning trains only on the recorded clean samples, the same
seed gives bit-identical defended weights, fine-pruning keeps pruned channels at 0, ABL's isolation finds
more poisoned samples than chance."""

from __future__ import annotations

import pytest
import torch

from poisongen.cli import app as poisongen_app
from segtrain import checkpoint
from segtrain.cli import app as segtrain_app
from segtrain.defenses import abl
from segtrain.defenses.common import choose_ids, open_subject
from segtrain.defenses.finetune import clean_ids, tune
from segtrain.defenses.prune import (
    keep_pruned,
    last_conv,
    plan_pruning,
    prune,
    resolve_layer,
    scale_counts,
    zero_channels,
)
from segtrain.errors import SegTrainError
from segtrain.models import build_model

TINY = ["--arch", "pspnet", "--backbone", "resnet18", "--output-stride", "16", "--crop", "64x128", "--scale",
        "1,1", "--device", "cpu", "--workers", "0", "--quiet", "--no-eval", "--optimizer", "adamw", "--lr", "0.001"]


@pytest.fixture(scope="module")
def tiny_model(tiny_synth, tmp_path_factory):
    """A PSPNet-R18 trained 2 steps on the clean tiny synthetic set: a checkpoint with the registry's layers."""
    from typer.testing import CliRunner

    tmp = tmp_path_factory.mktemp("def")
    r = CliRunner().invoke(segtrain_app, [str(x) for x in ["run", tiny_synth, "--iters", "2", "--batch", "2",
                                                           "--out", tmp / "run", "--victim", "car", "--target",
                                                           "road", *TINY]], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return tmp / "run" / "last.pt"


@pytest.mark.parametrize("arch,backbone,layer", [("pspnet", "resnet18", "head.0.0"),
                                                 ("deeplabv3", "mobilenet_v3_large", "classifier.1"),
                                                 ("fcn", "resnet50", "classifier.0"),
                                                 ("lraspp", "mobilenet_v3_large", "classifier.cbr.0")])
def test_last_conv_before_the_classifier_for_every_arch(arch, backbone, layer):
    model = build_model(arch, 5, backbone)
    assert last_conv(model, 5) == layer
    name, conv, bn = resolve_layer(model, 5, None)
    assert name == layer and bn.num_features == conv.out_channels
    with pytest.raises(SegTrainError, match=r"unknown --layer 'nope'; valid layers .* are \{.*" + layer):
        resolve_layer(model, 5, "nope")


def test_k_scales_with_the_width_or_is_absolute():
    assert scale_counts([5, 15, 30], 512, 256) == [10, 30, 60]
    assert scale_counts([5, 15, 30], 128, 256) == [2, 8, 15]
    assert scale_counts([5, 15, 30], 256, None) == [5, 15, 30]
    with pytest.raises(SegTrainError, match="--channels 300 is above the 256 channels"):
        scale_counts([5, 300], 256, None)


def test_pruning_zeroes_exactly_k_channels_of_the_layer_and_nothing_else(tiny_model, tiny_synth):
    subject = open_subject(tiny_model, str(tiny_synth))
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    plan = plan_pruning(subject, [3, 7], None, None, 0.25, seed=0)
    assert plan["layer"] == "head.0.0" and plan["width"] == 256 and len(plan["calibration_ids"]) == 6
    acts = torch.tensor(plan["activations"])
    assert acts[plan["order"][:7]].max() <= acts[plan["order"][7:]].min()  # the least active first
    seen = []

    def evaluate(model):
        now = model.state_dict()
        changed = {}
        for key, v in now.items():
            if v.dtype.is_floating_point and not torch.equal(v, before[key]):
                rows = (v != before[key]).reshape(v.shape[0], -1).any(1).nonzero().flatten().tolist()
                changed[key] = rows
        zero_rows = int((now["head.0.0.weight"].flatten(1).abs().sum(1) == 0).sum())
        seen.append((changed, zero_rows))
        return {}

    rows = prune(subject, plan, evaluate, lambda name, model, settings: name)
    assert [r["k"] for r in rows] == [3, 7]
    for (changed, zero_rows), k in zip(seen, (3, 7), strict=True):
        chosen = sorted(plan["order"][:k])
        # running statistics are untouched (eval mode), so exactly the conv rows and BN affine of k channels
        assert set(changed) <= {"head.0.0.weight", "head.0.1.weight", "head.0.1.bias"}
        assert changed["head.0.0.weight"] == chosen and changed["head.0.1.weight"] == chosen
        assert zero_rows == k
        assert all(sorted(v) == chosen or set(v) <= set(chosen) for v in changed.values())


def test_a_zeroed_channel_outputs_exactly_zero_for_any_input():
    model = build_model("pspnet", 5, "resnet18", 16).eval()
    _, conv, bn = resolve_layer(model, 5, None)
    zero_channels(conv, bn, [1, 4])
    got = {}
    bn.register_forward_hook(lambda _m, _i, o: got.__setitem__("o", o.relu()))
    model(torch.randn(2, 3, 32, 64))
    assert torch.count_nonzero(got["o"][:, [1, 4]]) == 0 and torch.count_nonzero(got["o"][:, [0, 2]]) > 0


def test_choice_of_clean_ids_is_seeded_and_a_fraction():
    ids = [f"s{i:03d}" for i in range(200)]
    a, b, c = choose_ids(ids, 0.05, 0, "x"), choose_ids(ids, 0.05, 0, "x"), choose_ids(ids, 0.05, 1, "x")
    assert a == b and a != c and len(a) == 10 and set(a) <= set(ids)


def test_finetuning_trains_only_on_the_recorded_samples_and_is_bitwise_reproducible(tiny_model, tiny_synth):
    subject = open_subject(tiny_model, str(tiny_synth))
    ids = clean_ids(subject, 0.25, seed=3)
    assert len(ids) == 6 and ids == clean_ids(subject, 0.25, seed=3)
    states, served = [], []
    for _ in range(2):
        model = checkpoint.model_from_checkpoint(subject.ckpt)
        info = tune(subject, model, ids, epochs=1, batch=2, seed=3)
        states.append(model.state_dict())
        served.append(info["served"])
        assert info["steps"] == 3
    assert served[0] == served[1] and set(served[0]) <= set(ids) and served[0] == sorted(ids)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    orig = subject.ckpt["model"]
    assert any(not torch.equal(states[0][k], orig[k]) for k in orig if orig[k].dtype.is_floating_point)
    model = checkpoint.model_from_checkpoint(subject.ckpt)
    tune(subject, model, ids, epochs=1, batch=2, seed=4)
    assert any(not torch.equal(model.state_dict()[k], states[0][k]) for k in states[0]
               if states[0][k].dtype.is_floating_point)


def test_fine_pruning_keeps_pruned_channels_at_zero(tiny_model, tiny_synth):
    subject = open_subject(tiny_model, str(tiny_synth))
    model = checkpoint.model_from_checkpoint(subject.ckpt)
    _, conv, bn = resolve_layer(model, 19, None)
    zero_channels(conv, bn, [0, 5, 9])
    handles = keep_pruned(conv, bn, [0, 5, 9])
    tune(subject, model, clean_ids(subject, 0.25, 0), epochs=1, batch=2, seed=0)
    for h in handles:
        h.remove()
    assert torch.count_nonzero(conv.weight[[0, 5, 9]]) == 0 and torch.count_nonzero(bn.weight[[0, 5, 9]]) == 0
    assert torch.count_nonzero(conv.weight[1]) > 0


def test_isolation_scores_against_the_manifest():
    s = abl.isolation_score(["a", "b", "c", "d"], ["a", "c", "x"], 40)
    assert s == {"isolated": 4, "truly_poisoned": 2, "precision": 0.5, "recall": 2 / 3, "chance": 3 / 40}
    assert abl.isolate({"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.1}, 0.5) == ["b", "d"]


def test_abl_isolation_finds_more_poisoned_samples_than_chance(tiny_model, tiny_synth, tmp_path, run_cli):
    """All-to-road poisoning of 25 % of the training split: ABL's LGA stage and lowest-loss isolation of
    25 % must hold more poisoned samples than the 25 % a random choice would."""
    pois = tmp_path / "pois"
    r = run_cli(poisongen_app, ["fgba", "--src", tiny_synth, "--rate", "0.25", "--matrix", "all:road", "--out",
                                pois, "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.stderr
    from poisongen.datasets import open_dataset

    subject = open_subject(tiny_model, str(tiny_synth))
    train = open_dataset(pois, generate=False)
    _, losses, isolated, _ = abl.isolation_stage(subject, train, 0.25, abl.GAMMA, iters=6, seed=0)
    from segtrain.data import read_attack_info

    poisoned = read_attack_info(pois).sample_ids
    score = abl.isolation_score(isolated, poisoned, len(losses))
    assert score["chance"] == pytest.approx(0.25)
    assert score["precision"] > score["chance"], score
