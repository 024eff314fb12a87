"""The CUDA paths of the training loop: AMP (bf16, and fp16 with a GradScaler), channels_last, pinned
memory, cudnn.benchmark, and nccl on 2 GPUs. Marked ``cuda`` and skipped without a CUDA device
(scripts/gpu_check.sh runs them with ``pytest -m cuda``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from poisongen.datasets import open_dataset
from segtrain import engine
from segtrain.config import TrainConfig
from segtrain.data import SegDataset
from segtrain.engine import Hooks, fit
from segtrain.models import build_model
from segtrain.transforms import train_transform

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = Path(__file__).resolve().parents[2]


def _fit(root, monkeypatch=None, **kw):
    layout = open_dataset(root)
    cfg = TrainConfig(**{"iters": 3, "batch": 4, "crop": (64, 128), "device": "cuda", "workers": 0, "seed": 1,
                         "log_every": 1, "ckpt_every": 100, "arch": "pspnet", "backbone": "resnet18", **kw})
    data = SegDataset(layout, layout.train_split, train_transform(cfg.crop, cfg.scale))
    torch.manual_seed(0)
    model = build_model(cfg.arch, layout.meta.num_classes, cfg.backbone, cfg.output_stride, cfg.aux)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logged, states = [], []
    res = fit(model, data, cfg, Hooks(on_step=lambda s, t, r: logged.append(r), on_checkpoint=states.append))
    return res, before, logged, states


def _changed(model, before) -> bool:
    return any(not torch.equal(v.cpu(), before[k]) for k, v in model.state_dict().items() if v.is_floating_point())


def test_amp_bf16_step_trains(tiny_synth):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    res, before, logged, states = _fit(tiny_synth, amp=True)
    assert res.device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)
    assert _changed(res.model, before)
    assert states[-1]["scaler"] is None  # bf16 needs no loss scaling


def test_amp_fp16_step_uses_the_grad_scaler(tiny_synth, monkeypatch):
    monkeypatch.setattr(engine, "amp_dtype", lambda: torch.float16)
    res, before, logged, states = _fit(tiny_synth, amp=True)
    assert _changed(res.model, before)
    assert states[-1]["scaler"] is not None and states[-1]["scaler"]["scale"] > 0


def test_channels_last_and_cudnn_benchmark(tiny_synth, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    res, before, _, _ = _fit(tiny_synth, amp=True, channels_last=True)
    w = next(p for p in res.model.parameters() if p.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark is True
    assert _changed(res.model, before)


def test_batches_come_in_pinned_memory(tiny_synth, monkeypatch):
    seen = []

    class Recording(torch.utils.data.DataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                seen.append(batch[0].is_pinned())
                yield batch

    monkeypatch.setattr(engine, "DataLoader", Recording)
    _fit(tiny_synth)
    assert seen and all(seen)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_two_process_run(tiny_synth, tmp_path):
    run = tmp_path / "r"
    args = ["run", tiny_synth, "--iters", "2", "--out", run, "--arch", "pspnet", "--backbone", "resnet18",
            "--batch", "4", "--crop", "64x128", "--device", "cuda", "--workers", "0", "--quiet", "--sync-bn",
            "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "segtrain", *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    one = tmp_path / "one.json"
    r = subprocess.run([sys.executable, "-m", "segtrain", "evaluate", str(run), "--data", str(tiny_synth),
                        "--device", "cuda", "--json", str(one)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    # the reduction is exact (the CPU test shows it bit for bit); on the GPU the two processes' cuDNN
    # kernels may differ in the last bits, so the scores are compared to a tolerance
    a, b = (json.loads(f.read_text())["benign"] for f in (run / "metrics.json", one))
    assert a["pixels"] == b["pixels"]
    assert a["cba"] == pytest.approx(b["cba"], abs=1e-3)
