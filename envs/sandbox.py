"""Run untrusted, model-written code in a subprocess that cannot hurt the trainer or the host.

Every run gets: its own process group (the whole tree is killed at the end, whatever it spawned), rlimits on
CPU time, address space, file size and process count, a wall-clock timeout, an environment with nothing but
PATH/HOME/LANG (no secrets), output cut to a bound, and its work dir removed afterwards by the caller.
Where bubblewrap (`bwrap`) exists the process also gets a read-only root, one writable dir, a private /tmp,
no network and its own PID namespace; without it a warning says the isolation is rlimits-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sandbox")
_warned_no_bwrap = False


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 2048
    max_processes: int = 64
    max_file_mb: int = 256
    max_output_chars: int = 20_000


@dataclass
class SandboxResult:
    exit_code: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


# Read-only is not enough for these: they hold other users' and root's secrets (keys, tokens, shadow).
HIDDEN_DIRS = ("/root", "/home")
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow")


def _bwrap_prefix(workdir: Path) -> list[str]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    # The interpreter and the project must stay visible even when they live under a hidden or private dir.
    needed = {Path(sys.prefix), Path(sys.base_prefix), Path(__file__).resolve().parents[1]}
    for hidden in HIDDEN_DIRS:
        if Path(hidden).is_dir():
            argv += ["--tmpfs", hidden]
    argv += [arg for f in HIDDEN_FILES if Path(f).exists() for arg in ("--ro-bind", "/dev/null", f)]
    private = [Path("/tmp"), *map(Path, HIDDEN_DIRS)]
    for path in sorted(needed):
        if any(p in path.parents for p in private):
            argv += ["--ro-bind", str(path), str(path)]
    return argv + ["--bind", str(workdir), str(workdir), "--unshare-all", "--die-with-parent", "--new-session",
                   "--chdir", str(workdir)]


def _user_process_count() -> int:
    import psutil

    uid = os.getuid()
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


class PidsCgroup:
    """A pids cgroup capping how many processes a sandboxed tree may hold at once: the fork-bomb stop.

    RLIMIT_NPROC is not enforced for root, so where the pids controller is writable (root, cgroup v1 here) each
    sandbox gets its own cgroup; elsewhere this is a no-op and RLIMIT_NPROC is all there is.
    """

    def __init__(self, max_processes: int):
        self.path: Path | None = None
        if PIDS_CGROUP_ROOT.is_dir() and os.access(PIDS_CGROUP_ROOT, os.W_OK):
            path = PIDS_CGROUP_ROOT / f"art-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_processes))
                self.path = path
            except OSError:
                self.path = None

    def join(self) -> None:
        """Called in the child before exec: it and all it spawns count against the cap."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):  # the killed tree takes a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.02)


def _limit(limits: SandboxLimits, cgroup: PidsCgroup | None = None):
    # RLIMIT_NPROC counts every process (and thread) of the user, not just this tree: allow the ones that exist.
    nproc = _user_process_count() + limits.max_processes

    def apply() -> None:
        if cgroup is not None:
            cgroup.join()
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def clean_env(workdir: Path) -> dict[str, str]:
    # The project's interpreter first, so `python` and `pytest` in model-written commands are ours.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return {"PATH": path, "HOME": str(workdir), "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cut(data: bytes, bound: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= bound:
        return text
    return text[:bound] + f"\n[... cut: {len(text) - bound} more characters]"


def sandboxed_argv(argv: list[str], workdir: Path) -> list[str]:
    global _warned_no_bwrap
    if bwrap_available():
        return _bwrap_prefix(workdir) + argv
    if not _warned_no_bwrap:
        _warned_no_bwrap = True
        log.warning("bwrap not found: sandboxed code runs with rlimits and a process group only "
                    "(install Debian's bubblewrap for a read-only root and no network)")
    return argv


async def spawn_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits, *, stdin: int | None = None,
                          cgroup: PidsCgroup | None = None) -> asyncio.subprocess.Process:
    """Start `argv` sandboxed in `workdir` with piped stdout/stderr; the caller must `kill_group(proc.pid)`
    and remove the cgroup it passed."""
    return await asyncio.create_subprocess_exec(
        *sandboxed_argv(argv, workdir), cwd=workdir, env=clean_env(workdir),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=_limit(limits, cgroup), limit=2**22,
    )


async def run_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits) -> SandboxResult:
    """Run `argv` in `workdir`; never raises for anything the code itself does."""
    started = time.monotonic()
    cgroup = PidsCgroup(limits.max_processes)
    proc = await spawn_sandboxed(argv, workdir, limits, cgroup=cgroup)
    timed_out = False
    try:
        stdout, stderr = await asyncio.wait_for(_read_bounded(proc, limits.max_output_chars * 4), limits.wall_s)
    except TimeoutError:
        timed_out = True
        stdout, stderr = b"", b""
    finally:
        kill_group(proc.pid)
    exit_code = await proc.wait()
    cgroup.remove()
    return SandboxResult(
        exit_code=None if timed_out else exit_code,
        stdout=_cut(stdout, limits.max_output_chars), stderr=_cut(stderr, limits.max_output_chars),
        elapsed=time.monotonic() - started, timed_out=timed_out,
    )


async def _read_bounded(proc: asyncio.subprocess.Process, max_bytes: int) -> tuple[bytes, bytes]:
    """Keep at most `max_bytes` of each stream but drain the rest, so a flood of output cannot fill memory."""

    async def drain(stream: asyncio.StreamReader | None) -> bytes:
        kept = bytearray()
        while stream is not None and (chunk := await stream.read(65536)):
            if len(kept) < max_bytes:
                kept.extend(chunk[: max_bytes - len(kept)])
        return bytes(kept)

    out, err = await asyncio.gather(drain(proc.stdout), drain(proc.stderr))
    await proc.wait()
    return out, err


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
