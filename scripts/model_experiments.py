#!/usr/bin/env python
"""Results of issue #13 on the quickstart's data and budget (docs/models.md, docs/attacks.md).

    python scripts/model_experiments.py speed                 # SegFormer-b0 vs PSPNet-18 training img/s
    python scripts/model_experiments.py segformer             # NNI 10 %: SegFormer-b0 beside PSPNet-18
    python scripts/model_experiments.py trigger               # optimized vs built-in trigger at 1 % and 3 %
    python scripts/model_experiments.py pretrained            # ImageNet MobileNetV2 encoder vs scratch

Every experiment reuses the quickstart's data (1200 train + 100 val synthetic scenes at 96x192, NNI car -> road,
18 px trigger, Poisoned Tests near d < 12 px and far d >= 17 px) and training recipe (batch 8, crop 96x192,
AdamW 1e-3, --iters 1200, evaluated every 300). It is resumable: a step whose output exists is skipped, and
a training run that was stopped continues from its last.pt (--resume). Each experiment writes
ROOT/<experiment>.json (its settings and one row per run) and logs every command to ROOT/log.txt.
--train/--val/--iters/--size shrink it for a test (tests/cli/test_model_experiments.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


class Exp:
    def __init__(self, args):
        self.a = args
        self.root = Path(args.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / f"synthetic-{args.size}"
        h, w = (int(v) for v in args.size.split("x"))
        f = h / 96  # the quickstart's trigger and bands are for 96x192
        self.trigger = max(3, round(18 * f))
        self.near, self.far, self.u = 12 * f, 17 * f, 11.25 * f

    def sh(self, *cmd) -> None:
        cmd = [str(c) for c in cmd]
        with (self.root / "log.txt").open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} $ {' '.join(cmd)}\n")
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)

    def pg(self, *args) -> None:
        self.sh(PY, "-m", "poisongen.cli", *args)

    def st(self, *args) -> None:
        self.sh(PY, "-m", "segtrain.cli", *args)

    def synth(self) -> Path:
        if not (self.data / "synthetic.json").is_file():
            self.pg("synth", "--out", self.data, "--train", self.a.train, "--val", self.a.val, "--size", self.a.size,
                    "--seed", 0, "--overwrite")
        return self.data

    def poison(self, name: str, rate: float, trigger: str = "builtin") -> Path:
        out = self.root / name
        if not (out / "manifest.json").is_file():
            self.pg("nni", "--src", self.synth(), "--rate", rate, "--trigger", trigger, "--trigger-size",
                    self.trigger, "--out", out, "--overwrite", "-q")
        return out

    def testsets(self, trigger: str = "builtin", tag: str = "") -> list[Path]:
        near, far = self.root / f"test_near{tag}", self.root / f"test_far{tag}"
        if not (near / "manifest.json").is_file():
            self.pg("testset", "--src", self.synth(), "--strategy", "nearest", "--upper", self.near, "--trigger",
                    trigger, "--trigger-size", self.trigger, "--out", near, "--overwrite", "-q")
        if not (far / "manifest.json").is_file():
            self.pg("testset", "--src", self.synth(), "--strategy", "random", "--lower", self.far, "--trigger",
                    trigger, "--trigger-size", self.trigger, "--out", far, "--overwrite", "-q")
        return [near, far]

    def train(self, name: str, data: Path, arch: str, backbone: str, tests: list[Path], *extra) -> dict:
        """segtrain run with the quickstart's recipe; metrics.json of the run (resumed if stopped)."""
        out = self.root / "runs" / name
        if not (out / "metrics.json").is_file():
            resume = ["--resume"] if (out / "last.pt").is_file() else []
            evals = [x for t in tests for x in ("--eval-poisoned", t)]
            strides = ["--output-stride", "16"] if arch == "pspnet" else []
            self.st("run", data, "--arch", arch, "--backbone", backbone, *strides, "--crop", self.a.size, "--scale",
                    "1,1", "--optimizer", "adamw", "--lr", "0.001", "--batch", self.a.batch,
                    "--iters", self.a.iters, "--workers", 1, "--log-every", 100, "--ckpt-every", 100,
                    "--eval-every", max(1, self.a.iters // 4), *evals, "--out", out, "--quiet", "--device",
                    self.a.device, *resume, *extra)
        return summary(out)

    def write(self, name: str, obj: dict) -> Path:
        path = self.root / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"settings": vars(self.a), **obj}, indent=1) + "\n")
        tmp.replace(path)
        print(json.dumps(obj, indent=1))
        return path


def summary(run: Path) -> dict:
    """CBA, ASR near / far, PBA, clean ASR of a finished run, its training minutes and learning curve."""
    m = json.loads((run / "metrics.json").read_text())
    cpath = run / "curve.jsonl"
    curve = [json.loads(x) for x in cpath.read_text().splitlines()] if cpath.is_file() else []
    sets = {Path(p["testset"]).name.split("_")[1] if "_" in Path(p["testset"]).name else p["testset"]: p
            for p in m["poisoned"]}
    row = {"run": str(run), "cba": m["benign"]["cba"], "clean_asr": m["benign"].get("clean_asr"),
           "train_minutes": curve[-1]["train_minutes"] if curve else None,
           "curve": [{"step": c["step"], "minutes": c["train_minutes"], "cba": c["cba"],
                      "asr": [s["asr"] for s in c["sets"]]} for c in curve]}
    for key, p in sets.items():
        row[f"asr_{key}"] = p["asr"]
        row[f"pba_{key}"] = p["pba"]
    return row


