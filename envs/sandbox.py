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


def _bwrap_prefix(workdir: Path) -> list[str]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    # The private /tmp must not hide the interpreter or the project when they live under /tmp themselves.
    for needed in {Path(sys.prefix), Path(sys.base_prefix), Path(__file__).resolve().parents[1]}:
        if Path("/tmp") in needed.parents:
            argv += ["--ro-bind", str(needed), str(needed)]
    return argv + ["--bind", str(workdir), str(workdir), "--unshare-all", "--die-with-parent", "--new-session",
                   "--chdir", str(workdir)]


def _user_process_count() -> int:
    import psutil

    uid = os.getuid()
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def _limit(limits: SandboxLimits):
    # RLIMIT_NPROC counts every process (and thread) of the user, not just this tree: allow the ones that exist.
    nproc = _user_process_count() + limits.max_processes

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def clean_env(workdir: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cut(data: bytes, bound: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= bound:
        return text
    return text[:bound] + f"\n[... cut: {len(text) - bound} more characters]"


async def run_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits) -> SandboxResult:
    """Run `argv` in `workdir`; never raises for anything the code itself does."""
    global _warned_no_bwrap
    if bwrap_available():
        argv = _bwrap_prefix(workdir) + argv
    elif not _warned_no_bwrap:
        _warned_no_bwrap = True
        log.warning("bwrap not found: sandboxed code runs with rlimits and a process group only "
                    "(install Debian's bubblewrap for a read-only root and no network)")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=workdir, env=clean_env(workdir), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=_limit(limits),
    )
    timed_out = False
    try:
        stdout, stderr = await asyncio.wait_for(_read_bounded(proc, limits.max_output_chars * 4), limits.wall_s)
    except TimeoutError:
        timed_out = True
        stdout, stderr = b"", b""
    finally:
        _kill_group(proc.pid)
    exit_code = await proc.wait()
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


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
