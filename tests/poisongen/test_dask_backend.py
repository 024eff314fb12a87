"""--backend dask: poisongen's parallel maps on a dask.distributed cluster (a LocalCluster of 2 worker
processes on loopback here). Same bytes as loky with one job; a worker that dies mid-run fails the run
cleanly (no --out, no temp dir, one line) and a rerun succeeds; a scheduler that cannot be reached and a
worker that cannot see the staging folder are one line each, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from builders import one_line_error
from conftest import tree_hashes

from poisongen import parallel, pipeline
from poisongen.attacks import resolve
from poisongen.cli import app
from poisongen.datasets.cityscapes import Cityscapes
from poisongen.errors import PoisonGenError

distributed = pytest.importorskip("distributed")

TRIG = ["--trigger-size", "5"]


@pytest.fixture(scope="module")
def _cluster():
    """2 single-threaded worker processes on 127.0.0.1 (the scheduler runs in this process)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as c:
        yield c


WORKERS_BACK_S = 120


@pytest.fixture
def cluster(_cluster):
    """The module's cluster with both workers up: the tests that kill a worker leave its nanny restarting
    it, which takes seconds on a loaded machine, and a run sent before then finds no workers."""
    _cluster.wait_for_workers(2, timeout=WORKERS_BACK_S)
    return _cluster


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from poisongen.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("dask-src") / "synthetic"
    generate(root, train=12, val=4, size=(64, 128), seed=5, jobs=1)
    return root


