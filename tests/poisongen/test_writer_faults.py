"""Machine faults while writing --out: disk full mid-run, a read-only --out parent, a failed final
rename, two runs on one --out (the lock), SIGTERM (temp dir removed, workers ended), a source that
points into --out or holds a symlink loop. Each: one line, exit 2, nothing left behind."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import one_line_error
from conftest import tree_hashes

from poisongen import manifest as mf
from poisongen import writer
from poisongen.cli import app
from poisongen.datasets.synthetic import generate

TRIG = ["--trigger-size", "5"]


def nothing_beside(out: Path):
    """No --out, no temp copy, no lock, no moved-aside old copy."""
    assert not out.exists()
    assert sorted(p.name for p in out.parent.glob(f".{out.name}.*")) == []


def nni_args(src, out, *extra):
    return ["nni", "--src", src, "--out", out, "--rate", "0.25", "--jobs", "1", "-q", *TRIG, *extra]


def test_disk_full_while_writing_poisoned_files(run_cli, tiny_synth, tmp_path, monkeypatch):
    from poisongen import apply

    calls = []
    real = apply.write_bytes

    def full_after_two(path, data):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(apply, "write_bytes", full_after_two)
    out = tmp_path / "out"
    line = one_line_error(run_cli(app, nni_args(tiny_synth, out)))
    assert "no space left on the device" in line and str(calls[-1]) in line and f"--out {out}" in line
    nothing_beside(out)


def test_disk_full_while_copying_unchanged_files(run_cli, tiny_synth, tmp_path, monkeypatch):
    calls = []
    real = writer._copy_one

    def full_after_five(src_root, dst_root, rel, link, hash_files):
        calls.append(rel)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst_root / rel))
        return real(src_root, dst_root, rel, link, hash_files)

    monkeypatch.setattr(writer, "_copy_one", full_after_five)
    out = tmp_path / "out"
    line = one_line_error(run_cli(app, nni_args(tiny_synth, out)))
    assert "no space left on the device" in line
    nothing_beside(out)


def test_read_only_out_parent(run_cli, tiny_synth, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root writes through mode bits: make the folder read-only the way the kernel would
        real_open, real_mkdir = os.open, os.mkdir

        def refuse(path):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse(path) or real_open(path, *a, **k))
        monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: refuse(path) or real_mkdir(path, *a, **k))
    try:
        out = parent / "out"
        line = one_line_error(run_cli(app, nni_args(tiny_synth, out)))
        assert "Permission denied" in line and str(parent) in line
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_final_rename_leaves_no_temp_copy(run_cli, tiny_synth, tmp_path, monkeypatch, existing):
    out = tmp_path / "out"
    if existing:
        assert run_cli(app, nni_args(tiny_synth, out)).exit_code == 0
        before = tree_hashes(out)
    real = os.rename

    def fail_tmp(src, dst):
        if ".poisongen-tmp-" in str(src):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        real(src, dst)

    monkeypatch.setattr(os, "rename", fail_tmp)
    line = one_line_error(run_cli(app, nni_args(tiny_synth, out, "--overwrite", "--seed", "5")))
    assert "Invalid cross-device link" in line
    if existing:
        assert tree_hashes(out) == before, "the old --out is put back as it was"
        shutil.rmtree(out)
    nothing_beside(out)


def test_second_run_on_a_locked_out_fails_and_a_dead_lock_is_taken_over(run_cli, tiny_synth, tmp_path):
    out = tmp_path / "out"
    lock = writer.lock_path(out)
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid()); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        line = one_line_error(run_cli(app, nni_args(tiny_synth, out)))
        assert f"being written by another poisongen run (PID {holder.pid}" in line
        assert not out.exists() and lock.read_text() == f"{holder.pid}", "another run's lock is left alone"
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as under SIGKILL) and left its lock file: it is taken over, ours removed at the end
    assert lock.exists()
    r = run_cli(app, nni_args(tiny_synth, out))
    assert r.exit_code == 0, r.stderr
    assert (out / mf.NAME).is_file() and not lock.exists()


def test_a_real_second_run_fails_while_the_first_writes(tmp_path, run_cli):
    src = tmp_path / "big"
    generate(src, train=40, val=2, size=(256, 512), seed=0, jobs=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "poisongen.cli", "baseline", "--src", str(src), "--out", str(out), "--rate", "1.0",
           "--jobs", "1", "-q", "--allow-fewer"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not writer.lock_path(out).exists():
        time.sleep(0.002)
    line = one_line_error(run_cli(app, ["baseline", "--src", src, "--out", out, "--rate", "1.0", "--jobs", "1", "-q",
                                        "--allow-fewer", "--overwrite"]))
    assert f"PID {first.pid}" in line
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert (out / mf.NAME).is_file() and not writer.lock_path(out).exists()


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_removes_the_temp_copy_and_ends_the_workers(tmp_path):
    src = tmp_path / "big"
    generate(src, train=48, val=2, size=(256, 512), seed=0, jobs=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "poisongen.cli", "baseline", "--src", str(src), "--out", str(out), "--rate", "1.0",
           "--jobs", "2", "-q", "--allow-fewer", "--full-scan"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if list(tmp_path.glob(".out.poisongen-tmp-*")) and len(workers) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None and len(workers) >= 2, "the run never started its worker processes"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in proc.stderr.read().decode()
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "temp copy and lock removed"
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the run"


def test_source_symlinked_into_out_is_refused_before_anything_is_deleted(run_cli, tiny_synth, tmp_path):
    origin = tmp_path / "origin"
    shutil.copytree(tiny_synth, origin)
    before = tree_hashes(origin)
    copy = tmp_path / "copy"
    assert run_cli(app, nni_args(origin, copy, "--link", "symlink")).exit_code == 0
    line = one_line_error(run_cli(app, nni_args(copy, origin, "--overwrite")))
    assert "is a symlink into --out" in line and str(origin) in line
    assert tree_hashes(origin) == before
    nothing_beside(tmp_path / "never")  # nothing else either
    assert sorted(p.name for p in tmp_path.glob(".origin.*")) == []


@pytest.mark.parametrize("make_loop", [
    lambda root: os.symlink("loop", root / "loop"),
    lambda root: os.symlink("..", root / "gtFine" / "up"),
])
def test_symlink_loop_in_the_source_is_refused(run_cli, tiny_synth, tmp_path, make_loop):
    src = tmp_path / "src"
    shutil.copytree(tiny_synth, src)
    make_loop(src)
    out = tmp_path / "out"
    assert "symlink loop" in one_line_error(run_cli(app, nni_args(src, out)))
    nothing_beside(out)
