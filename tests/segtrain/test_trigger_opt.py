"""BADSEG trigger optimization: the objective falls on a tiny surrogate, the image has exactly the asked
size, the same seed gives the same bytes, positions are drawn with poisongen's placement (eligible only),
and the CLI's PNG feeds `poisongen nni --trigger`, whose manifest records the pattern's sha256."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import build_cityscapes, one_line_error
from torch import nn

from poisongen.datasets import open_dataset
from poisongen.placement import eligible_centres
from segtrain.trigger_opt import Pool, TriggerOptConfig, draw, optimize_trigger, write_trigger

CAR, ROAD = 13, 0


class Tiny(nn.Module):
    """Per-pixel logits from a 3x3 conv plus a term from the image's global mean: a trigger anywhere
    can move every pixel, as a real network's context does."""

    def __init__(self, k: int):
        super().__init__()
        self.local = nn.Conv2d(3, k, 3, padding=1)
        self.glob = nn.Linear(3, k)

    def forward(self, x):
        return {"out": self.local(x) + self.glob(x.mean((2, 3)))[..., None, None] * 8}


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    return build_cityscapes(tmp_path_factory.mktemp("cs") / "cs", splits={"train": 6, "val": 2}, size=(32, 64))


def _cfg(**kw):
    base = {"size": (6, 6), "victim": (CAR,), "target": ROAD, "steps": 15, "batch": 4, "lr": 0.1, "seed": 3,
            "pool": 6, "eval_draws": 8, "constraint": "any"}
    return TriggerOptConfig(**{**base, **kw})


def _model():
    torch.manual_seed(0)
    return Tiny(19)


def test_objective_falls_and_same_seed_same_bytes(cs, tmp_path):
    layout = open_dataset(cs.root)
    cfg = _cfg()
    a = optimize_trigger(_model(), layout, cfg)
    assert a["objective_final"] < a["objective_initial"]
    assert np.mean(a["losses"][-3:]) < np.mean(a["losses"][:3])
    assert a["pattern"].shape == (6, 6, 4) and a["pattern"].dtype == np.uint8
    meta = write_trigger(tmp_path / "t1.png", a, cfg)
    b = optimize_trigger(_model(), layout, cfg)
    write_trigger(tmp_path / "t2.png", b, cfg)
    assert (tmp_path / "t1.png").read_bytes() == (tmp_path / "t2.png").read_bytes()
    c = optimize_trigger(_model(), layout, _cfg(seed=4))
    assert not np.array_equal(c["pattern"], a["pattern"])
    from PIL import Image

    assert Image.open(tmp_path / "t1.png").size == (6, 6)  # (w, h)
    saved = json.loads((tmp_path / "t1.json").read_text())
    assert saved == meta and saved["settings"]["size"] == [6, 6] and len(saved["losses"]) == 15
    assert not list(tmp_path.glob(".*tmp*"))


def test_non_square_size_and_values_in_range(cs):
    layout = open_dataset(cs.root)
    r = optimize_trigger(_model(), layout, _cfg(size=(4, 7), steps=3, lr=5.0))  # big steps: the clamp works
    assert r["pattern"].shape == (4, 7, 4)
    assert (r["pattern"][..., 3] == 255).all()


def test_draws_are_eligible_poisongen_positions(cs):
    layout = open_dataset(cs.root)
    cfg = _cfg(constraint="single", scale_jitter=0.0, size=(3, 3))
    rng = np.random.default_rng(0)
    pool = Pool(layout, layout.train_split, cfg.victim, cfg.pool, rng)
    for _ in range(20):
        d = draw(pool, cfg, rng)
        ok = eligible_centres(pool.labels[d.index], cfg.victim, d.size, "single")
        assert ok[d.top_left[0] + d.size[0] // 2, d.top_left[1] + d.size[1] // 2]


def test_bad_settings_are_one_line():
    from poisongen.errors import PoisonGenError

    for kw, needle in (({"victim": ()}, "victim"), ({"target": CAR}, "victim classes"), ({"steps": 0}, "--steps"),
                       ({"strategy": "fixed"}, "nearest, random"), ({"alpha": 0}, "--alpha"),
                       ({"size": (1, 5)}, "--size")):
        with pytest.raises(PoisonGenError, match=needle) as e:
            _cfg(**kw)
        assert "\n" not in str(e.value)


def test_cli_png_feeds_poisongen_and_its_manifest_records_the_sha256(cs, tmp_path, run_cli):
    from poisongen.cli import app as pg_app
    from segtrain.checkpoint import save
    from segtrain.cli import app
    from segtrain.models import build_model

    layout = open_dataset(cs.root)
    torch.manual_seed(0)
    model = build_model("pspnet", layout.meta.num_classes, "resnet18", 32, aux=False)
    ck = save(tmp_path / "last.pt", {"model": model.state_dict(), "num_classes": layout.meta.num_classes,
                                     "class_names": layout.meta.names,
                                     "config": {"arch": "pspnet", "backbone": "resnet18", "output_stride": 32,
                                                "aux": False}})
    args = ["optimize-trigger", "--data", cs.root, "--ckpt", ck, "--size", "5x7", "--victim", "car", "--target",
            "road", "--steps", "2", "--batch", "2", "--pool", "3", "--constraint", "any", "-q"]
    r = run_cli(app, [*args, "--out", tmp_path / "trig.png"])
    assert r.exit_code == 0, r.stderr
    meta = json.loads((tmp_path / "trig.json").read_text())
    assert meta["settings"]["victim"] == [CAR] and meta["ckpt"] == str(ck)
    one_line_error(run_cli(app, [*args, "--out", tmp_path / "trig.png"]), "--overwrite")
    one_line_error(run_cli(app, [*args[:-1], "--out", tmp_path / "x.jpg"]), ".png")
    r = run_cli(pg_app, ["nni", "--src", cs.root, "--rate", "0.5", "--trigger", tmp_path / "trig.png",
                         "--trigger-size", "5x7", "--out", tmp_path / "poisoned", "-q", "-j", "1"])
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "poisoned" / "manifest.json").read_text())
    assert manifest["config"]["trigger"]["sha256"] == meta["pattern_sha256"]
