"""Abuse by model-written code, through both places it runs: the R2E REPL sandbox and the gmsh service.

Each case must be contained (a limit hit or a clear observation), leave the REPL / service serving, and leave no
process behind. `python -m tests.reliability.report` turns the suite's results into docs/RELIABILITY.md.
The sandbox is forced to the bundled bwrap (ART_SANDBOX_BWRAP=bundled): what a fresh machine gets from the lock
file, tested even where a system bwrap would win.
"""

import base64
import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from envs.gmsh.wire import RunRequest
from envs.r2e.cache import SAMPLES
from envs.r2e.repl import Repl
from sandbox.run import ENV_BWRAP, SandboxLimits, check_sandbox
from services.process import ServiceProcess

MARK = f"reliability-sleeper-{uuid.uuid4().hex[:8]}"  # this run's: processes of other runs are not ours to count
BUNDLED = {ENV_BWRAP: "bundled"}
# Outside the allowlist (sandbox/view.py), and root-owned with mode 0600 should it ever come into view.
ROOT_ONLY = Path("/var/tmp") / f"art-reliability-root-only-{uuid.uuid4().hex[:8]}"
CASES = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "infinite loop": "while True:\n    pass\n",
    "allocate 8 GB": "blob = bytearray(8 * 1024 ** 3)\n",
    "write outside the work dir": "open('/etc/owned-by-model', 'w').write('x')\n",
    "read the trainer's secrets": "import os\nprint('KEY=' + str(os.environ.get('WANDB_API_KEY')))\n",
    "print 100 MB": "import sys\nsys.stdout.write('x' * 100_000_000)\n",
    "print invalid UTF-8": "import sys\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\xff\\xfe\\xfa bad bytes')\n",
    "kill its own parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "read a root-only file": f"print(open({str(ROOT_ONLY)!r}).read())\n",
    "leave a background process": (f"import subprocess\nsubprocess.Popen(['sleep', '1000', '{MARK}'], "
                                   "start_new_session=True)\n"),
}


def leftovers() -> list[psutil.Process]:
    """What this run started and left: a sandboxed process still below pytest, or this run's sleeper anywhere."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if {"repl_server.py", "script_runner.py"} & {Path(arg).name for arg in proc.cmdline()}:
                found.append(proc)
    for proc in psutil.process_iter(["cmdline"]):
        if MARK in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def contained(name: str, stdout: str, error: str | None, timed_out: bool) -> bool:
    """What 'contained' means for each case, seen from the outside."""
    if name in {"fork bomb", "infinite loop"}:
        return timed_out
    if name == "allocate 8 GB":
        return bool(error) and "MemoryError" in (error or "")
    if name == "write outside the work dir":
        return not Path("/etc/owned-by-model").exists() and bool(error)
    if name == "read the trainer's secrets":
        return "KEY=None" in stdout and "reliability-secret" not in stdout
    if name == "print 100 MB":
        return len(stdout) < 1_000_000 and "cut" in stdout
    if name == "read a root-only file":
        # Outside the allowlist the file is not there at all; inside it, the leased uid would still be refused.
        return "root-only-secret" not in stdout and any(e in (error or "") for e in ("PermissionError",
                                                                                    "FileNotFoundError"))
    return True  # the rest: the process may die or not; what matters is the checks after it


def observed(stdout: str, error: str | None, timed_out: bool) -> str:
    """One line for docs/RELIABILITY.md: what the model would have seen."""
    first_error = (error or "").strip().splitlines()[-1:] or ["none"]
    return f"timed out: {timed_out}; error: {first_error[0][:90]}; stdout: {len(stdout)} chars"


@pytest.fixture(autouse=True)
def trainer_secret(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "reliability-secret")
    monkeypatch.setenv(ENV_BWRAP, "bundled")


@pytest.fixture(scope="module", autouse=True)
def root_only_file():
    if os.geteuid() != 0 or not ROOT_ONLY.parent.is_dir():
        yield None
        return
    ROOT_ONLY.write_text("root-only-secret")
    ROOT_ONLY.chmod(0o600)
    yield ROOT_ONLY
    ROOT_ONLY.unlink(missing_ok=True)


def skip_unless_meaningful(name: str) -> None:
    if name == "read a root-only file" and not ROOT_ONLY.exists():
        pytest.skip("needs root and /var/tmp to make a root-only file the sandbox could see")


def test_sandbox_is_the_bundled_bubblewrap(record_property):
    status = check_sandbox()
    record_property("observation", status.describe())
    assert status.mode == "bubblewrap" and status.source == "bundled", status


@pytest.mark.parametrize("name", list(CASES))
async def test_repl_contains(name, tmp_path, record_property):
    skip_unless_meaningful(name)
    workdir = tmp_path / "work"
    shutil.copytree(SAMPLES / "stats" / "repo", workdir)
    repl = Repl(workdir, SandboxLimits(memory_mb=1024, wall_s=1e9, cpu_s=600, max_processes=32,
                                       max_output_chars=8000), cell_timeout_s=4)
    await repl.start()
    try:
        result = await repl.run_cell(CASES[name])
        record_property("observation", observed(result.stdout, result.error, result.timed_out))
        assert contained(name, result.stdout, result.error, result.timed_out), result
        after = await repl.run_cell("print('still serving')")
        assert after.stdout.strip() == "still serving"
    finally:
        await repl.close()
    time.sleep(0.2)
    assert leftovers() == []


@pytest.fixture(scope="module")
def gmsh_service():
    with ServiceProcess("envs.gmsh.service", "--workers", "2", "--timeout", "4", "--memory-mb", "1024",
                        env=BUNDLED) as svc:
        yield svc


@pytest.mark.parametrize("name", list(CASES))
def test_gmsh_service_contains(gmsh_service, name, record_property):
    skip_unless_meaningful(name)
    body = RunRequest(script=CASES[name], geometry_b64=base64.b64encode(b"not a real geometry").decode(),
                      timeout=4).model_dump()
    headers = {"Authorization": f"Bearer {gmsh_service.token}"}
    started = time.monotonic()
    response = httpx.post(f"{gmsh_service.url}/run", json=body, headers=headers, timeout=60)
    assert response.status_code == 200 and time.monotonic() - started < 30
    result = response.json()
    error = result["error"] or result["stderr"][-500:]
    record_property("observation", observed(result["stdout"], error if not result["ok"] else None,
                                            result["timed_out"]))
    assert contained(name, result["stdout"], error if not result["ok"] else None, result["timed_out"]), result
    assert httpx.get(f"{gmsh_service.url}/health").json()["status"] == "ok"
    time.sleep(0.2)
    assert leftovers() == []
    assert not os.path.exists("/etc/owned-by-model")
