"""The sandbox for model code: which bwrap is chosen, refusal without one, the opt-out fallback, the check command.

The adversarial cases through the REPL and the gmsh service are in tests/reliability/test_untrusted_code.py.
"""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from envs.r2e.repl import Repl
from sandbox import run as sandbox
from sandbox.launch import UID_BASE, _closed_ancestor
from sandbox.run import ENV_ALLOW, ENV_BWRAP, SandboxLimits, SandboxUnavailable, check_sandbox, run_sandboxed
from sandbox.view import argv_files
from services.process import ROOT, ServiceProcess, free_port

BUNDLED = sandbox._bundled()
ROOT_ONLY_REASON = "the uid drop is what is tested: needs root"


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    """Each test probes afresh, with no opt-out unless it sets one."""
    monkeypatch.setattr(sandbox, "_BACKENDS", {})
    monkeypatch.setattr(sandbox, "_FALLBACK_ERRORS", {})
    monkeypatch.setattr(sandbox, "_warned", False)
    monkeypatch.delenv(ENV_ALLOW, raising=False)
    monkeypatch.delenv(ENV_BWRAP, raising=False)


def fake_system_bwrap(tmp_path: Path, monkeypatch, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bwrap"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return fake


def test_bundled_bwrap_is_probed_once_and_logged(monkeypatch, caplog):
    monkeypatch.setenv(ENV_BWRAP, "bundled")
    caplog.set_level("INFO", logger="sandbox")
    status = check_sandbox()
    assert (status.mode, status.source, status.binary) == ("bubblewrap", "bundled", BUNDLED)
    assert 0 < status.probe_s < 10
    check_sandbox()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sandbox: bubblewrap")]
    assert lines == [lines[0]] and f"(bundled, {BUNDLED})" in lines[0]


def test_a_working_system_bwrap_wins(tmp_path, monkeypatch):
    fake = fake_system_bwrap(tmp_path, monkeypatch, f'exec {BUNDLED} "$@"')  # in a dir only root can search
    status = check_sandbox()
    assert (status.mode, status.source, status.binary) == ("bubblewrap", "system", str(fake))


def test_a_broken_system_bwrap_loses_to_the_bundled_one(tmp_path, monkeypatch):
    fake_system_bwrap(tmp_path, monkeypatch, 'echo "bwrap: No permissions to create new namespace" >&2; exit 1')
    assert check_sandbox().source == "bundled"
    monkeypatch.setattr(sandbox, "_BACKENDS", {})
    monkeypatch.setenv(ENV_BWRAP, "system")  # forced: its probe's own error is the reason given
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        check_sandbox()


def test_a_bwrap_that_shows_the_project_fails_the_probe(tmp_path, monkeypatch):
    # The extra bind goes last before `--`: after the sandbox's own `--tmpfs /tmp`, which would hide a project
    # that lives under /tmp (a CI clone may).
    extra = f"--ro-bind {sandbox.PROJECT} {sandbox.PROJECT}"
    fake_system_bwrap(tmp_path, monkeypatch, 'for a do shift; if [ "$a" = -- ] && [ -z "$seen" ]; then seen=1; '
                      f'set -- "$@" {extra}; fi; set -- "$@" "$a"; done; exec {BUNDLED} "$@"')
    assert check_sandbox().source == "bundled"
    monkeypatch.setattr(sandbox, "_BACKENDS", {})
    monkeypatch.setenv(ENV_BWRAP, "system")
    with pytest.raises(SandboxUnavailable, match="could see .*envs: the sandbox's root is not the allowlist"):
        check_sandbox()


def test_runtime_files_come_from_argv_but_never_from_code(tmp_path):
    script, data = tmp_path / "runner.py", tmp_path / "data.txt"
    script.write_text("pass")
    data.write_text("x")
    found = argv_files([sys.executable, str(script), "-c", str(data), str(tmp_path), "rel.py", str(data)], [])
    assert found == sorted([Path(sys.executable), data, script])  # a dir and a relative path are not files to bind
    assert argv_files(["/bin/sh", "-c", str(script)], []) == [Path("/bin/sh")]
    assert argv_files([str(script)], [tmp_path]) == []  # already inside an allowed root


async def test_a_runtime_file_only_root_can_reach_is_staged_for_the_sandbox_uid(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, "bundled")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # under root: the leased uid cannot search it, so root stages the file
    (closed / "secret.txt").write_text("beside the runtime file")
    runner = closed / "runner.py"
    runner.write_text("import os, sys\nprint('ran', sorted(os.listdir(os.path.dirname(sys.argv[0]))))\n")
    runner.chmod(0o644)
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = await run_sandboxed([sys.executable, str(runner)], workdir, SandboxLimits(wall_s=30))
    assert result.exit_code == 0 and result.stdout.strip() == "ran ['runner.py']", result


def test_an_explicit_path_is_used(monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, BUNDLED)
    status = check_sandbox()
    assert (status.source, status.binary) == ("path", BUNDLED)


def assert_refusal(message: str) -> None:
    assert "\n" not in message and "--allow-unsandboxed" in message and f"{ENV_ALLOW}=1" in message, message


async def test_without_a_sandbox_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, "none")
    with pytest.raises(SandboxUnavailable) as refused:
        check_sandbox()
    assert_refusal(str(refused.value))
    with pytest.raises(SandboxUnavailable) as refused:
        await run_sandboxed(["/bin/sh", "-c", "touch ran"], tmp_path, SandboxLimits())
    assert_refusal(str(refused.value))
    repl = Repl(tmp_path, SandboxLimits(), cell_timeout_s=5)
    with pytest.raises(SandboxUnavailable):
        await repl.start()
    assert repl.proc is None and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("module", ["envs.gmsh.service", "envs.r2e.test_service"])
