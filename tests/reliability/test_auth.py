"""Every service refuses requests without its bearer token, or with a wrong one, and binds to 127.0.0.1 unless told."""

import subprocess
import sys
import time

import httpx
import psutil
import pytest

from envs.r2e.cache import build_from_samples
from services.process import ROOT, ServiceProcess, free_port


@pytest.mark.parametrize(("module", "path", "args"), [
    ("envs.gmsh.service", "/run", []),
    ("envs.r2e.test_service", "/test", ["--runtime", "process"]),
])
def test_requests_without_or_with_a_wrong_token_get_401(module, path, args, tmp_path):
    build_from_samples(tmp_path / "cache")
    extra = args + (["--cache-dir", str(tmp_path / "cache")] if "r2e" in module else [])
    with ServiceProcess(module, *extra) as svc:
        assert httpx.post(f"{svc.url}{path}", json={}).status_code == 401
        wrong = httpx.post(f"{svc.url}{path}", json={}, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        right = httpx.post(f"{svc.url}{path}", json={}, headers={"Authorization": f"Bearer {svc.token}"})
        assert right.status_code == 422  # past auth, and the empty body is refused with a reason


@pytest.mark.parametrize("module", ["envs.gmsh.service", "envs.r2e.test_service"])
def test_services_bind_to_loopback_by_default(module, tmp_path):
    build_from_samples(tmp_path / "cache")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), "--cache-dir", str(tmp_path / "cache")]
                            if "r2e" in module else [sys.executable, "-m", module, "--port", str(port)],
                            cwd=ROOT, env={"SERVICE_TOKEN": "t", "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        addresses = []
        while time.monotonic() < deadline and not addresses:
            addresses = [c.laddr.ip for c in psutil.Process(proc.pid).net_connections() if c.laddr.port == port]
            time.sleep(0.2)
        assert addresses == ["127.0.0.1"]
    finally:
        proc.kill()
        proc.wait()
