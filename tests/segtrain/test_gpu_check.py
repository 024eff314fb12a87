"""scripts/gpu_check.sh dry-run on the CPU (GPU_CHECK_DRY=1): the same parts as on the device - the
cuda-marked tests, the four benchmark configurations, the summary JSON - at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_summary(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["dry_run"] is True and out["ok"] is True
    names = ["cuda_tests"] + [f"bench_{a}_{m}" for a in ("deeplabv3", "pspnet") for m in ("fp32", "amp_cl")]
    assert sorted(out["parts"]) == sorted(names)
    assert all(p["exit_code"] == 0 for p in out["parts"].values())
    for arch in ("deeplabv3", "pspnet"):
        row = out["bench"][arch]
        for mode in ("fp32", "amp_cl"):
            assert row[mode]["segtrain_img_s"] > 0 and row[mode]["plain_img_s"] > 0
        assert row["amp_cl_vs_fp32"] > 0
