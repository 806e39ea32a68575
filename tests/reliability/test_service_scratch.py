"""A service killed -9 mid-request leaves nothing that outlives the next start: its per-request temp dirs live in a
locked scratch folder (`services.owned_dir.ScratchDir`) that the next start removes, and the empty pids cgroups of
dead processes go when a process makes its first sandbox. Every test looks only at what it started itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from envs.gmsh.options import GmshOptions
from envs.r2e.cache import build_from_samples, read_index
from envs.registry import get_env
from monitor.health import HealthLimits, HealthMonitor, RunDir
from sandbox.launch import PIDS_CGROUP_ROOT
from services.owned_dir import ScratchDir
from services.process import ROOT, ServiceProcess


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _post_in_background(url: str, token: str, body: dict) -> threading.Thread:
    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the service is killed under it
            httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _killed_mid_request(scratch: Path, prefix: str, request_prefix: str, module: str, path: str, body: dict,
                        *args: str) -> None:
    """Start the service, kill -9 it while a request's temp dir exists, and check that the next start of the
    service removes the dead one's folder, and that a clean stop removes its own."""
    first = ServiceProcess(module, *args, "--scratch-root", str(scratch)).start()
    try:
        (folder,) = list(scratch.glob(f"{prefix}*"))
        _post_in_background(first.url + path, first.token, body)
        _wait_for(lambda: list(folder.glob(f"{request_prefix}*")), what="the request's temp dir")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        first.stop()
    assert list(folder.glob(f"{request_prefix}*")), "the request in flight left its temp dir"
    with ServiceProcess(module, *args, "--scratch-root", str(scratch)):
        assert not folder.exists(), "the next start removes the dead service's scratch folder"
        (second,) = list(scratch.glob(f"{prefix}*"))
    assert not second.exists(), "a clean stop removes the service's own scratch folder"


def test_gmsh_service_killed_mid_script_leaves_nothing_after_next_start(tmp_path):
    body = {"script": "import time\ntime.sleep(60)\n", "geometry_b64": base64.b64encode(b"x").decode(),
            "timeout": 60}
    _killed_mid_request(tmp_path / "scratch", "gmsh-service-", "gmsh-run-", "envs.gmsh.service", "/run", body,
                        "--workers", "1")


def test_r2e_test_service_killed_mid_test_leaves_nothing_after_next_start(tmp_path):
    cache = tmp_path / "cache"
    build_from_samples(cache)
    instance_id = sorted(read_index(cache))[0]
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w"):
        pass
    body = {"docker_image": "unused", "instance_id": instance_id, "test_cmd": "sleep 60", "timeout": 60,
            "files_tar_b64": base64.b64encode(data.getvalue()).decode()}
    _killed_mid_request(tmp_path / "scratch", "r2e-test-service-", "r2e-test-", "envs.r2e.test_service", "/test",
                        body, "--runtime", "process", "--cache-dir", str(cache), "--max-concurrent", "1")


def test_trainer_started_service_keeps_its_scratch_in_the_rollout_root(tmp_path):
    """The gmsh spec starts the local service with --scratch-root at the rollout root (the run's folder in
    training), so the trainer's sweep of a dead run covers the service's temp dirs too."""
    cfg = SimpleNamespace(env_options=GmshOptions(gmsh_url=()), max_concurrent=1, rollout_root=str(tmp_path / "run"))

    async def go() -> list[Path]:
        async with get_env("gmsh").services(cfg):
            return list((tmp_path / "run").glob("gmsh-service-*"))

    inside = asyncio.run(go())
    assert len(inside) == 1 and not inside[0].exists()


def test_health_monitor_leaves_an_idle_live_service_folder_alone(tmp_path):
    run = RunDir.claim(tmp_path)
    scratch = ScratchDir(run.path, "gmsh-service-")
    try:
        old = time.time() - 7200
        os.utime(scratch.path, (old, old))
        HealthMonitor(tmp_path, HealthLimits(stale_after_s=3600), own=run.path).check()
        assert scratch.path.is_dir(), "a live service's folder is not stale however long it was idle"
        assert scratch.mkdtemp("gmsh-run-").is_dir()
    finally:
        scratch.release()
        run.release()


CGROUP = ("import os, sys; from sandbox.launch import PidsCgroup; c = PidsCgroup(8); "
          "print(c.path, flush=True); sys.stdin.readline() if sys.argv[1] == 'live' else None; os._exit(0)")


@pytest.mark.skipif(not os.access(PIDS_CGROUP_ROOT, os.W_OK), reason="no writable pids cgroup here")
def test_first_sandbox_of_a_process_removes_dead_processes_cgroups_only():
    def start(mode: str) -> tuple[subprocess.Popen, Path]:
        proc = subprocess.Popen([sys.executable, "-c", CGROUP, mode], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        return proc, Path(proc.stdout.readline().strip())

    live, live_path = start("live")  # first: its own first cgroup would sweep the dead one's already
    try:
        dead, dead_path = start("dead")
        dead.wait(timeout=30)
        assert dead_path.is_dir() and live_path.is_dir(), "each child made its cgroup and left it"
        subprocess.run([sys.executable, "-c", "from sandbox.launch import PidsCgroup; PidsCgroup(8).remove()"],
                       cwd=ROOT, check=True, timeout=60)
        assert not dead_path.exists(), "the dead process's empty cgroup is removed"
        assert live_path.is_dir(), "a live process's cgroup is never touched"
    finally:
        live.stdin.close()
        live.wait(timeout=30)
        with contextlib.suppress(OSError):
            live_path.rmdir()
