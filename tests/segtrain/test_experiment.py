"""The experiment grid end to end on CPU (a tiny grid: two attacks x rates {0, 0.5}, a few iterations):
shared work done once, a rerun skips every cell, one changed option reruns only its cells, an interrupted
cell resumes to the weights of an uninterrupted one, the CSV equals the cell JSONs, changed folders are
refused, and the grid YAML's validation."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisongen.errors import ConfigError
from segtrain import experiment as ex
from segtrain.report import MARK

TRAIN = {"iters": 4, "batch": 2, "crop": "64x128", "scale": "1,1", "optimizer": "adamw", "lr": 0.001,
         "workers": 0, "device": "cpu", "log-every": 1, "ckpt-every": 2}


def tiny(src: Path, **changes) -> dict:
    g = {
        "name": "tiny",
        "dataset": {"src": str(src)},
        "options": {"trigger-size": 8},
        "attacks": {"baseline": {}, "nni": {"upper": 12}},
        "rates": [0, 0.5],
        "seeds": [0],
        "models": {"psp": {"arch": "pspnet", "backbone": "resnet18", "output-stride": 16}},
        "train": dict(TRAIN),
        "testsets": {"near": {"strategy": "random", "lower": 0, "upper": 10},
                     "far": {"strategy": "random", "lower": 10, "upper": 60}},
        "overlays": 2,
    }
    g.update(changes)
    return g


def run(grid: dict, out: Path, **kw) -> tuple[ex.Plan, list[tuple[str, str]]]:
    events = []
    plan = ex.plan_grid(ex.parse_grid(copy.deepcopy(grid)), out)
    ex.run_grid(plan, lambda e, info: events.append((e, info["cell"].key)) if e != "step" else None, **kw)
    return plan, events


@pytest.fixture(scope="module")
def done(tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "exp"
    plan, events = run(tiny(tiny_synth), out)
    return tiny_synth, out, plan, events


def test_grid_runs_every_cell_once_with_shared_work(done):
    src, out, plan, events = done
    assert [c.attack for c in plan.cells] == ["clean", "baseline", "nni"]
    assert [e for e, _ in events] == ["cell-start", "cell-done"] * 3
    # one Poisoned Test per band, one poisoned copy per attack/rate/seed, one run per cell
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "data" / "tests").iterdir()) == ["far", "near"]
    assert len(list((out / "data" / "poisoned").iterdir())) == 2
    assert len(list((out / "runs").iterdir())) == 3
    for c in plan.cells:
        rec = json.loads(plan.cell_json(c).read_text())
        assert rec["hash"] == c.hash and rec["steps"] == 4
        # every cell is scored on the very same test sets (identical trigger positions across methods)
        assert [p["testset"] for p in rec["report"]["poisoned"]] == [str(plan.test_dir(t)) for t in plan.tests]
        assert rec["report"]["benign"]["cba"] is not None
        # the overlay panel, written as RGB: the trigger window's outline in yellow
        panel = np.asarray(Image.open(plan.results / "overlays" / f"{c.key}.png").convert("RGB"))
        assert (panel == MARK).all(-1).sum() >= 4 * 8 * 2 and panel.shape[1] == 4 * 128 + 3 * 2
    # the clean model trained on the source, the poisoned ones on their copies
    clean = json.loads((plan.run_dir(plan.cells[0]) / "config.json").read_text())
    assert Path(clean["data"]) == Path(src)
    assert json.loads((plan.run_dir(plan.cells[2]) / "config.json").read_text())["data"] == \
        str(plan.poison_dir(plan.cells[2].poison))


def test_csv_equals_the_cell_jsons(done):
    _, _, plan, _ = done
    recs = [json.loads(plan.cell_json(c).read_text()) for c in plan.cells]
    expected = [r for rec in recs for r in ex.rows(rec)]
    assert len(expected) == 3 * 2
    assert ex.read_csv(plan.results / "results.csv") == expected
    assert json.loads((plan.results / "results.json").read_text())["rows"] == expected
    assert {r["testset"] for r in expected} == {"near", "far"}
    assert all(r["asr"] is not None and r["cba"] == recs[0]["report"]["benign"]["cba"]
               for r in expected if r["attack"] == "clean")


def test_rerun_skips_every_cell_and_changes_nothing(done):
    src, out, plan, _ = done
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    _, events = run(tiny(src), out)
    assert [e for e, _ in events] == ["cell-skip"] * 3
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == before


def test_a_fresh_clone_with_only_the_results_skips_every_cell(done, tmp_path):
    """The results folder alone (committed to git) marks the cells done; data and runs may be gone."""
    src, out, plan, _ = done
    shutil.copytree(plan.results, tmp_path / "results")
    fresh = ex.plan_grid(ex.parse_grid(tiny(src)), tmp_path / "exp", tmp_path / "results")
    assert set(fresh.done) == {c.hash for c in fresh.cells}
    events = []
    ex.run_grid(fresh, lambda e, info: events.append(e))
    assert events == ["cell-skip"] * 3
    assert not (tmp_path / "exp" / "runs").exists()


def test_changing_one_option_reruns_only_its_cells(done, tmp_path):
    src, out, plan, _ = done
    work = tmp_path / "exp"
    shutil.copytree(out, work)
    g = tiny(src)
    g["attacks"]["nni"] = {"upper": 14}
    new, events = run(g, work)
    assert events == [("cell-skip", plan.cells[0].key), ("cell-skip", plan.cells[1].key),
                      ("cell-start", new.cells[2].key), ("cell-done", new.cells[2].key)]
    assert new.cells[2].hash != plan.cells[2].hash and new.cells[0].hash == plan.cells[0].hash
    # the seed is part of a cell's identity, and the training config too
    assert ex.plan_grid(ex.parse_grid(tiny(src, seeds=[1])), work).cells[0].hash != plan.cells[0].hash
    t = dict(TRAIN, lr=0.002)
    assert ex.plan_grid(ex.parse_grid(tiny(src, train=t)), work).cells[0].hash != plan.cells[0].hash
    # what never changes the weights is no part of it
    t = dict(TRAIN, workers=1, **{"log-every": 2})
    assert ex.plan_grid(ex.parse_grid(tiny(src, train=t)), work).cells[0].hash == plan.cells[0].hash


class Interrupt(Exception):
    pass


def test_an_interrupted_cell_resumes_to_the_uninterrupted_weights(tiny_synth, tmp_path, done):
    _, _, full, _ = done
    g = tiny(tiny_synth, rates=[0])

    def stop(step, total, rec):
        if step == 3:
            raise Interrupt

    plan = ex.plan_grid(ex.parse_grid(g), tmp_path / "exp")
    with pytest.raises(Interrupt):
        ex.run_grid(plan, on_step=stop)
    cell = plan.cells[0]
    assert not plan.cell_json(cell).exists()  # no result for an unfinished cell
    assert torch.load(plan.run_dir(cell) / "last.pt", weights_only=False)["step"] == 2
    _, events = run(g, tmp_path / "exp")
    assert [e for e, _ in events] == ["cell-start", "cell-done"]
    assert cell.hash == full.cells[0].hash  # the same cell as the uninterrupted grid's clean model
    a = torch.load(plan.run_dir(cell) / "last.pt", weights_only=False)["model"]
    b = torch.load(full.run_dir(full.cells[0]) / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (plan.run_dir(cell) / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert json.loads(plan.cell_json(cell).read_text())["times"]["resumed_from"] == 2


def test_folders_made_for_other_options_are_refused(done, tmp_path):
    src, out, plan, _ = done
    work = tmp_path / "exp"
    shutil.copytree(out, work)
    cell = plan.cells[1]
    rec = work / "results" / "cells" / f"{cell.key}.json"
    r = json.loads(rec.read_text())
    r["hash"] = "0" * 64
    rec.write_text(json.dumps(r))
    with pytest.raises(ConfigError, match="other options"):
        ex.plan_grid(ex.parse_grid(tiny(src)), work)
    rec.unlink()
    run_rec = work / "runs" / cell.key / "cell.json"
    run_rec.write_text(json.dumps({"hash": "1" * 64}))
    p = ex.plan_grid(ex.parse_grid(tiny(src)), work)
    with pytest.raises(ConfigError, match="run folder .* other options"):
        ex.run_cell(p, p.cells[1])


def test_dry_run_status(done, tmp_path):
    src, out, plan, _ = done
    st = ex.status(ex.plan_grid(ex.parse_grid(tiny(src, seeds=[0, 1])), out))
    assert (st["done"], st["todo"]) == (3, 3)
    assert st["seconds_left"] > 0 and "finished" in st["basis"]


def test_shipped_configs_validate():
    assert {"paper-shape-cpu", "paper-cityscapes"} <= set(ex.shipped_configs())
    g = ex.load_grid("paper-shape-cpu")
    assert list(g.attacks) == ["baseline", "nni", "prl", "nni+prl"]
    assert g.rates == (0, 0.01, 0.05, 0.1, 0.2) and len(g.testsets) == 3
    assert g.attacks["nni+prl"] == {"preset": "nni", "prl_pixels": 100, "trigger_size": "18", "link": "hardlink"}
    c = ex.load_grid("paper-cityscapes")
    assert set(c.models) == {"deeplabv3-r50", "pspnet-r50"} and c.dataset["scale"] == 0.5
    assert [(t["lower"], t["upper"]) for t in c.testsets.values()] == [(0, 60), (60, 90), (90, 120)]


BAD = [
    ({"attacks": {"nni": {}, "zap": {}}}, "attacks.zap: unknown attack 'zap'"),
    ({"attacks": {"x": {"preset": "zap"}}}, "unknown attack 'zap'"),
    ({"rates": [0, 1.5]}, "rates[1] is 1.5"),
    ({"rates": [-0.1]}, "rates[0] is -0.1"),
    ({"rates": ["a lot"]}, "rates[0] is 'a lot'"),
    ({"colour": "red"}, "unknown key 'tiny.colour'"),
    ({"train": dict(TRAIN, speed=3)}, "unknown key 'train.speed'"),
    ({"attacks": {"nni": {"trigger-sise": 3}}}, "unknown key 'attacks.nni.trigger-sise'"),
    ({"attacks": {"nni": {"rate": 0.1}}}, "attacks.nni.rate is set by the grid"),
    ({"train": dict(TRAIN, iters="ten")}, "train.iters is 'ten'"),
    ({"train": dict(TRAIN, batch=1)}, "--batch 1"),
    ({"attacks": {"nni": {"alpha": "much"}}}, "attacks.nni.alpha is 'much'"),
    ({"seeds": [0.5]}, "seeds[0] is 0.5"),
    ({"models": {"m": {"arch": "pspnet", "backbone": "vgg"}}}, "train / models.m"),
    ({"protocol": "mine"}, "protocol is 'mine'"),
    ({"extra_seeds": [{"attack": "prl", "rate": 0.5, "seeds": [1]}]}, "extra_seeds[0].attack 'prl'"),
    ({"extra_seeds": [{"attack": "nni", "rate": 0.3, "seeds": [1]}]}, "extra_seeds[0].rate 0.3"),
    ({"testsets": {"near": {"strategy": "closest"}}}, "testsets.near.strategy is 'closest'"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_grid_is_one_line_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        ex.parse_grid(tiny(tmp_path, **change), where="tiny")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_section_and_dataset_choice(tmp_path):
    g = tiny(tmp_path)
    del g["testsets"]
    with pytest.raises(ConfigError, match="no 'testsets' key"):
        ex.parse_grid(g)
    with pytest.raises(ConfigError, match="exactly one of 'src'"):
        ex.parse_grid(tiny(tmp_path, dataset={"src": "x", "synthetic": {}}))


def test_code_fingerprint_is_taken_once_per_process(monkeypatch):
    """A commit made while a grid runs must not be credited with cells the already-loaded code trains."""
    import segtrain.experiment as exp_mod

    exp_mod.code_fingerprint.cache_clear()
    first = exp_mod.code_fingerprint()
    assert len(first["sources_sha256"]) == 64

    calls = []

    def no_git(*a, **k):
        calls.append(a)
        raise OSError("no git")

    monkeypatch.setattr(exp_mod.subprocess, "run", no_git)
    assert exp_mod.code_fingerprint() == first and not calls
    exp_mod.code_fingerprint.cache_clear()
    assert exp_mod.code_fingerprint()["git_commit"] is None  # asked anew after a clear: the git call failed
    exp_mod.code_fingerprint.cache_clear()