def without_created_at(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    m.pop("created_at")
    return m


def nothing_beside(out: Path):
    assert not out.exists()
    assert sorted(p.name for p in out.parent.glob(f".{out.name}.*")) == []


def test_dask_cluster_writes_the_same_bytes_as_loky_with_one_job(run_cli, cluster, src, tmp_path):
    args = ["nni", "--src", src, "--rate", "0.5", "-q", *TRIG]
    loky, dask = tmp_path / "loky", tmp_path / "dask"
    assert run_cli(app, [*args, "--out", loky, "--backend", "loky", "--jobs", "1"]).exit_code == 0
    r = run_cli(app, [*args, "--out", dask, "--backend", "dask", "--scheduler", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    assert tree_hashes(dask) == {**tree_hashes(loky), "manifest.json": tree_hashes(dask)["manifest.json"]}
    assert without_created_at(dask) == without_created_at(loky)
    assert without_created_at(loky)["counts"]["poisoned"] > 0
    # verify, re-deriving every poisoned file on the cluster
    r = run_cli(app, ["verify", dask, "--src", src, "--backend", "dask", "--scheduler", cluster.scheduler_address])
    assert r.exit_code == 0 and "verified" in r.output


def test_dask_scale_run_matches_loky(run_cli, cluster, src, tmp_path):
    loky, dask = tmp_path / "loky", tmp_path / "dask"
    base = ["scale", "--src", src, "--scale", "0.5", "-q"]
    assert run_cli(app, [*base, "--out", loky, "--jobs", "1"]).exit_code == 0
    assert run_cli(app, [*base, "--out", dask, "--backend", "dask", "--scheduler",
                         cluster.scheduler_address]).exit_code == 0
    assert without_created_at(dask) == without_created_at(loky)


def test_the_recorded_command_drops_backend_scheduler_and_hash_cache():
    cmd = ["poisongen", "nni", "--backend", "dask", "--scheduler", "tcp://h:8786", "--hash-cache=/c",
           "--backend=loky", "--hash-cache", "default", "-q"]
    assert pipeline.normalised_command(cmd) == ["poisongen", "nni", "-q"]


class DiesOnce(Cityscapes):
    """A Cityscapes layout whose first poisoned image kills the worker process writing it (os._exit),
    as an OOM kill or a lost node would; ``marker`` records that it happened."""

    marker: str | None = None

    def encode_image(self, sample, image, jpeg_quality):
        if self.marker is not None and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            os._exit(1)
        return super().encode_image(sample, image, jpeg_quality)


def _set_allowed_failures(client, n: int) -> int:
    def swap(dask_scheduler=None):
        old = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return old

    return client.run_on_scheduler(swap)


def test_a_worker_killed_mid_run_fails_cleanly_and_a_rerun_succeeds(cluster, src, tmp_path):
    ds = DiesOnce(src)
    ds.marker = str(tmp_path / "killed")
    cfg = resolve(ds, "nni", kind="train", rate=0.5, trigger_size=(5, 5))
    out = tmp_path / "out"
    with parallel.backend("dask", cluster.scheduler_address) as s:
        old = _set_allowed_failures(s.client, 0)  # dask retries a dead worker's task 3 times by default
        try:
            with pytest.raises(PoisonGenError, match="a dask worker died while running a task") as err:
                pipeline.run(ds, cfg, out, jobs=2)
        finally:
            _set_allowed_failures(s.client, old)
    assert "\n" not in str(err.value)
    assert Path(ds.marker).exists()  # the worker really was killed
    nothing_beside(out)
    cluster.wait_for_workers(2, timeout=WORKERS_BACK_S)  # the nannies restart the killed workers
    with parallel.backend("dask", cluster.scheduler_address):
        manifest, _, _ = pipeline.run(ds, cfg, out, jobs=2)
    assert manifest["counts"]["poisoned"] > 0
    ref = tmp_path / "ref"
    pipeline.run(Cityscapes(src), cfg, ref, jobs=1)
    assert without_created_at(out) == without_created_at(ref)


def test_a_killed_worker_task_is_retried_by_dask_with_the_same_bytes(cluster, src, tmp_path):
    ds = DiesOnce(src)
    ds.marker = str(tmp_path / "killed")
    cfg = resolve(ds, "nni", kind="train", rate=0.5, trigger_size=(5, 5))
    with parallel.backend("dask", cluster.scheduler_address):
        pipeline.run(ds, cfg, tmp_path / "out", jobs=2)
    assert Path(ds.marker).exists()
    pipeline.run(Cityscapes(src), cfg, tmp_path / "ref", jobs=1)
    assert without_created_at(tmp_path / "out") == without_created_at(tmp_path / "ref")


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(run_cli, src, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(parallel, "CONNECT_TIMEOUT", 1.0)
    out = tmp_path / "out"
    line = one_line_error(run_cli(app, ["nni", "--src", src, "--out", out, "--rate", "0.5", "-q", *TRIG,
                                        "--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"]))
    assert f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in line
    nothing_beside(out)


@pytest.mark.parametrize("bad", ["127.0.0.1:8786", "http://h:1", "tcp://h"])
def test_a_malformed_scheduler_address_is_one_line(run_cli, src, tmp_path, bad):
    line = one_line_error(run_cli(app, ["nni", "--src", src, "--out", tmp_path / "o", "--rate", "0.5",
                                        "--backend", "dask", "--scheduler", bad]))
    assert f"--scheduler '{bad}'" in line and "tcp://HOST:PORT" in line


def test_scheduler_without_dask_backend_is_one_line(run_cli, src, tmp_path):
    line = one_line_error(run_cli(app, ["nni", "--src", src, "--out", tmp_path / "o", "--rate", "0.5",
                                        "--scheduler", "tcp://127.0.0.1:8786"]))
    assert "--scheduler needs --backend dask" in line


def test_dask_not_installed_names_the_extra(run_cli, src, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_distributed(name, *a, **kw):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    out = tmp_path / "o"
    line = one_line_error(run_cli(app, ["nni", "--src", src, "--out", out, "--rate", "0.5", "--backend", "dask"]))
    assert "pip install .[dask]" in line
    nothing_beside(out)


def test_a_worker_that_cannot_see_the_staging_folder_fails_the_run(cluster, src, tmp_path, monkeypatch):
    """A worker on another machine sees another filesystem: here the check file is removed right after it
    is written, so no worker finds it, as if --out were on a disk local to the client."""
    real = Path.write_text

    def vanishing(self, data, *a, **kw):
        n = real(self, data, *a, **kw)
        if self.name.startswith(".poisongen-workers-check-"):
            self.unlink()
        return n

    monkeypatch.setattr(Path, "write_text", vanishing)
    ds = Cityscapes(src)
    cfg = resolve(ds, "nni", kind="train", rate=0.5, trigger_size=(5, 5))
    out = tmp_path / "out"
    with parallel.backend("dask", cluster.scheduler_address), pytest.raises(PoisonGenError) as err:
        pipeline.run(ds, cfg, out, jobs=2)
    msg = str(err.value)
    assert msg.startswith("dask worker tcp://127.0.0.1:") and "cannot use the staging folder" in msg
    assert f".{out.name}.poisongen-tmp-" in msg and "nothing written" in msg
    nothing_beside(out)


def test_a_worker_that_cannot_see_the_source_fails_the_run(cluster, src, tmp_path):
    with parallel.backend("dask", cluster.scheduler_address), pytest.raises(PoisonGenError) as err:
        parallel.check_workers_see(tmp_path, tmp_path / "not-there.png")
    assert "cannot see the file" in str(err.value) and "not-there.png" in str(err.value)


def test_without_a_scheduler_a_local_cluster_is_started_for_the_run_and_closed():
    with parallel.backend("dask", None, jobs=1) as s:
        assert s.cluster is not None and s.threads() == 1
        assert s.address.startswith("tcp://127.0.0.1:")
        assert parallel.session() is s
        assert parallel.parallel(1)(parallel.delayed(os.getpid)() for _ in range(2)) != [os.getpid()] * 2
    assert parallel.session() is None and s.cluster.status.name == "closed"
