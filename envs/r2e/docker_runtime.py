"""The test service's `docker` runtime: every `/test` runs in a fresh container of the task's image, then the
container is removed, whatever happened.

It drives the `docker` CLI (not the Python SDK: the CLI is what `docker.io` installs and what a user debugs with,
and it keeps the lock free of one more package): one `docker run -i --rm` per request, the changed files as a tar on
its stdin. Each container gets `--network none`, a CPU, memory (no swap) and pids limit, no capabilities, and carries
a label naming its owner (host, service pid and the pid's start time), so:
- the service removes its container after success (the CLI returns once the engine removed it), error, timeout
  (`docker kill`) and client disconnect (the request is cancelled; removal is shielded from the cancellation);
- a service killed with kill -9 cannot clean up, so the test command runs under `timeout -s KILL` (the container
  dies by itself a grace period after the request's timeout) and `--rm` (the engine then removes it);
- a new service removes at start the labelled containers whose owner process is gone (`remove_stale_containers`),
  and never those of another live service (tests and services may share an engine).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass

import psutil
from fastapi import HTTPException

from envs.r2e.wire import TestRequest, TestResult

OWNER_LABEL = "art.r2e.owner"  # "<host>:<pid>:<pid start time>" of the process that created the container
ROLE_LABEL = "art.r2e.role"
SERVICE_ROLE = "test-service"
START_HINT = "start one with `sudo scripts/docker_engine.sh start`"


class DockerError(RuntimeError):
    """A docker CLI call failed; the message holds its command and the last line of its stderr."""


def docker_cli() -> str | None:
    return shutil.which("docker")


def docker(*args: str, stdin: bytes | None = None, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess:
    """One docker CLI call (bytes in, bytes out); raises DockerError naming the command when `check` and it fails."""
    cli = docker_cli()
    if cli is None:
        raise DockerError(f"no docker CLI on PATH ({START_HINT})")
    try:
        done = subprocess.run([cli, *args], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DockerError(f"`docker {args[0]}` did not answer within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise DockerError(f"`docker {args[0]}` failed (exit {done.returncode}): {last}")
    return done


def engine_problem(timeout: float = 20) -> str | None:
    """None when a Docker engine answers, else one line saying why not and how to start one."""
    try:
        version = docker("version", "--format", "{{.Server.Version}}", timeout=timeout).stdout.decode().strip()
    except DockerError as exc:
        return f"no Docker engine answers ({exc}); {START_HINT}"
    return None if version else f"no Docker engine answers; {START_HINT}"


def image_exists(name: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", name, check=False, timeout=30).returncode == 0


def owner_label() -> str:
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.2f}"


def _owner_alive(owner: str) -> bool:
    """Whether the process named by an owner label still runs here (an owner on another host counts as alive: this
    host cannot tell, so its containers are not ours to remove)."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    pid, _, started = rest.partition(":")
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (ValueError, psutil.Error):
        return False


def labelled_containers(role: str = SERVICE_ROLE) -> dict[str, str]:
    """Container id -> owner label, of every container (running or not) that carries our role label."""
    done = docker("ps", "-a", "--no-trunc", "--filter", f"label={ROLE_LABEL}={role}",
                  "--format", f'{{{{.ID}}}} {{{{.Label "{OWNER_LABEL}"}}}}', timeout=60)
    pairs = (line.split(" ", 1) for line in done.stdout.decode().splitlines() if line.strip())
    return {cid: (rest[0] if rest else "") for cid, *rest in pairs}


def remove_stale_containers(role: str = SERVICE_ROLE) -> list[str]:
    """Remove the containers of `role` whose owner process is gone (a killed service); returns their ids."""
    stale = [cid for cid, owner in labelled_containers(role).items() if not _owner_alive(owner)]
    if stale:
        docker("rm", "-f", *stale, check=False, timeout=120)
    return stale


@dataclass(frozen=True)
class ContainerLimits:
    cpus: float = 1.0
    memory_mb: int = 2048
    pids: int = 256
    max_output_chars: int = 200_000
    # A container whose service died outlives its request's timeout by this much at most (then `timeout -s KILL`).
    orphan_grace_s: float = 30.0


