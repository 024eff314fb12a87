"""segtrain on several processes, on the CPU with gloo: the shares of a step's batch, distributed
evaluation equal to one process (exactly), a 2-process training step equal to one process over the same
global batch, ``segtrain run --nproc 2`` end to end, and a failed or killed rank ending the job in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import typer
from torch import nn

from poisongen.datasets import open_dataset
from segtrain import distributed
from segtrain.cli import app
from segtrain.cli_dist import given_args
from segtrain.config import TrainConfig
from segtrain.data import SegDataset
from segtrain.engine import Hooks, fit
from segtrain.errors import SegTrainError
from segtrain.evaluate import ModelPredictor, score_set
from segtrain.inference import evaluate
from segtrain.sampling import StepBatches, epoch_order
from segtrain.transforms import train_transform

CAR, ROAD = 13, 0
ROOT = Path(__file__).resolve().parents[2]


# --- helpers: 2 gloo processes on loopback ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args) -> None:
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


class TinySeg(nn.Module):
    """No BatchNorm, no dropout: a step on a split batch is exactly the step on the whole batch."""

    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 3, padding=1)
        self.aux = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return {"out": self.conv(x), "aux": self.aux(x)}


def tiny_model(k: int) -> TinySeg:
    torch.manual_seed(0)
    return TinySeg(k)


# --- the shares of a step ---------------------------------------------------------------------------
def test_shares_of_a_step_are_the_global_batch():
    one = list(StepBatches(24, 4, 7, 0, 9))
    shares = [list(StepBatches(24, 4, 7, 0, 9, rank=r, world=2)) for r in range(2)]
    for s, batch in enumerate(one):
        assert sorted(shares[0][s] + shares[1][s]) == sorted(batch)
        assert shares[0][s] == batch[0::2] and shares[1][s] == batch[1::2]


@pytest.mark.parametrize(("batch", "nproc"), [(3, 2), (2, 2), (10, 4)])
def test_batch_that_does_not_split_is_one_line(batch, nproc):
    with pytest.raises(SegTrainError, match=rf"^--batch {batch} does not split over {nproc} processes"):
        distributed.check_batch(batch, nproc)
    distributed.check_batch(batch, 1)  # one process: any batch


def test_given_args_rebuild_the_command_line():
    cmd = typer.main.get_command(app).commands["run"]
    args = ["data", "--iters", "3", "--no-aux", "--eval-poisoned", "a", "--eval-poisoned", "b", "--quiet",
            "--nproc", "2", "--out", "x"]
    with cmd.make_context("run", list(args)) as ctx:
        rebuilt = given_args(ctx)
    with cmd.make_context("run", list(rebuilt)) as ctx2:
        again = ctx2.params
    assert "--nproc" not in rebuilt
    with cmd.make_context("run", list(args)) as ctx:
        want = {k: v for k, v in ctx.params.items() if k != "nproc"}
    assert {k: v for k, v in again.items() if k != "nproc"} == want
    assert again["nproc"] is None


# --- distributed evaluation equals one process ------------------------------------------------------
def _counts(acc) -> dict:
    return {"cm": acc.cm.clone(), "cm_nv": acc.cm_nv.clone(), "hits": acc.hits, "per_sample": dict(acc.per_sample)}


def _eval_worker(rank: int, root: str, out: str) -> None:
    layout = open_dataset(root)
    ds = SegDataset(layout, layout.val_split)
    model = tiny_model(layout.meta.num_classes)
    acc = evaluate(model, ds, "cpu", layout.meta.num_classes, victim=(CAR,), target=ROAD)
    acc2 = score_set(ModelPredictor(model, "cpu"), ds, "benign", (CAR,), ROAD)
    torch.save({"evaluate": _counts(acc), "score_set": _counts(acc2)}, Path(out) / f"rank{rank}.pt")


def test_distributed_evaluation_equals_one_process(tiny_synth, tmp_path):
    spawn(_eval_worker, 2, str(tiny_synth), str(tmp_path))
    layout = open_dataset(tiny_synth)
    ds = SegDataset(layout, layout.val_split)
    one = _counts(evaluate(tiny_model(layout.meta.num_classes), ds, "cpu", layout.meta.num_classes,
                           victim=(CAR,), target=ROAD))
    assert one["cm"].sum() > 0 and len(one["per_sample"]) == len(ds)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for way in ("evaluate", "score_set"):
            assert torch.equal(got[way]["cm"], one["cm"]), (r, way)
            assert torch.equal(got[way]["cm_nv"], one["cm_nv"]), (r, way)
            assert got[way]["hits"] == one["hits"]
            assert got[way]["per_sample"] == one["per_sample"]


# --- a training step on 2 processes equals one process ---------------------------------------------
def _train_cfg() -> TrainConfig:
    # scaled below the crop, images are padded with ignore pixels: the two shares count different valid pixels
    return TrainConfig(iters=3, batch=4, crop=(32, 64), scale=(0.25, 0.5), lr=0.05, device="cpu", workers=0,
                       seed=5, log_every=1, ckpt_every=100)


def _fit(root: str) -> tuple[nn.Module, list]:
    layout = open_dataset(root)
    cfg = _train_cfg()
    data = SegDataset(layout, layout.train_split, train_transform(cfg.crop, cfg.scale))
    model = tiny_model(layout.meta.num_classes)
    logged: list = []
    fit(model, data, cfg, Hooks(on_step=lambda s, t, rec: logged.append(rec)))
    return model, logged


def _fit_worker(rank: int, root: str, out: str) -> None:
    model, logged = _fit(root)
    torch.save({"state": model.state_dict(), "logged": logged}, Path(out) / f"rank{rank}.pt")


def test_two_process_steps_equal_one_process(tiny_synth, tmp_path):
    spawn(_fit_worker, 2, str(tiny_synth), str(tmp_path))
    model, logged = _fit(str(tiny_synth))
    init = tiny_model(model.conv.out_channels).state_dict()
    assert not torch.allclose(model.conv.weight, init["conv.weight"])  # the steps did something
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for k, v in model.state_dict().items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"rank {r} {k}")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt")["logged"] for r in range(2))
    assert rank1 == []  # on_step runs on rank 0 only
    assert [x["step"] for x in rank0] == [1, 2, 3]
    for a, b in zip(rank0, logged, strict=True):  # the logged loss is the global batch's mean loss
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


# --- segtrain run --nproc 2 ------------------------------------------------------------------------
RUN = ["--arch", "pspnet", "--backbone", "resnet18", "--batch", "4", "--crop", "32x64", "--device", "cpu",
       "--workers", "0", "--log-every", "1", "--quiet", "--victim", "car", "--target", "road"]


def segtrain(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "segtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def test_run_nproc_batch_not_divisible_is_one_line(tiny_synth, tmp_path, run_cli):
    r = run_cli(app, ["run", tiny_synth, "--iters", "2", "--out", tmp_path / "r", *RUN, "--batch", "6",
                      "--nproc", "4"])
    assert r.exit_code == 2
    assert error_lines(r.stderr) == [
        "error: --batch 6 does not split over 4 processes into equal shares of at least 2 samples; use a multiple "
        "of 4 that is at least 8 (e.g. --batch 8)"]
    assert not (tmp_path / "r").exists()


def test_run_nproc_sync_bn_on_cpu_is_one_line(tiny_synth, tmp_path, run_cli):
    r = run_cli(app, ["run", tiny_synth, "--iters", "2", "--out", tmp_path / "r", *RUN, "--nproc", "2", "--sync-bn"])
    assert r.exit_code == 2
    assert error_lines(r.stderr) == [
        "error: --sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel); leave it off on the CPU, where each "
        "process then normalises with its own share of the batch"]
    assert not (tmp_path / "r").exists()


def test_run_nproc_2_trains_and_evaluates_like_one_process(tiny_synth, tmp_path):
    run = tmp_path / "r"
    r = segtrain("run", tiny_synth, "--iters", "2", "--out", run, *RUN, "--nproc", "2")
    assert r.returncode == 0, r.stderr
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2]  # rank 0 alone writes
    dist_metrics = json.loads((run / "metrics.json").read_text())
    r = segtrain("evaluate", run, "--data", tiny_synth, "--device", "cpu", "--json", tmp_path / "one.json")
    assert r.returncode == 0, r.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    assert dist_metrics["benign"] == one["benign"]  # the all-reduced confusion matrix: exactly one process's
    assert not list(run.glob(".*tmp*"))


def _corrupt_sample_of_rank(src: Path, dst: Path, rank: int, seed: int = 0) -> str:
    """Copy the dataset and overwrite the training image that ``rank`` (of 2) loads first at step 0."""
    shutil.copytree(src, dst)
    layout = open_dataset(dst)
    samples = layout.samples(layout.train_split)
    i = epoch_order(len(samples), seed, 0)[rank]  # position ``rank`` of the first global batch
    (layout.root / samples[i].image).write_bytes(b"not a png")
    return samples[i].id


def test_failed_rank_ends_all_ranks_with_one_line(tiny_synth, tmp_path):
    data = tmp_path / "data"
    _corrupt_sample_of_rank(tiny_synth, data, rank=1)
    run = tmp_path / "r"
    t = time.monotonic()
    r = segtrain("run", data, "--iters", "3", "--out", run, *RUN, "--nproc", "2", timeout=240)
    assert r.returncode != 0
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: rank 1 of 2 failed: "), lines[0]
    assert time.monotonic() - t < 200  # rank 0 was stopped, not left waiting for its peer
    assert not (run / "last.pt").exists() and not (run / "metrics.json").exists()
    assert not list(run.glob(".*tmp*"))


def test_plain_torchrun_failed_rank_prints_one_line_naming_it(tiny_synth, tmp_path):
    data = tmp_path / "data"
    _corrupt_sample_of_rank(tiny_synth, data, rank=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "segtrain",
           "run", str(data), "--iters", "3", "--out", str(tmp_path / "r"), *RUN]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith("error: rank 1: "), r.stderr  # torchrun adds its own summary


def _rank_pid(parent: int, rank: int) -> int | None:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (p / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(p.name)
    return None


def test_killed_rank_ends_all_ranks_with_one_line(tiny_synth, tmp_path):
    run = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["run", tiny_synth, "--iters", "100000", "--out", run, *RUN, "--nproc", "2", "--no-eval",
            "--ckpt-every", "100000"]
    proc = subprocess.Popen([sys.executable, "-m", "segtrain", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline, log = time.monotonic() + 180, run / "log.jsonl"
        while time.monotonic() < deadline and not (log.is_file() and log.stat().st_size):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    lines = error_lines(err)
    assert lines == ["error: rank 1 of 2 was killed by SIGKILL; the other ranks were stopped"], err
    assert not (run / "metrics.json").exists()


class _Failure:
    def __init__(self, exitcode: int, timestamp: int = 100):
        self.exitcode, self.timestamp = exitcode, timestamp


def test_root_cause_prefers_the_killed_rank_then_the_earliest_record(tmp_path):
    stopped, killed = _Failure(-signal.SIGTERM), _Failure(-signal.SIGKILL)
    assert distributed.root_cause({0: stopped, 1: killed}, tmp_path, 2) == (
        "rank 1 of 2 was killed by SIGKILL; the other ranks were stopped", 1)
    for r, t, cause, code in ((0, 20.0, "RuntimeError: Connection closed by peer", 1), (1, 10.0, "bad image", 2)):
        (tmp_path / f"rank-{r}.json").write_text(json.dumps({"rank": r, "cause": cause, "exit_code": code, "time": t}))
    assert distributed.root_cause({0: _Failure(1), 1: _Failure(2)}, tmp_path, 2) == (
        "rank 1 of 2 failed: bad image", 2)
    (tmp_path / "rank-0.json").unlink()  # rank 0 stopped by torchrun before it recorded anything
    assert distributed.root_cause({0: stopped, 1: _Failure(2)}, tmp_path, 2) == ("rank 1 of 2 failed: bad image", 2)
    (tmp_path / "rank-1.json").unlink()
    assert distributed.root_cause({0: stopped}, tmp_path, 2) == (
        "rank 0 of 2 was killed by SIGTERM; the other ranks were stopped", 1)
