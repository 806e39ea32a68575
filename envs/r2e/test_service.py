"""The test service: `python -m envs.r2e.test_service --runtime {docker,process} --cache-dir D --host H --port P
--token T --max-concurrent N`. (The issue calls it the Docker test service; `process` is its no-Docker runtime.)

`POST /test` applies the changed files to a fresh copy of the repository and runs its test command; the files
that could decide the verdict (tests, runner, test config, start-up hooks, shadowing modules: envs/r2e/protected.py)
are dropped first, so the task's own version runs, and the result names them (`ignored_files`). In a fresh
container of the task's image (`docker`, see envs/r2e/docker_runtime.py: no network, CPU/memory/pids limits, always
removed; the service exits 2 at start when no engine answers and removes its own stale containers) or in a sandboxed
subprocess on a temp copy of the cached repo (`process`). A client that disconnects stops its test run.
The test command runs the model's edits, so it is model code: with `process`, where no sandbox can run
(`sandbox.run`), the service refuses to start (one line on stderr, exit code 2) unless `--allow-unsandboxed` (or
ART_ALLOW_UNSANDBOXED=1) opts out. With `process`, the per-request temp dirs live in a locked scratch folder of
this service under `--scratch-root` (`services.owned_dir.ScratchDir`; default /dev/shm where writable): removed at exit;
after a kill -9, by the next start (or, inside a run's folder, the trainer's sweep).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import os
import secrets
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Collection, Coroutine
from pathlib import Path, PurePosixPath
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request

from entry_point import OneLineParser
from envs.r2e.cache import read_index
from envs.r2e.docker_runtime import ContainerLimits, DockerRuntime, engine_problem, remove_stale_containers
from envs.r2e.protected import protected_reason
from envs.r2e.wire import TestRequest, TestResult
from sandbox.run import ALLOW_UNSANDBOXED_HELP, SandboxLimits, run_sandboxed, sandbox_or_exit
from services.idempotency import RecentResults
from services.owned_dir import ScratchDir, exit_cleanly_on_sigterm


def task_files_only(request: TestRequest, original: Collection[str] | None) -> tuple[TestRequest, dict[str, str]]:
    """The request with the changed files that could decide the verdict dropped (envs/r2e/protected.py), and
    {dropped path: why}. Only regular files travel on: a link or device is dropped too. Applied here, in the
    service, for every runtime: the client (and the model behind it) is not trusted to have done it."""
    try:
        data = base64.b64decode(request.files_tar_b64, validate=True)
        if not data:
            return request, {}  # no files at all
        kept, ignored = io.BytesIO(), {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar, tarfile.open(fileobj=kept, mode="w") as out:
            for member in tar.getmembers():
                name = str(PurePosixPath(member.name))
                if member.isdir():
                    continue
                reason = "not a regular file" if not member.isfile() else protected_reason(name, request.test_cmd,
                                                                                           original)
                if reason:
                    ignored[name] = reason
                    continue
                clean = tarfile.TarInfo(name)
                clean.size, clean.mode, clean.mtime = member.size, member.mode & 0o755, member.mtime
                out.addfile(clean, tar.extractfile(member))
    except (binascii.Error, tarfile.TarError) as exc:
        raise HTTPException(422, f"files_tar_b64 is not a base64 tar: {exc}") from exc
    files = base64.b64encode(kept.getvalue()).decode()
    return request.model_copy(update={"files_tar_b64": files}), ignored


def _top_level_names(cache_dir: Path | None, instance_id: str) -> set[str] | None:
    """The task repository's top-level names, from the repo cache (None when this service has no copy of it)."""
    if cache_dir is None:
        return None
    entry = read_index(cache_dir).get(instance_id)
    repo = cache_dir / entry["cache_path"] if entry else None
    return {p.name for p in repo.iterdir()} if repo is not None and repo.is_dir() else None


