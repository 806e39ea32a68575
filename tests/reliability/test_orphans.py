"""A crash leaves nothing behind: kill -9 of the trainer in the middle of an r2e step, then no process it started
is left (test service, sandboxed REPLs and what runs in them), and the next start removes the dead run's rollout
work dirs. Only the processes and dirs this test started are looked at, so it holds on a busy shared machine."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, run_train, subprocess_env, train_cmd

R2E = ["--env", "r2e", "--max-training-steps", "1", "--groups-per-step", "2", "--rollouts-per-group", "2",
       "--max-steps", "6", "--max-tokens", "64"]


def _alive(process: psutil.Process) -> bool:
    """Still running: a zombie is dead (it waits only for its new parent to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdlines(processes: list[psutil.Process]) -> list[str]:
    found = []
    for p in processes:
        try:
            found.append(" ".join(p.cmdline()))
        except psutil.Error:
            continue
    return found


PARENT = """
import asyncio, subprocess, sys
from pathlib import Path
from sandbox.run import SandboxLimits, spawn_sandboxed
from sandbox.launch import die_with_parent

async def main():
    subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())  # how services are started
    await spawn_sandboxed(sys.argv[2:], Path(sys.argv[1]), SandboxLimits(wall_s=60))
    print("started", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _kill_parent_and_wait(cmd: list[str], env: dict[str, str], expect: int) -> list[str]:
    """Start `cmd` (PARENT), wait for its `expect` descendants, kill -9 it; what is left of them after 5 s."""
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        while len(descendants := psutil.Process(parent.pid).children(recursive=True)) < expect:
            assert time.monotonic() < deadline, _cmdlines(descendants)
            time.sleep(0.05)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    killed_at = time.monotonic()
    while any(_alive(p) for p in descendants) and time.monotonic() - killed_at < 5:
        time.sleep(0.05)
    left = [p for p in descendants if _alive(p)]
    for p in left:
        p.kill()
    return _cmdlines(left)


def test_services_and_sandboxes_die_with_the_process_that_started_them(tmp_path):
    from sandbox.run import bwrap_available

    if not bwrap_available():
        pytest.skip("no working bwrap here: the unsandboxed case below still runs")
    # bwrap: the sandboxed shell and the background job it left (the PID namespace goes with bwrap)
    cmd = [sys.executable, "-c", PARENT, str(tmp_path), "/bin/sh", "-c", "sleep 60 & sleep 60"]
    assert _kill_parent_and_wait(cmd, subprocess_env(), expect=4) == []


def test_an_unsandboxed_process_dies_with_its_parent_too():
    """The opt-out fallback has no PID namespace: the parent-death signal (set after the uid drop, which would
    clear it) is what ends the process the trainer started."""
    env = subprocess_env() | {"ART_SANDBOX_BWRAP": "none", "ART_ALLOW_UNSANDBOXED": "1"}
    workdir = Path(tempfile.mkdtemp(prefix="orphans-"))  # the leased uid must reach it: not under pytest's 0700 dir
    try:
        cmd = [sys.executable, "-c", PARENT, str(workdir), "sleep", "60"]
        assert _kill_parent_and_wait(cmd, env, expect=2) == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.slow
def test_kill_9_mid_r2e_step_leaves_no_process_and_the_next_start_removes_its_dirs(tmp_path, record_property):
    proc = subprocess.Popen(train_cmd(tmp_path, "orphans", *R2E), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=ROOT)
    trainer = psutil.Process(proc.pid)
    descendants: list[psutil.Process] = []
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:  # mid-step: REPLs live in their sandboxes
            descendants = trainer.children(recursive=True)
            lines = _cmdlines(descendants)
            # A REPL counts once its sandbox has started the interpreter too (bwrap and the python inside it both
            # name repl_server.py): a snapshot between the two would miss the process this test is about.
            if sum("repl_server.py" in c for c in lines) >= 2 and any("envs.r2e.test_service" in c for c in lines):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the trainer never reached a REPL (exit code {proc.poll()})")
        work_dirs = [p for p in (tmp_path / "rollouts").glob("run-*/*") if p.is_dir()]
        assert work_dirs, "no rollout work dir in the run's folder mid-step"
        known = {p.pid for p in descendants}
        descendants += [p for p in trainer.children(recursive=True) if p.pid not in known]  # started meanwhile
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.monotonic()
    while any(_alive(p) for p in descendants) and time.monotonic() - killed_at < 10:
        time.sleep(0.1)
    left = [p for p in descendants if _alive(p)]
    record_property("descendants", len(descendants))
    record_property("gone_after_s", round(time.monotonic() - killed_at, 2))
    for p in left:  # never leave them to the next test, but fail for them
        p.kill()
    assert not left, _cmdlines(left)
    assert len(descendants) >= 3  # the service, and at least one sandbox with its REPL

    dead = list((tmp_path / "rollouts").glob("run-*"))
    assert dead and all(d.is_dir() for d in dead)  # kill -9: the dead run's folder is still there...
    after = run_train(tmp_path, "next", "--env", "toy", "--max-training-steps", "1", "--groups-per-step", "2",
                      "--rollouts-per-group", "2", "--dataset-size", "4")
    assert after.returncode == 0, after.stderr[-3000:]
    assert f"start: removed {len(dead)} rollout dir(s) of dead runs" in after.stdout  # ...until the next start
    assert list((tmp_path / "rollouts").iterdir()) == []
