"""What model code can see, walked from inside every place it runs: nothing of the host outside the allowlist.

Each case runs the same walk as model code would: `os.walk('/')` (links not followed; /proc, /dev and /sys
skipped) that reports every path neither inside an allowed root nor a directory on the way to one, then tries to
read files planted where the old view (`--ro-bind / /`) showed them: a world-readable `.env` in a temp "project"
beside a runtime script, a file in a temp dir outside the work dir, the r2e samples' reference fixes, the project's
`.git` and the /etc files that may hold credentials. The allowed roots are written out here, not taken from
`sandbox.view`, except the /etc entries (each kept for a reason there; a secret among them is refused at
import and a planted one is checked below). The planted files live under /var/tmp: a world-searchable host dir
outside /tmp (which the sandbox has always replaced with its own) and outside /root and /home.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.executor import ExecutorReply
from envs.gmsh.service import RUNNER
from envs.gmsh.wire import RunRequest
from envs.r2e.client import tar_b64
from envs.r2e.repl import SERVER, Repl
from envs.r2e.test_service import ProcessRuntime
from envs.r2e.wire import TestRequest
from envs.workflow.runner import MAIN, WorkflowLimits, run_workflow
from sandbox.run import ENV_BWRAP, PROJECT, SandboxLimits, bwrap_available, run_sandboxed
from sandbox.view import ETC
from services.process import ServiceProcess

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="no bubblewrap can run here: nothing to walk")

SYSTEM = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
_PREFIXES = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
PREFIXES = sorted(_PREFIXES | {os.path.realpath(p) for p in _PREFIXES})
MARK = "VIEW-RESULT "
# Runs inside the sandbox: `{spec}` is replaced with the JSON of {"roots": [...], "secrets": [...]}.
WALK = r'''
import json as _json, os as _os
_spec = _json.loads({spec!r})
_roots = [_os.path.normpath(p) for p in _spec["roots"]] + [_os.getcwd(), "/proc", "/dev", "/sys"]
def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")
def _walk():
    bad = []
    for top, dirs, files in _os.walk("/"):
        bad += [p for p in (_os.path.join(top, f) for f in files) if not any(_under(p, r) for r in _roots)]
        kept = []
        for name in dirs:
            path = _os.path.join(top, name)
            if any(_under(path, r) for r in _roots):
                continue  # allowed: what is inside it is too
            if path == "/tmp" or any(_under(r, path) for r in _roots):
                kept.append(name)  # a dir on the way to an allowed root: walk on
            else:
                bad.append(path)
        dirs[:] = kept
    return bad
def _readable(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False
_bad = _walk()
RESULT = _json.dumps({"bad": sorted(_bad)[:50], "n_bad": len(_bad),
                      "readable": [p for p in _spec["secrets"] if _readable(p)]})
'''


def walk_code(*runtime_files: Path) -> str:
    roots = [*SYSTEM, *(f"/etc/{entry}" for entry in ETC), *PREFIXES, *map(str, runtime_files)]
    return WALK.replace("{spec!r}", repr(json.dumps({"roots": roots, "secrets": SECRETS})))


def printed_walk(*runtime_files: Path) -> str:
    return walk_code(*runtime_files) + f"\nprint({MARK!r} + RESULT)\n"


SECRETS: list[str] = []  # filled by the `planted` fixture: what must not be readable from inside


def assert_nothing_else(text: str) -> None:
    lines = [line for line in text.splitlines() if line.startswith(MARK)]
    assert lines, f"the walk printed no result: {text[-2000:]}"
    seen = json.loads(lines[-1][len(MARK):])
    assert (seen["n_bad"], seen["readable"]) == (0, []), (
        f"readable from inside: {seen['readable']}; {seen['n_bad']} paths outside the allowlist, e.g. {seen['bad']}")


@pytest.fixture(autouse=True)
def bundled(monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, "bundled")  # what a fresh clone gets from the lock file


@pytest.fixture(scope="module", autouse=True)
def planted() -> Iterator[Path]:
    """A world-readable temp "project" (a `.env`, a runtime script and its sibling) and a file in a dir outside any
    work dir, all under /var/tmp; plus the real project's answers and the /etc files that may hold credentials."""
    base = Path(tempfile.mkdtemp(prefix="art-view-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    (base / "project" / "envs").mkdir(parents=True)
    (base / "outside").mkdir()
    files = {base / "project" / ".env": "OPENAI_API_KEY=planted", base / "outside" / "data.txt": "planted",
             base / "project" / "envs" / "sibling.py": "ANSWER = 'planted'"}
    for path, text in files.items():
        path.write_text(text)
        path.chmod(0o644)
    for directory in (base, base / "project", base / "project" / "envs", base / "outside"):
        directory.chmod(0o755)
    fixes = sorted(str(p) for p in PROJECT.glob("envs/r2e/samples/*/fix/*") if p.is_file())
    assert fixes, "the bundled r2e samples' fixes are gone: nothing to hide"
    etc = [f"/etc/{n}" for n in ("shadow", "gshadow", "sudoers", "pip.conf", "npmrc", "gitconfig") if
           os.path.exists(f"/etc/{n}")]
    SECRETS[:] = [*map(str, files), *fixes, str(PROJECT / ".git" / "HEAD"), str(PROJECT / ".env"),
                  str(PROJECT / "pyproject.toml"), *etc]
    yield base
    shutil.rmtree(base, ignore_errors=True)
    SECRETS.clear()


async def test_run_sandboxed_shows_only_the_allowlist_and_the_runtime_file(planted, tmp_path):
    tool = planted / "project" / "envs" / "tool.py"  # a runtime script beside a .env and a sibling module
    tool.write_text(printed_walk(tool))
    tool.chmod(0o644)
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = await run_sandboxed([sys.executable, str(tool)], workdir, SandboxLimits(wall_s=60))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert_nothing_else(result.stdout)


async def test_a_code_string_names_no_host_file_into_the_view(planted, tmp_path):
    env_file = planted / "project" / ".env"  # the value of -c is code, never a runtime file to bind
    result = await run_sandboxed(["/bin/sh", "-c", str(env_file)], tmp_path, SandboxLimits(wall_s=30))
    assert result.exit_code == 127 and "not found" in result.stderr, result


async def test_the_r2e_repl_cell_sees_only_the_allowlist(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    repl = Repl(workdir, SandboxLimits(memory_mb=1024, wall_s=1e9, cpu_s=60), cell_timeout_s=30)
    await repl.start()
    try:
        result = await repl.run_cell(printed_walk(SERVER))
    finally:
        await repl.close()
    assert result.error is None, result.error
    assert_nothing_else(result.stdout)


def test_a_gmsh_script_sees_only_the_allowlist():
    with ServiceProcess("envs.gmsh.service", "--workers", "1", "--timeout", "30",
                        env={ENV_BWRAP: "bundled"}) as svc:
        body = RunRequest(script=printed_walk(RUNNER), geometry_b64=base64.b64encode(b"unused").decode(),
                          timeout=30).model_dump()
        response = httpx.post(f"{svc.url}/run", json=body, headers={"Authorization": f"Bearer {svc.token}"},
                              timeout=90)
    assert response.status_code == 200, response.text
    result = response.json()
    assert_nothing_else(result["stdout"] + "\n" + result["stderr"][-2000:])


class NoExecutor:
    """The walk calls no operator: any call is a test failure."""

    async def complete(self, messages: list[dict[str, Any]], *, max_tokens: int,
                       temperature: float = 0.0) -> ExecutorReply:
        raise AssertionError("the walk made an executor call")

    async def aclose(self) -> None:
        return None


async def test_a_workflow_sees_only_the_allowlist(tmp_path):
    code = walk_code(MAIN) + "\ndef solve(problem, domain):\n    return RESULT\n"
    run = await run_workflow(code, "q", "math", tmp_path / "w", NoExecutor(), WorkflowLimits(time_limit_s=60))
    assert run.error is None and run.answer, run
    assert_nothing_else(MARK + run.answer)


async def test_an_r2e_test_command_sees_only_the_allowlist(tmp_path):
    cache, changed = tmp_path / "cache", tmp_path / "changed"
    (cache / "repo").mkdir(parents=True)
    (cache / "repo" / "README").write_text("a repo")
    instance = "walk__0123456789ab"
    (cache / "index.json").write_text(json.dumps({instance: {"cache_path": "repo"}}))
    changed.mkdir()
    (changed / "walk.py").write_text(printed_walk())
    runtime = ProcessRuntime(cache, SandboxLimits(memory_mb=1024, wall_s=60, cpu_s=60))
    result = await runtime.run(TestRequest(docker_image="none", instance_id=instance, test_cmd="python walk.py",
                                           files_tar_b64=tar_b64(changed, ["walk.py"]), timeout=60))
    assert result.exit_code == 0, result.test_output[-2000:]
    assert_nothing_else(result.test_output)