def _untar(files_tar_b64: str, into: Path) -> None:
    try:
        data = base64.b64decode(files_tar_b64, validate=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, '..' and links out of the tree
    except (binascii.Error, tarfile.TarError) as exc:
        raise HTTPException(422, f"files_tar_b64 is not a base64 tar: {exc}") from exc


class ProcessRuntime:
    def __init__(self, cache_dir: Path, limits: SandboxLimits, scratch: ScratchDir | None = None):
        self.cache_dir, self.limits, self.scratch = cache_dir, limits, scratch

    async def run(self, request: TestRequest) -> TestResult:
        index = read_index(self.cache_dir)
        if request.instance_id not in index:
            raise HTTPException(404, f"instance {request.instance_id} is not in the repo cache")
        workdir = self.scratch.mkdtemp("r2e-test-") if self.scratch else \
            Path(tempfile.mkdtemp(prefix="r2e-test-", dir=_default_scratch_root()))
        workdir.chmod(0o711)  # the sandbox's own uid must reach testbed/ (searchable, not listable)
        try:
            repo = workdir / "testbed"
            await asyncio.to_thread(shutil.copytree, self.cache_dir / index[request.instance_id]["cache_path"], repo)
            _untar(request.files_tar_b64, repo)
            limits = SandboxLimits(**{**self.limits.__dict__, "wall_s": request.timeout,
                                      "cpu_s": int(request.timeout) + 1})
            result = await run_sandboxed(["bash", "-c", request.test_cmd], repo, limits)
            return TestResult(test_output=result.stdout + result.stderr, exit_code=result.exit_code,
                              elapsed=result.elapsed, timed_out=result.timed_out)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


async def _unless_disconnected(work: Coroutine[Any, Any, TestResult], request: Request) -> TestResult:
    """Run `work`, cancelling it (so its container or sandbox is removed now, not at its timeout) when the client
    goes away: nobody would read the result, and a slot of the service would be held for nothing."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise HTTPException(499, "the client disconnected; the test run was stopped")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, HTTPException):
                await asyncio.shield(task)


def build_app(token: str, runtime, max_concurrent: int = 2, cache_dir: Path | None = None) -> FastAPI:
    app = FastAPI(title="test service")
    slots = asyncio.Semaphore(max_concurrent)
    recent = RecentResults()

    def check_token(authorization: str | None = Header(default=None)) -> None:
        if not secrets.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "runtime": type(runtime).__name__}

    @app.post("/test", dependencies=[Depends(check_token)])
    async def test(body: TestRequest, request: Request,
                   idempotency_key: str | None = Header(default=None)) -> TestResult:
        async def in_a_slot() -> TestResult:
            checked, ignored = task_files_only(body, _top_level_names(cache_dir, body.instance_id))
            async with slots:
                result = await _unless_disconnected(runtime.run(checked), request)
            return result.model_copy(update={"ignored_files": ignored})

        return await recent.run(idempotency_key, in_a_slot)  # a retried request id runs once here

    return app


def _default_scratch_root() -> Path | None:
    """Memory-backed where possible: a test copies the whole repository."""
    shm = Path("/dev/shm")
    return shm if os.access(shm, os.W_OK) else None


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["docker", "process"], default="process")
    parser.add_argument("--cache-dir", type=Path, required=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--token", default=os.environ.get("SERVICE_TOKEN"),
                        help="bearer token clients must send (default: $SERVICE_TOKEN)")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=2048, help="memory cap of one test run (both runtimes)")
    parser.add_argument("--cpus", type=float, default=1.0, help="docker: CPUs one container may use")
    parser.add_argument("--pids-limit", type=int, default=256, help="docker: processes one container may hold")
    parser.add_argument("--scratch-root", type=Path, default=_default_scratch_root(),
                        help="process: where this service's scratch folder for test copies goes")
    parser.add_argument("--allow-unsandboxed", action="store_true", help=ALLOW_UNSANDBOXED_HELP)
    args = parser.parse_args(argv)
    for flag, value in (("--cpus", args.cpus), ("--pids-limit", args.pids_limit), ("--memory-mb", args.memory_mb),
                        ("--max-concurrent", args.max_concurrent)):
        if value <= 0:
            parser.error(f"{flag} must be positive")
    if not args.token:
        parser.error("--token (or SERVICE_TOKEN in the environment) is required")
    scratch: ScratchDir | None = None
    if args.runtime == "process":
        if args.cache_dir is None or not (args.cache_dir / "index.json").exists():
            parser.error("--runtime process needs --cache-dir with an index.json (python -m envs.r2e cache ...)")
        sandbox_or_exit(args.allow_unsandboxed)  # before serving anything: no sandbox, no opt-out, no service
        try:
            scratch = ScratchDir(args.scratch_root, "r2e-test-service-")
        except OSError as exc:
            parser.error(f"--scratch-root {args.scratch_root}: {exc.strerror or exc}")
        runtime = ProcessRuntime(args.cache_dir, SandboxLimits(memory_mb=args.memory_mb, max_output_chars=200_000),
                                 scratch)
    else:
        problem = engine_problem()
        if problem:
            print(f"error: --runtime docker: {problem}", file=sys.stderr)
            sys.exit(2)
        stale = remove_stale_containers()
        if stale:
            print(f"removed {len(stale)} stale container(s) of a test service that is gone", file=sys.stderr)
        runtime = DockerRuntime(ContainerLimits(cpus=args.cpus, memory_mb=args.memory_mb, pids=args.pids_limit))
    exit_cleanly_on_sigterm()  # the scratch folder goes at `stop()` too
    try:
        cache_dir = args.cache_dir if args.cache_dir is not None and args.cache_dir.is_dir() else None
        uvicorn.run(build_app(args.token, runtime, args.max_concurrent, cache_dir), host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    finally:
        if scratch is not None:
            scratch.release()


if __name__ == "__main__":
    main()