def test_services_refuse_to_start_without_a_sandbox(module, tmp_path):
    (tmp_path / "index.json").write_text("{}")
    extra = ["--runtime", "process", "--cache-dir", str(tmp_path)] if module.endswith("test_service") else []
    env = {k: v for k, v in os.environ.items() if k != ENV_ALLOW} | {ENV_BWRAP: "none"}
    done = subprocess.run([sys.executable, "-m", module, "--token", "t", "--port", str(free_port()), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: no sandbox for model code") and done.stderr.count("\n") == 1
    assert_refusal(done.stderr.strip())
    with pytest.raises(RuntimeError, match="exit code 2.*allow-unsandboxed"):
        ServiceProcess(module, *extra, env={ENV_BWRAP: "none"}).start()


def test_a_service_takes_the_opt_out_flag():
    with ServiceProcess("envs.gmsh.service", "--allow-unsandboxed", env={ENV_BWRAP: "bundled"}) as svc:
        assert svc.proc is not None and svc.proc.poll() is None


def test_the_fallback_names_what_keeps_the_interpreter_from_running(monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, "none")
    python = Path(os.path.realpath(sys.executable))
    closed = [p for p in (python, Path(sys.base_prefix), Path(sys.prefix)) if _closed_ancestor(p)]
    if os.geteuid() == 0 and closed:
        with pytest.raises(SandboxUnavailable, match=f"cannot run {sys.executable} as an unprivileged uid"):
            check_sandbox(allow_unsandboxed=True)
    else:
        assert check_sandbox(allow_unsandboxed=True).mode == "unsandboxed"


# The fallback run goes through a parent process of its own: if "kill the parent" got through, that parent dies,
# not pytest.
PARENT = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
from sandbox.run import SandboxLimits, run_sandboxed
SCRIPT = '''
echo uid=$(id -u)
echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$
if (: > /etc/art-sandbox-test) 2>/dev/null; then rm -f /etc/art-sandbox-test; echo etc=writable
else echo etc=denied; fi
echo shadow=$(cat /etc/shadow 2>/dev/null | wc -c)
echo secret=${ART_TEST_SECRET:-absent}
echo ulimit_v=$(ulimit -v)
kill -KILL $PPID 2>/dev/null; echo kill_parent=$?
setsid sleep 1000 "$1" > /dev/null 2>&1 &
echo left=yes
'''
result = asyncio.run(run_sandboxed(["/bin/sh", "-c", SCRIPT, "sh", sys.argv[1]], Path(tempfile.mkdtemp()),
                                   SandboxLimits(wall_s=20, memory_mb=256)))
print(json.dumps(result.__dict__))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)
def test_the_opted_out_fallback_still_drops_root():
    mark = f"art-sandbox-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **{ENV_BWRAP: "none", ENV_ALLOW: "1", "ART_TEST_SECRET": "s3cret"})
    parent = subprocess.run([sys.executable, "-c", PARENT, mark], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert parent.returncode == 0, f"the sandboxed code killed its parent: {parent.returncode} {parent.stderr}"
    result = json.loads(parent.stdout.strip().splitlines()[-1])
    seen = dict(part.split("=", 1) for line in result["stdout"].splitlines() for part in line.split())
    assert int(seen["uid"]) >= UID_BASE
    assert seen["sid"] == seen["pid"]  # its own session
    assert seen["etc"] == "denied" and seen["shadow"] == "0" and seen["secret"] == "absent"
    assert seen["ulimit_v"] == str(256 * 1024) and seen["kill_parent"] != "0" and seen["left"] == "yes"
    assert "weak" in parent.stderr or "NONE" in parent.stderr  # the one warning
    assert not [p for p in psutil.process_iter(["cmdline"]) if mark in " ".join(p.info["cmdline"] or [])]


@pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_ONLY_REASON)
async def test_bwrap_runs_each_sandbox_as_a_uid_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_BWRAP, "bundled")
    secret = Path("/var/tmp") / f"art-sandbox-test-{uuid.uuid4().hex[:8]}"
    secret.write_text("root-only")
    secret.chmod(0o600)
    try:
        dirs = [tmp_path / "a", tmp_path / "b"]
        for d in dirs:
            d.mkdir()
        script = 'id -u; cat "$1" || echo denied; sleep 0.5'  # $1: in argv, so bound into the view; the uid stops it
        argv = ["/bin/sh", "-c", script, "sh", str(secret)]
        results = await asyncio.gather(*(run_sandboxed(argv, d, SandboxLimits()) for d in dirs))
    finally:
        secret.unlink()
    uids = [int(r.stdout.split()[0]) for r in results]
    assert len(set(uids)) == 2 and min(uids) >= UID_BASE
    assert all("denied" in r.stdout and "root-only" not in r.stdout for r in results)
    assert all("Permission denied" in r.stderr for r in results)  # there, but not readable by the uid


