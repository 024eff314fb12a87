"""segtrain.evaluate: the backdoor protocol, checked against numpy hand computations (eval_models.py)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build_cityscapes, build_folder
from eval_models import PixelConv, hand_cm, hand_iou

from poisongen.cli import app as poisongen_app
from poisongen.codecs import read_gray, read_rgb
from poisongen.errors import PoisonGenError
from poisongen.manifest import load
from segtrain.evaluate import ModelPredictor, backdoor_report, get_protocol

N = 19
CAR, ROAD, BICYCLE = 13, 0, 18


def make_testset(run_cli, src, out, *args):
    r = run_cli(poisongen_app, ["testset", "--src", src, "--out", out, "--jobs", "1", "-q", *args])
    assert r.exit_code == 0, r.stderr
    return load(out)


def image_of(rec: dict, suffix: str = "_leftImg8bit.png") -> str:
    return next(f["path"] for f in rec["files"] if f["path"].endswith(suffix))


@pytest.fixture
def cs(tmp_path):
    return build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 4}, size=(32, 64))


@pytest.fixture
def model():
    return PixelConv(N, {CAR: 1.5, ROAD: 1.5}).eval()


def report(model, data, sets, protocol="paper", **kw):
    return backdoor_report(ModelPredictor(model, "cpu", flip=get_protocol(protocol).flip), str(data),
                           [str(s) for s in sets], protocol, **kw)


def test_iba_testset_records_the_layouts_target_and_asr_is_targeted(tmp_path, run_cli, cs, model):
    """Defect 1: the Poisoned Test records road (Cityscapes' paper default), and ASR counts car pixels
    predicted as road only (a hand computation over the triggered images)."""
    ts = tmp_path / "near"
    m = make_testset(run_cli, cs.root, ts, "--strategy", "nearest", "--trigger-size", "4")
    assert m["config"]["target"] == ROAD and m["config"]["victim"] == [CAR]
    (p,) = report(model, cs.root, [ts])["poisoned"]
    hit = tot = 0
    for rec in m["samples"]:
        pred, gt = model.numpy_predict(read_rgb(ts / image_of(rec))), cs.labels["val"][rec["id"]]
        hit += int(((gt == CAR) & (pred == ROAD)).sum())
        tot += int((gt == CAR).sum())
    assert p["target"] == ROAD and p["asr"] == pytest.approx(hit / tot) and p["victim_pixels"] == tot
    assert 0 < p["asr"] < 1
    assert p["band_label"] == "[0, 3.75)"  # Euclidean band, U = 60 * 32/512


def test_chessboard_band_label_is_half_open_on_the_left(tmp_path, run_cli, cs, model):
    ts = tmp_path / "iba"
    make_testset(run_cli, cs.root, ts, "--attack", "nni", "--protocol", "iba-code")
    (p,) = report(model, cs.root, [ts], protocol="iba-code")["poisoned"]
    assert p["band_label"] == "(0, 3.75]"


def test_no_target_known_is_refused_not_untargeted(tmp_path, run_cli):
    """Defect 1: a folder layout has no paper default; with no --target anywhere, segtrain refuses with
    a line naming --target instead of reporting "victim predicted as anything else"."""
    built = build_folder(tmp_path / "f", counts={"train": 2, "val": 3}, size=(24, 32))
    ts = tmp_path / "ts"
    m = make_testset(run_cli, built.root, ts, "--victim", "car", "--trigger-size", "3")
    assert m["config"]["target"] is None
    model = PixelConv(4).eval()
    with pytest.raises(PoisonGenError, match="--target"):
        report(model, built.root, [ts])
    (p,) = report(model, built.root, [ts], target="road")["poisoned"]
    assert p["target"] == 1 and p["asr"] is not None


def test_pba_is_the_mean_of_its_stored_table(tmp_path, run_cli, cs, model):
    """Defect 4: pba_iou_per_class is computed with GT-victim pixels ignored; PBA = its mean over the
    non-victim classes, and both equal a numpy hand computation."""
    ts = tmp_path / "near"
    m = make_testset(run_cli, cs.root, ts, "--strategy", "nearest", "--trigger-size", "4")
    (p,) = report(model, cs.root, [ts])["poisoned"]
    table = p["pba_iou_per_class"]
    assert table["car"] is None
    vals = [v for v in table.values() if v is not None]
    assert p["pba"] == pytest.approx(sum(vals) / len(vals))
    cm = np.zeros((N, N), np.int64)
    for rec in m["samples"]:
        pred, gt = model.numpy_predict(read_rgb(ts / image_of(rec))), cs.labels["val"][rec["id"]]
        gt = np.where(gt == CAR, 255, gt)
        cm += hand_cm(pred, gt, N)
    hand = [v for k, v in enumerate(hand_iou(cm)) if k != CAR and v is not None]
    assert p["pba"] == pytest.approx(np.mean(hand))
    names = list(table)
    assert [table[names[k]] for k in range(N) if k != CAR] == pytest.approx(
        [v for k, v in enumerate(hand_iou(cm)) if k != CAR], nan_ok=True)


def fine_grained_by_hand(model, ts, m, cs):
    hit = tot = correct = counted = 0
    for rec in m["samples"]:
        pred = model.numpy_predict(read_rgb(ts / image_of(rec)))
        gt = cs.labels["val"][rec["id"]]
        tl_path = next(t["path"] for t in rec["target_labels"] if t["path"].endswith("labelTrainIds.png"))
        tl = read_gray(ts / tl_path)
        valid = (gt != 255) & (tl != 255)
        changed = valid & (tl != gt)
        hit += int((pred[changed] == tl[changed]).sum())
        tot += int(changed.sum())
        correct += int((pred[valid] == tl[valid]).sum())
        counted += int(valid.sum())
    return hit / tot, correct / counted


def test_all_to_one_set_has_no_pba_and_the_papers_asr(tmp_path, run_cli, cs, model):
    """Defects 5 and 6: an all:road set reports no PBA; its ASR is the accuracy over pixels whose target
    differs from GT (= PA-A over the pixels not already road), not PA-A over every pixel."""
    ts = tmp_path / "n21"
    m = make_testset(run_cli, cs.root, ts, "--attack", "fgba", "--matrix", "all:road")
    (p,) = report(model, cs.root, [ts])["poisoned"]
    asr, pa_a = fine_grained_by_hand(model, ts, m, cs)
    assert p["pba"] is None and "pba_iou_per_class" not in p
    assert p["asr"] == pytest.approx(asr) == p["fine_grained"]["asr"]
    assert p["fine_grained"]["pa_a"] == pytest.approx(pa_a) and pa_a != pytest.approx(asr)
    assert p["asr_definition"] == "fine-grained"


def test_fine_grained_asr_with_two_targets_is_the_papers(tmp_path, run_cli, cs, model):
    """Defect 6: person:car,all:road has two targets; the reported ASR is the fine-grained paper's, not
    an untargeted count of victim pixels."""
    ts = tmp_path / "two"
    m = make_testset(run_cli, cs.root, ts, "--attack", "fgba", "--matrix", "person:car,all:road")
    (p,) = report(model, cs.root, [ts])["poisoned"]
    asr, _ = fine_grained_by_hand(model, ts, m, cs)
    assert p["asr"] == pytest.approx(asr) and p["target"] is None and p["clean_asr"] is None


def test_iba_code_counts_every_image_and_absent_classes_as_zero(tmp_path, run_cli, cs, model):
    """--protocol iba-code (SPEC 6b): ASR and PBA over every val image of the test set (triggered or not),
    class averages over all classes with absent ones 0; by hand with flip-averaged softmax scores."""
    ts = tmp_path / "near"
    m = make_testset(run_cli, cs.root, ts, "--strategy", "nearest", "--trigger-size", "4", "--victim", "bicycle")
    triggered = {r["id"] for r in m["samples"]}
    assert 0 < len(triggered) < 4, "the case must hold untriggered images"
    res = report(model, cs.root, [ts], protocol="iba-code")
    (p,) = res["poisoned"]
    assert p["samples"] == 4 and p["triggered"] == len(triggered)

    def flip_pred(rgb):
        def soft(z):
            e = np.exp(z - z.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
        return ((soft(model.numpy_logits(rgb)) + soft(model.numpy_logits(rgb[:, ::-1]))[:, ::-1]) / 2).argmax(-1)

    hit = tot = 0
    cm_nv = np.zeros((N, N), np.int64)
    cm_b = np.zeros((N, N), np.int64)
    for i in cs.ids("val"):
        city = i.split("_")[0]
        pred = flip_pred(read_rgb(ts / "leftImg8bit" / "val" / city / f"{i}_leftImg8bit.png"))
        gt = cs.labels["val"][i]
        hit += int(((gt == BICYCLE) & (pred == ROAD)).sum())
        tot += int((gt == BICYCLE).sum())
        cm_nv += hand_cm(pred, np.where(gt == BICYCLE, 255, gt), N)
        clean = flip_pred(read_rgb(cs.root / "leftImg8bit" / "val" / city / f"{i}_leftImg8bit.png"))
        cm_b += hand_cm(clean, gt, N)
    assert p["asr"] == pytest.approx(hit / tot)
    pba = sum(v or 0.0 for k, v in enumerate(hand_iou(cm_nv)) if k != BICYCLE) / (N - 1)
    assert p["pba"] == pytest.approx(pba)
    assert res["benign"]["cba"] == pytest.approx(sum(v or 0.0 for v in hand_iou(cm_b)) / N)
    # the paper protocol on the same set differs: triggered samples only, classes with a union only
    (q,) = report(model, cs.root, [ts])["poisoned"]
    assert q["samples"] == len(triggered) and q["pba"] != pytest.approx(p["pba"])