def checked_tar(files_tar_b64: str) -> bytes:
    """The request's tar, refused (422) unless every member is a plain file or dir inside /testbed."""
    try:
        data = base64.b64decode(files_tar_b64, validate=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                tarfile.data_filter(member, "/testbed")  # raises for absolute paths, '..' and links out of the tree
                if not (member.isfile() or member.isdir()):
                    raise tarfile.TarError(f"{member.name}: only files and directories may travel")
    except (binascii.Error, tarfile.TarError) as exc:
        raise HTTPException(422, f"files_tar_b64 is not a safe base64 tar: {exc}") from exc
    return data


async def _keep_tail(stream: asyncio.StreamReader | None, kept: bytearray, max_bytes: int) -> None:
    """Read all of a stream but keep only its last `max_bytes` (the test summary is at the end)."""
    while stream is not None and (chunk := await stream.read(65536)):
        kept.extend(chunk)
        if len(kept) > 2 * max_bytes:
            del kept[:-max_bytes]


# Runs in the container: unpack the changed files (a tar on stdin) into /testbed, then the test command under a
# `timeout -s KILL` that outlives the request's own timeout by a grace period (it only matters when the service died).
_IN_CONTAINER = 'tar -x -f - -C /testbed --no-same-owner && exec timeout -s KILL "$1" bash -c "$2"'


class DockerRuntime:
    """One `docker run -i --rm` per request: the files travel on stdin, so the happy path is a single CLI call, and
    the CLI returns only once the engine has removed the container."""

    def __init__(self, limits: ContainerLimits | None = None) -> None:
        self.limits = limits or ContainerLimits()
        self.owner = owner_label()

    def _run_args(self, request: TestRequest, name: str) -> list[str]:
        lim = self.limits
        return [
            "run", "--interactive", "--rm", "--pull", "never", "--name", name,
            "--label", f"{ROLE_LABEL}={SERVICE_ROLE}", "--label", f"{OWNER_LABEL}={self.owner}",
            "--network", "none", "--cpus", str(lim.cpus), "--memory", f"{lim.memory_mb}m",
            "--memory-swap", f"{lim.memory_mb}m", "--pids-limit", str(lim.pids),
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--workdir", "/testbed",
            request.docker_image,
            "bash", "-c", _IN_CONTAINER, "r2e-test", str(int(request.timeout + lim.orphan_grace_s)), request.test_cmd,
        ]

    async def _docker(self, *args: str) -> int:
        proc = await asyncio.create_subprocess_exec(docker_cli() or "docker", *args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    async def _remove(self, name: str, wait_s: float = 30) -> None:
        """`rm -f`, then wait until it is gone: with `--rm` the engine may be removing it already, and then `rm -f`
        returns at once ("removal already in progress") while the container still exists."""
        await self._docker("rm", "-f", name)
        deadline = time.monotonic() + wait_s
        while await self._docker("container", "inspect", "--format", "{{.Id}}", name) == 0:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    async def run(self, request: TestRequest) -> TestResult:
        files = checked_tar(request.files_tar_b64)
        name = f"r2e-test-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            docker_cli() or "docker", *self._run_args(request, name), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        bound = self.limits.max_output_chars * 4
        out, err = bytearray(), bytearray()
        drains = asyncio.gather(_keep_tail(proc.stdout, out, bound), _keep_tail(proc.stderr, err, bound))
        timed_out, clean_exit = False, False
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may die before reading them
                assert proc.stdin is not None
                proc.stdin.write(files)
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), request.timeout)
                clean_exit = True
            except TimeoutError:
                timed_out = True
                await self._docker("kill", name)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drains, 5)
            if not clean_exit:  # a clean `run --rm` has removed it already
                await asyncio.shield(self._remove(name))  # done even when the request is cancelled
        text = (bytes(out) + bytes(err)).decode("utf-8", errors="replace")
        if proc.returncode == 125 and not timed_out:  # docker's own failure, before the test command ran
            if "image" in text.lower() and ("no such" in text.lower() or "not found" in text.lower()
                                            or "unable to find" in text.lower()):
                raise HTTPException(404, f"image {request.docker_image} is not in the Docker engine (build the "
                                         "bundled samples' images with `python -m envs.r2e images`)")
            raise HTTPException(500, f"docker run failed: {text[-500:]}")
        return TestResult(test_output=text[-self.limits.max_output_chars:],
                          exit_code=None if timed_out else proc.returncode,
                          elapsed=time.monotonic() - started, timed_out=timed_out)