def run_check(*args: str, bwrap: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_ALLOW} | {ENV_BWRAP: bwrap}
    return subprocess.run([sys.executable, "-m", "sandbox", "check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_command_with_the_bundled_bwrap_shows_all_holding():
    done = run_check(bwrap="bundled")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"sandbox: bubblewrap (bundled, {BUNDLED})")
    held = [line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("holds")]
    for prop in ("only the allowlist at /", "the project is out of view", "read-only root",
                 "/root and /etc/shadow hidden", "no network", "own PID namespace",
                 "cannot kill processes outside", "environment scrubbed", "memory cap", "not root"):
        assert any(line.startswith(prop) for line in held), (prop, done.stdout)
    assert "NOT HELD" not in done.stdout and "all 11 hold" in done.stdout
    assert "allowlist, in mount order" in done.stdout and "  ro     /usr" in done.stdout
    assert f"  ro     {sys.prefix}" in done.stdout and "/etc/shadow" not in done.stdout.split("holds")[0]


def test_check_command_refuses_without_a_sandbox():
    done = run_check(bwrap="none")
    assert done.returncode == 1 and done.stdout.startswith("refused: no sandbox")
    assert "holds" not in done.stdout


def test_check_command_on_the_fallback_says_what_does_not_hold():
    done = run_check("--allow-unsandboxed", bwrap="none")
    assert done.returncode == 1
    for prop in ("no network", "own PID namespace", "only the allowlist at /", "the project is out of view"):
        assert f"NOT HELD  {prop}" in done.stdout, done.stdout
    assert "allowlist: none" in done.stdout
    assert "holds     environment scrubbed" in done.stdout


@pytest.mark.parametrize("env_name", ["r2e", "gmsh"])
def test_train_refuses_model_code_without_a_sandbox_before_any_work(env_name, tmp_path):
    from tests.helpers import model_dir, subprocess_env, train_cmd

    env = dict(subprocess_env(), **{ENV_BWRAP: "none"})
    done = subprocess.run(train_cmd(tmp_path, "nobox", "--env", env_name), capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--allow-unsandboxed" in lines[0], done.stderr
    assert not model_dir(tmp_path, "nobox").exists()
    toy = subprocess.run(train_cmd(tmp_path, "toybox", "--env", "toy", "--max-training-steps", "1",
                                   "--groups-per-step", "2", "--rollouts-per-group", "2"),
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert toy.returncode == 0, toy.stderr[-1500:]  # an env that runs no model code needs no sandbox