def speed(e: Exp) -> None:
    """Training throughput (forward + backward + AdamW step) at the quickstart's crop and batch."""
    import torch

    from segtrain.engine import seg_loss
    from segtrain.models import build_model

    h, w = (int(v) for v in e.a.size.split("x"))
    rows = []
    for arch, bb, os_ in (("segformer", "mit_b0", None), ("pspnet", "resnet18", 16)):
        torch.manual_seed(0)
        model = build_model(arch, 19, bb, os_, aux=True).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        b = e.a.batch
        x, y = torch.randn(b, 3, h, w), torch.randint(0, 19, (b, h, w))
        times = []
        for i in range(e.a.speed_steps + 2):
            t = time.perf_counter()
            loss = seg_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:  # warm-up steps excluded
                times.append(time.perf_counter() - t)
        img_s = b / (sum(times) / len(times))
        rows.append({"arch": arch, "backbone": bb, "batch": b, "size": e.a.size, "img_s": round(img_s, 2),
                     "threads": torch.get_num_threads(), "quickstart_minutes": round(1200 * 8 / img_s / 60, 1)})
    e.write("speed", {"rows": rows})


def segformer(e: Exp) -> None:
    data, tests = e.poison("nni", 0.1), e.testsets()
    rows = {f"{a}/{b}": e.train(f"{a}_{b}_nni", data, a, b, tests) for a, b in (("pspnet", "resnet18"),
                                                                                 ("segformer", "mit_b0"))}
    e.write("segformer", {"rows": rows})


def trigger(e: Exp) -> None:
    """Surrogate: a clean PSPNet-18 trained like the quickstart's; the trigger optimised on it with NNI's
    placement (nearest, U); then NNI at each rate with the built-in and the optimised trigger (same seeds,
    same budget), each evaluated on Poisoned Tests painted with its own trigger."""
    surrogate = e.root / "runs" / "surrogate_clean"
    e.train("surrogate_clean", e.synth(), "pspnet", "resnet18", [], "--victim", "car", "--target", "road")
    opt = e.root / "optimized_trigger.png"
    if not opt.is_file():
        e.st("optimize-trigger", "--data", e.synth(), "--ckpt", surrogate / "last.pt", "--size",
             f"{e.trigger}x{e.trigger}", "--victim", "car", "--target", "road", "--strategy", "nearest", "--upper",
             e.u, "--steps", e.a.trigger_steps, "--seed", 0, "--out", opt, "--device", e.a.device)
    rows = {}
    triggers = (("builtin", "builtin"), ("optimized", str(opt)))
    tests = {tag: e.testsets(trig, f"_{tag}") for tag, trig in triggers}
    for rate in e.a.rates:  # both triggers at a rate before the next rate: a stopped run leaves whole pairs
        for tag, trig in triggers:
            data = e.poison(f"nni_{tag}_{rate:g}", rate, trig)
            rows[f"{tag}@{rate:g}"] = e.train(f"pspnet_{tag}_{rate:g}", data, "pspnet", "resnet18", tests[tag])
    e.write("trigger", {"trigger": str(opt), "trigger_json": json.loads(opt.with_suffix(".json").read_text()),
                        "rows": rows})


def pretrained(e: Exp) -> None:
    """DeepLabV3+ on MobileNetV2 from scratch vs from torchvision's ImageNet weights, NNI 10 %: minutes
    until the curve reaches CBA and ASR near thresholds (as well as the final figures)."""
    weights = Path(e.a.weights)
    if not weights.is_file():
        e.sh("bash", REPO / "scripts" / "fetch_weights.sh")
    data, tests = e.poison("nni", 0.1), e.testsets()
    rows = {}
    for tag, extra in (("scratch", []), ("imagenet", ["--backbone-weights", weights])):
        row = e.train(f"deeplabv3plus_mobilenet_v2_{tag}", data, "deeplabv3plus", "mobilenet_v2", tests, *extra)
        reached = [c for c in row["curve"] if c["cba"] >= e.a.cba_goal and c["asr"] and c["asr"][0] >= e.a.asr_goal]
        row["minutes_to_goal"] = reached[0]["minutes"] if reached else None
        rows[tag] = row
    e.write("pretrained", {"goal": {"cba": e.a.cba_goal, "asr_near": e.a.asr_goal}, "rows": rows})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=("speed", "segformer", "trigger", "pretrained"))
    p.add_argument("--root", default=str(REPO / "runs" / "models"))
    p.add_argument("--train", type=int, default=1200)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", default="96x192")
    p.add_argument("--iters", type=int, default=1200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03])
    p.add_argument("--trigger-steps", type=int, default=300)
    p.add_argument("--speed-steps", type=int, default=10)
    p.add_argument("--weights", default=str(REPO / ".cache" / "weights" / "mobilenet_v2-b0353104.pth"))
    p.add_argument("--cba-goal", type=float, default=0.40)
    p.add_argument("--asr-goal", type=float, default=0.80)
    a = p.parse_args(argv)
    {"speed": speed, "segformer": segformer, "trigger": trigger, "pretrained": pretrained}[a.experiment](Exp(a))


if __name__ == "__main__":
    main()
