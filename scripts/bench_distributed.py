#!/usr/bin/env python
"""Training img/s of ``segtrain run`` in one process and on ``--nproc N`` processes (gloo on the CPU, nccl
on CUDA) over the same synthetic data, model and global batch; writes JSON, prints a line per figure.

Each run logs every ``--log-every`` steps; its figure is the mean of the logged img/s after the first record
(warm-up: process start, allocator). Configurations alternate (A B C, C B A, ...) ``--repeat`` times
because the machine may be shared; the JSON keeps every run and the load average around it.

    .venv/bin/python scripts/bench_distributed.py --nproc 2 --size 64x128 --batch 4 --iters 24 --out bench/ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisongen.datasets.synthetic import generate  # noqa: E402


def one_run(args, data: Path, nproc: int | None, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "segtrain", "run", str(data), "--out", str(out), "--arch", args.arch,
               "--backbone", args.backbone, "--iters", str(args.iters), "--batch", str(args.batch), "--crop",
               args.crop or args.size, "--device", args.device, "--workers", str(args.workers), "--log-every",
               str(args.log_every), "--no-eval", "--quiet"] + (["--nproc", str(nproc)] if nproc else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        before = [round(v, 2) for v in os.getloadavg()]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if r.returncode:
            raise SystemExit(f"run failed ({' '.join(cmd)}): {r.stderr.strip()[-500:]}")
        recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steady = [x["img_s"] for x in recs[1:]] or [recs[-1]["img_s"]]
    return {"img_s": round(statistics.mean(steady), 3), "logged": [x["img_s"] for x in recs],
            "load_before": before, "load_after": [round(v, 2) for v in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--arch", default="pspnet")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", default="64x128", help="synthetic image size HxW")
    ap.add_argument("--crop", default=None, help="training crop HxW (default: --size)")
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4, help="the global batch")
    ap.add_argument("--iters", type=int, default=24)
    ap.add_argument("--log-every", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="OMP threads of the one-process run (the N-process runs get threads // N each)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "ddp.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    data = args.work / f"synthetic_{args.train}_4_{h}x{w}"
    if not data.is_dir():
        generate(data, train=args.train, val=4, size=(h, w), seed=0, jobs=1)
    per = max(1, args.threads // args.nproc)
    configs = {f"1 process, {args.threads} threads": (None, args.threads),
               "1 process, 1 thread": (None, 1),
               f"--nproc {args.nproc}, {per} thread(s) each": (args.nproc, per)}
    res: dict = {k: [] for k in configs}
    names = list(configs)
    for r in range(args.repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            res[name].append(one_run(args, data, *configs[name]))
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "config": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
           "runs": res, "best_img_s": {k: max(x["img_s"] for x in v) for k, v in res.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    for k, v in out["best_img_s"].items():
        print(f"{k:32s} best {v:7.2f} img/s  runs {[x['img_s'] for x in res[k]]}")
    print(f"JSON in {args.out}")


if __name__ == "__main__":
    main()
