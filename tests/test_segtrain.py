"""segtrain: hand-computed metrics, cross-checks with torchvision's reference formula and the official
Cityscapes evaluator, a tiny end-to-end CPU run (train, resume, evaluate, score), loss decrease for every
arch, and one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import build_cityscapes, build_voc, one_line_error
from PIL import Image

from poisongen.codecs import sha256_file
from poisongen.manifest import fingerprint
from segtrain.cli import app
from segtrain.metrics import (
    MetricAccumulator,
    backdoor_metrics,
    confusion_matrix,
    fine_grained_metrics,
    iou,
    mask_victim,
    miou,
    pixel_acc,
    victim_counts,
)
from segtrain.models import build_model, load_backbone_weights

T = torch.tensor
CAR, ROAD = 13, 0


# --- metrics by hand ----------------------------------------------------------------------------
def test_confusion_matrix_iou_pa_by_hand():
    gt = T([0, 0, 1, 1, 2, 255])
    pred = T([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert iou(cm).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert miou(cm) == pytest.approx(1 / 3)
    assert pixel_acc(cm) == pytest.approx(3 / 5)
    # a class absent from GT and prediction has no union: nan, and does not count in the mean
    cm4 = confusion_matrix(pred, gt, 4)
    assert math.isnan(iou(cm4)[3])
    assert miou(cm4) == pytest.approx(1 / 3)
    # a class predicted but absent from GT counts (IoU 0)
    cm_fp = confusion_matrix(T([3, 1, 1, 1, 0, 2]), gt, 4)
    assert miou(cm_fp) == pytest.approx((0 + 2 / 3 + 0 + 0) / 4)


def test_backdoor_metrics_by_hand():
    gt = T([0, 0, 1, 1, 1, 2, 2, 255])
    poisoned_pred = T([0, 0, 0, 0, 1, 2, 1, 0])
    clean_pred = T([0, 0, 1, 1, 0, 2, 2, 0])
    victim, target = (1,), 0
    cm_b = confusion_matrix(clean_pred, gt, 3)
    cm_p = confusion_matrix(poisoned_pred, mask_victim(gt, victim), 3)
    assert cm_p.tolist() == [[2, 0, 0], [0, 0, 0], [0, 1, 1]]
    m = backdoor_metrics(cm_b, cm_p, victim, victim_counts(poisoned_pred, gt, victim, target),
                         victim_counts(clean_pred, gt, victim, target))
    assert m["cba"] == pytest.approx(7 / 9)  # (2/3 + 2/3 + 1) / 3
    assert m["pba"] == pytest.approx(0.75)  # (1 + 1/2) / 2 over non-victim classes 0 and 2
    assert m["asr"] == pytest.approx(2 / 3)
    assert m["clean_asr"] == pytest.approx(1 / 3)
    # the accumulator gives the same, batched, with per-sample counts for subsets
    acc_p = MetricAccumulator(3, victim, target)
    acc_p.update(poisoned_pred.view(2, 4), gt.view(2, 4), ids=["a", "b"])
    assert acc_p.pba() == pytest.approx(0.75)
    assert acc_p.asr() == pytest.approx(2 / 3)
    assert acc_p.hits == (2, 3)
    assert acc_p.subset_hits(["a"]) == (2, 2) and acc_p.subset_hits(["b"]) == (0, 1)
    acc_b = MetricAccumulator(3, victim, target)
    acc_b.update(clean_pred.view(2, 4), gt.view(2, 4))
    assert acc_b.miou() == pytest.approx(7 / 9)
    assert acc_b.asr() == pytest.approx(1 / 3)
    # logits are accepted too
    logits = torch.nn.functional.one_hot(clean_pred.clamp(max=2), 3).permute(1, 0).reshape(1, 3, 2, 4).float()
    acc_l = MetricAccumulator(3, victim, target)
    acc_l.update(logits, gt.view(1, 2, 4))
    assert torch.equal(acc_l.cm, acc_b.cm)
    s = acc_p.summary(["road", "car", "sky"])
    assert s["iou_per_class"]["car"] == pytest.approx(0.25) and s["victim_pixels"] == 3  # 1 / (3 + 2 - 1)
    # untargeted: a victim pixel is attacked when predicted as anything but its GT class
    assert victim_counts(poisoned_pred, gt, victim, None) == (2, 3)


def test_fine_grained_metrics_by_hand():
    gt = T([[0, 0, 1, 1]])
    tl = T([[0, 2, 2, 1]])
    pred = T([[0, 2, 1, 1]])
    cm_t = confusion_matrix(pred, tl, 3)
    m = fine_grained_metrics(cm_t, 1, 2)
    assert m["miou_a"] == pytest.approx(2 / 3)  # (1 + 1/2 + 1/2) / 3
    assert m["pa_a"] == pytest.approx(3 / 4)
    assert m["asr"] == pytest.approx(1 / 2)
    acc = MetricAccumulator(3)
    acc.update(pred, gt, target_label=tl)
    assert acc.fine_grained() == pytest.approx(m)
    assert acc.summary()["fine_grained"]["asr"] == pytest.approx(0.5)


# --- score vs torchvision reference and the official Cityscapes evaluator ---------------------------
def _reference_cm(preds, gts, n):
    """torchvision references/segmentation/utils.py ConfusionMatrix.update, verbatim in numpy."""
    mat = np.zeros((n, n), np.int64)
    for p, g in zip(preds, gts, strict=True):
        a, b = g.ravel().astype(np.int64), p.ravel().astype(np.int64)
        k = (a >= 0) & (a < n)
        inds = n * a[k] + b[k]
        mat += np.bincount(inds, minlength=n**2).reshape(n, n)
    return mat


def test_score_matches_torchvision_reference_and_cityscapes_evaluator(tmp_path, run_cli, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import trainId2label

    built = build_cityscapes(tmp_path / "cs", splits={"val": 3}, size=(32, 64), seed=3)
    rng = np.random.default_rng(0)
    preds, gts, pred_files, gt_files = [], [], [], []
    for i, (sid, gt) in enumerate(sorted(built.labels["val"].items())):
        pred = np.where(gt == 255, rng.integers(0, 19, gt.shape), gt).astype(np.uint8)
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.choice([0, 2, 10, 13, 11, 5], noise.sum())
        sub = tmp_path / "pred" / ("nested" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        name = f"{sid}.png" if i != 1 else f"{sid}_leftImg8bit.png"  # the image's own file name works too
        Image.fromarray(pred).save(sub / name)
        lid = np.zeros_like(pred)
        for t in range(19):
            lid[pred == t] = trainId2label[t].id
        pf = tmp_path / "pred_labelids" / f"{sid}.png"
        pf.parent.mkdir(exist_ok=True)
        Image.fromarray(lid).save(pf)
        pred_files.append(str(pf))
        gt_files.append(str(next((built.root / "gtFine" / "val").rglob(f"{sid}_gtFine_labelIds.png"))))
        preds.append(pred)
        gts.append(gt)
    out = tmp_path / "score.json"
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root, "--json", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())

    ref = _reference_cm(preds, gts, 19)
    diag = np.diag(ref).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_iou = diag / (ref.sum(0) + ref.sum(1) - diag)
    assert res["miou"] == pytest.approx(float(np.nanmean(ref_iou)), abs=1e-12)
    assert res["pixel_acc"] == pytest.approx(diag.sum() / ref.sum(), abs=1e-12)
    from poisongen.datasets import open_dataset

    names = open_dataset(built.root).meta.names  # JSON keys are sorted; train-id order comes from the layout
    for k, name in enumerate(names):
        v = res["iou_per_class"][name]
        assert (v is None) == bool(np.isnan(ref_iou[k])), name
        if v is not None:
            assert v == pytest.approx(ref_iou[k], abs=1e-12)

    if not hasattr(np, "in1d"):  # numpy 2.4 removed in1d, which the evaluator still calls; same semantics
        monkeypatch.setattr(np, "in1d", lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert),
                            raising=False)
    ev.args.evalInstLevelScore = False
    ev.args.evalPixelAccuracy = True
    ev.args.quiet = True
    ev.args.JSONOutput = False
    official = ev.evaluateImgLists(pred_files, gt_files, ev.args)
    assert abs(official["averageScoreClasses"] - res["miou"]) < 1e-9


def test_score_missing_prediction_and_victim_metrics(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"val": 2}, size=(32, 64))
    (tmp_path / "pred").mkdir()
    ids = sorted(built.labels["val"])
    gt0 = built.labels["val"][ids[0]]
    Image.fromarray(np.where(gt0 == CAR, ROAD, np.where(gt0 == 255, 0, gt0)).astype(np.uint8)).save(
        tmp_path / "pred" / f"{ids[0]}.png")
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root])
    one_line_error(r, ids[1])
    gt1 = built.labels["val"][ids[1]]
    Image.fromarray(np.where(gt1 == 255, 0, gt1).astype(np.uint8)).save(tmp_path / "pred" / f"{ids[1]}.png")
    out = tmp_path / "s.json"
    r = run_cli(app, ["score", "--pred", tmp_path / "pred", "--data", built.root, "--victim", "car",
                      "--target", "road", "--json", out])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    n0, n1 = int((gt0 == CAR).sum()), int((gt1 == CAR).sum())
    assert res["victim"] == [CAR] and res["target"] == ROAD
    assert {"miou", "pixel_acc", "iou_per_class", "asr", "pba"} <= set(res)
    assert res["asr"] == pytest.approx(n0 / (n0 + n1))
    assert res["pba"] == pytest.approx(1.0)  # off the victim pixels the predictions are perfect, but for road
    assert res["iou_per_class"]["bus"] is None


# --- models ----------------------------------------------------------------------------------------
ARCHS = [("pspnet", "resnet18"), ("deeplabv3", "resnet50"), ("fcn", "resnet50"), ("lraspp", "mobilenet_v3_large")]


@pytest.mark.parametrize(("arch", "backbone"), ARCHS)
def test_loss_decreases_on_a_fixed_batch(arch, backbone):
    torch.manual_seed(0)
    n = 4
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, :, 16:] = 1
    label[0, 8:20, 4:12] = 2
    label[1, 20:30, 18:28] = 3
    label[:, :2] = 255
    palette = torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 1.5], [1, 1, -1]])
    image = palette[label.clamp(max=3)].permute(0, 3, 1, 2) + 0.3 * torch.randn(2, 3, 32, 32)
    model = build_model(arch, n, backbone, None, aux=arch == "pspnet")  # resnet50 heads: no aux, to save time
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    from segtrain.engine import seg_loss

    losses = []
    for _ in range(25):
        out = model(image)
        assert out["out"].shape == (2, n, 32, 32)
        loss = seg_loss(out, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_pspnet_output_strides_and_registry_errors():
    from poisongen.errors import PoisonGenError

    for os_, size in ((8, 8), (16, 4), (32, 2)):
        m = build_model("pspnet", 5, "resnet18", os_).eval()
        with torch.no_grad():
            assert m.backbone(torch.zeros(1, 3, 64, 64))[1].shape[-1] == size
            assert m(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 5, 64, 64)
    with pytest.raises(PoisonGenError, match="valid archs"):
        build_model("unet", 5)
    with pytest.raises(PoisonGenError, match="valid backbones"):
        build_model("fcn", 5, "resnet18")
    with pytest.raises(PoisonGenError, match="output stride"):
        build_model("pspnet", 5, "resnet18", 4)


def test_load_backbone_weights(tmp_path):
    from torchvision.models import resnet18

    from poisongen.errors import PoisonGenError

    src = resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    m = build_model("pspnet", 5, "resnet18", 8)
    assert load_backbone_weights(m, tmp_path / "r18.pth")["loaded"] > 100
    assert torch.equal(m.backbone.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(3), "head.x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PoisonGenError, match="do not fit") as e:
        load_backbone_weights(m, tmp_path / "bad.pth")
    assert "\n" not in str(e.value)


# --- end to end ----------------------------------------------------------------------------------
COMMON = ["--arch", "pspnet", "--backbone", "resnet18", "--batch", "2", "--crop", "32x64", "--device", "cpu",
          "--workers", "0", "--log-every", "1", "--ckpt-every", "2", "--quiet"]


def make_testset(src: Path, dst: Path, victim=(CAR,), target=ROAD) -> list[str]:
    """Copy a Cityscapes tree, paint a white square on every val image, write a minimal testset manifest."""
    shutil.copytree(src, dst)
    ids = []
    for img in sorted((dst / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        a = np.array(Image.open(img).convert("RGB"))
        a[2:10, 2:10] = 255
        Image.fromarray(a).save(img)
        ids.append(img.name[: -len("_leftImg8bit.png")])
    manifest = {
        "schema_version": 1,
        "kind": "testset",
        "config": {"victim": list(victim), "target": target, "split": "val",
                   "placement": {"lower": 0, "upper": 60}},
        "samples": [{"id": i} for i in ids],
        "output_fingerprint": "0" * 64,
    }
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return ids


def test_run_resume_evaluate_end_to_end(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 3, "val": 2}, size=(32, 64))
    run = tmp_path / "runs" / "a"
    r = run_cli(app, ["run", built.root, "--iters", "4", "--out", run, "--victim", "car", "--target", "road",
                      *COMMON])
    assert r.exit_code == 0, r.stderr
    for f in ("config.json", "last.pt", "log.jsonl", "metrics.json"):
        assert (run / f).is_file(), f
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    assert all(set(x) == {"step", "loss", "lr", "img_s"} for x in log)
    assert log[0]["lr"] == pytest.approx(0.01) and log[-1]["lr"] < log[0]["lr"]
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["step"] == 4 and len(ck["class_names"]) == 19 and "optimizer" in ck
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["benign"]["cba"] <= 1 and m["victim"] == [CAR] and m["target"] == ROAD
    conf = json.loads((run / "config.json").read_text())
    assert conf["arch"] == "pspnet" and conf["victim"] == [CAR] and conf["target"] == ROAD
    # no manifest: the run hashes every file of the data, as poisongen fingerprints a tree
    hashes = {p.relative_to(built.root).as_posix(): sha256_file(p) for p in built.root.rglob("*") if p.is_file()}
    assert conf["dataset"] == {"source": "hashed", "fingerprint": fingerprint(hashes), "files": len(hashes)}

    r = run_cli(app, ["run", built.root, "--iters", "6", "--out", run, "--resume", "--no-eval", *COMMON])
    assert r.exit_code == 0, r.stderr
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5, 6]
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 6

    ids = make_testset(built.root, tmp_path / "testset")
    out = tmp_path / "eval.json"
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", built.root, "--poisoned", tmp_path / "testset",
                      "--json", out, "--device", "cpu", "--victim", "car", "--target", "road"])
    assert r.exit_code == 0, r.stderr
    res = json.loads(out.read_text())
    (p,) = res["poisoned"]
    assert p["band"] == [0.0, 60.0] and p["samples"] == len(ids) == 2
    assert p["victim"] == [CAR] and p["target"] == ROAD
    for key in ("pba", "asr", "clean_asr"):
        assert 0 <= p[key] <= 1, key
    # the test set lists every val sample: clean ASR equals the benign val false-trigger rate
    assert p["clean_asr"] == pytest.approx(res["benign"]["clean_asr"])
    assert res["step"] == 6
    # without flags, evaluate scores the attack the checkpoint's run trained for
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", built.root, "--poisoned", tmp_path / "testset",
                      "--json", out, "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    again = json.loads(out.read_text())
    assert again["victim"] == [CAR] and again["target"] == ROAD and again["poisoned"] == res["poisoned"]

    # resuming on other data (one label pixel changed) is refused
    lab_path = next(built.root.rglob("*_labelIds.png"))
    lab = np.array(Image.open(lab_path))
    lab[0, 0] = 7 if lab[0, 0] != 7 else 8
    Image.fromarray(lab).save(lab_path)
    one_line_error(run_cli(app, ["run", built.root, "--iters", "8", "--out", run, "--resume", *COMMON]),
                   "not the data the checkpoint's run trained on")

    # a checkpoint for 19 classes on a 21-class dataset
    voc = build_voc(tmp_path / "voc")
    r = run_cli(app, ["evaluate", run / "last.pt", "--data", voc.root, "--device", "cpu"])
    one_line_error(r, "19 classes")


def test_bad_inputs_are_one_line_errors(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 1}, size=(32, 64))
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli(app, ["run", tmp_path / "empty", "--iters", "1", "--out", tmp_path / "r", *COMMON]),
                   "no known dataset layout")
    bad_arch = [*COMMON]
    bad_arch[1] = "unet"
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *bad_arch]),
                   "valid archs")
    if not torch.cuda.is_available():
        args = ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON, "--device", "cuda"]
        one_line_error(run_cli(app, args), "CUDA")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "w.pth")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON,
                                 "--backbone-weights", tmp_path / "w.pth"]), "do not fit")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "1", "--out", tmp_path / "r", *COMMON,
                                 "--victim", "dragon"]), "dragon")
    one_line_error(run_cli(app, ["evaluate", tmp_path / "nothing.pt", "--data", built.root]), "no checkpoint")


def test_class_map_is_argmax_with_first_maximum_on_ties():
    from segtrain.inference import class_map

    logits = torch.randn(2, 5, 7, 9)
    logits[:, 3] = logits[:, 1]  # ties everywhere between classes 1 and 3
    logits[0, :, 0, 0] = 0.0  # an all-equal pixel: class 0
    assert torch.equal(class_map(logits), logits.argmax(1))
    assert class_map(logits)[0, 0, 0] == 0 and class_map(logits).dtype == torch.int64


def test_step_batches_are_a_function_of_seed_and_step():
    from segtrain.sampling import StepBatches, derive_seed, epoch_order

    full = list(StepBatches(5, 2, seed=7, start=0, total=7))
    assert len(full) == 7 and all(len(b) == 2 for b in full)  # 5 samples, batch 2: 2 steps per epoch
    for epoch in range(3):  # each epoch is a prefix of its own permutation (the odd sample is dropped)
        idx = [i for b in full[2 * epoch:2 * epoch + 2] for i, _ in b]
        assert idx == epoch_order(5, 7, epoch)[:4] and len(set(idx)) == 4
    assert epoch_order(5, 7, 0) != epoch_order(5, 7, 1) or epoch_order(5, 7, 1) != epoch_order(5, 7, 2)
    assert list(StepBatches(5, 2, seed=7, start=3, total=7)) == full[3:]  # resume = the tail, nothing replayed
    assert full[0][0][1] == derive_seed(7, 1, 0, full[0][0][0])  # sample seed from (seed, epoch, index)
    assert full != list(StepBatches(5, 2, seed=8, start=0, total=7))
    assert StepBatches(5, 2, 7, 0, 7).position(5) == {"epoch": 2, "batch": 1, "per_epoch": 2, "train_samples": 5,
                                                       "seed": 7}
    from segtrain.errors import SegTrainError

    with pytest.raises(SegTrainError, match="batch 8 does not fit 3"):  # said, not clamped silently
        StepBatches(3, 8, 0, 0, 2)


def test_seeded_sample_leaves_the_process_rngs_alone():
    import random

    from segtrain.sampling import seeded

    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    with seeded(42):
        a = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    with seeded(42):
        b = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]  # noqa: NPY002


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_resume_replays_the_uninterrupted_run_bit_for_bit(tmp_path, run_cli):
    """6 iterations straight == stopped after 3 + --resume to 6 == the same with 2 workers: identical weights
    and optimizer state on CPU, and the same log (5 training samples, batch 2: the run crosses 2 epochs)."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 5, "val": 1}, size=(32, 64))
    args = [built.root, "--iters", "6", "--no-eval", "--seed", "3", *COMMON]
    runs = {name: tmp_path / name for name in ("straight", "resumed", "workers")}
    r = run_cli(app, ["run", *args, "--out", runs["straight"]])
    assert r.exit_code == 0, r.stderr
    assert "step" not in r.stderr and "img/s" not in r.stderr  # --quiet: no progress bar, no log lines
    r = run_cli(app, ["run", *args, "--out", runs["resumed"], "--stop-after", "3"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(runs["resumed"] / "last.pt", weights_only=False)["step"] == 3
    assert not (runs["resumed"] / "metrics.json").exists()
    with (runs["resumed"] / "log.jsonl").open("a") as f:  # as if it had died after logging step 4, unsaved
        f.write(json.dumps({"step": 4, "loss": 9.0, "lr": 0.0, "img_s": 1.0}) + "\n")
    r = run_cli(app, ["run", *args, "--out", runs["resumed"], "--resume"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(app, ["run", *[a for a in args if a != "--quiet"], "--workers", "2", "--out", runs["workers"]])
    assert r.exit_code == 0, r.stderr
    assert "step 6/6" in r.stderr and "img/s" in r.stderr  # progress shown without --quiet

    ref = torch.load(runs["straight"] / "last.pt", weights_only=False)
    for name in ("resumed", "workers"):
        ck = torch.load(runs[name] / "last.pt", weights_only=False)
        assert ck["step"] == 6 and ck["sampler"]["epoch"] == 3 and ck["sampler"]["batch"] == 0
        diff = [k for k, v in ref["model"].items() if not torch.equal(v, ck["model"][k])]
        assert not diff, (name, diff[:5])
        for k, st in ref["optimizer"]["state"].items():
            assert torch.equal(st["momentum_buffer"], ck["optimizer"]["state"][k]["momentum_buffer"]), (name, k)
        strip = [{k: v for k, v in x.items() if k != "img_s"} for x in _log(runs[name])]
        assert strip == [{k: v for k, v in x.items() if k != "img_s"} for x in _log(runs["straight"])], name
    assert [x["step"] for x in _log(runs["resumed"])] == [1, 2, 3, 4, 5, 6]


def test_eval_every_writes_the_curve_and_leaves_the_run_unchanged(tmp_path, run_cli):
    """--eval-every evaluates during training (curve.jsonl) without changing a single weight; a fresh
    run in a used folder starts its logs anew; the last curve point is the final metrics."""
    built = build_cityscapes(tmp_path / "cs", splits={"train": 4, "val": 2}, size=(32, 64))
    ts = tmp_path / "testset"
    make_testset(built.root, ts)
    args = [built.root, "--iters", "4", "--seed", "1", "--victim", "car", "--target", "road",
            "--eval-poisoned", ts, *COMMON]
    plain, curved = tmp_path / "plain", tmp_path / "curved"
    assert run_cli(app, ["run", *args, "--out", plain]).exit_code == 0
    for _ in range(2):  # the second run in the same folder must not append to the first one's logs
        r = run_cli(app, ["run", *args, "--out", curved, "--eval-every", "3"])
        assert r.exit_code == 0, r.stderr
    a, b = (torch.load(d / "last.pt", weights_only=False)["model"] for d in (plain, curved))
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert [x["step"] for x in _log(curved)] == [1, 2, 3, 4]
    curve = [json.loads(x) for x in (curved / "curve.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [3, 4]  # every 3 steps and the last one
    assert curve[0]["train_minutes"] <= curve[1]["train_minutes"]
    m = json.loads((curved / "metrics.json").read_text())
    (p,) = m["poisoned"]
    assert curve[1]["cba"] == m["benign"]["cba"] and curve[1]["sets"][0]["asr"] == p["asr"]
    ref = json.loads((plain / "metrics.json").read_text())
    assert {k: v for k, v in m.items() if k != "checkpoint"} == {k: v for k, v in ref.items() if k != "checkpoint"}
    one_line_error(run_cli(app, ["run", *args, "--out", tmp_path / "x", "--eval-every", "0"]), "--eval-every 0")


def test_resume_and_backbone_errors(tmp_path, run_cli):
    from segtrain.models import resolve

    assert resolve("lraspp", "mobilenet_v3", None) == ("lraspp", "mobilenet_v3_large", 16)
    assert resolve("deeplabv3", "MobileNet_V3", None)[1] == "mobilenet_v3_large"
    built = build_cityscapes(tmp_path / "cs", splits={"train": 2, "val": 1}, size=(32, 64))
    run = tmp_path / "r"
    run.mkdir()
    torch.save({"model": {}, "step": 1, "num_classes": 21, "config": {"arch": "pspnet"}}, run / "last.pt")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--resume", *COMMON]),
                   "21 classes")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", tmp_path / "none", "--resume",
                                 *COMMON]), "no checkpoint")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, "--stop-after", "0", *COMMON]),
                   "--stop-after")
    one_line_error(run_cli(app, ["run", built.root, "--iters", "2", "--out", run, *COMMON, "--arch", "lraspp",
                                 "--backbone", "resnet50"]), "valid backbones")
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli(app, ["score", "--pred", tmp_path / "empty", "--data", tmp_path / "empty"]),
                   "no known dataset layout")
    # --epochs: 2 training samples at batch 2 are one step per epoch
    r = run_cli(app, ["run", built.root, "--epochs", "2", "--out", tmp_path / "ep", "--no-eval", *COMMON])
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "ep" / "last.pt", weights_only=False)["step"] == 2
    assert [x["step"] for x in _log(tmp_path / "ep")] == [1, 2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_run(tmp_path, run_cli):
    built = build_cityscapes(tmp_path / "cs", splits={"train": 3, "val": 2}, size=(64, 128))
    args = [a if a != "cpu" else "cuda" for a in COMMON]
    r = run_cli(app, ["run", built.root, "--iters", "3", "--out", tmp_path / "run", "--amp", "--channels-last",
                      *args])
    assert r.exit_code == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= m["benign"]["cba"] <= 1
