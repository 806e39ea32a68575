"""The test service: `python -m envs.r2e.test_service --runtime {docker,process} --cache-dir D --host H --port P
--token T --max-concurrent N`. (The issue calls it the Docker test service; `process` is its no-Docker runtime.)

`POST /test` applies the changed files to a fresh copy of the repository and runs its test command: in a fresh
container (`docker`, always removed) or in a sandboxed subprocess on a temp copy of the cached repo (`process`).
The test command runs the model's edits, so it is model code: with `process`, where no sandbox can run
(`envs.sandbox`), the service refuses to start (one line on stderr, exit code 2) unless `--allow-unsandboxed` (or
ART_ALLOW_UNSANDBOXED=1) opts out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

from envs.r2e.cache import read_index
from envs.r2e.wire import TestRequest, TestResult
from envs.sandbox import ALLOW_UNSANDBOXED_HELP, SandboxLimits, run_sandboxed, sandbox_or_exit


def _untar(files_tar_b64: str, into: Path) -> None:
    try:
        data = base64.b64decode(files_tar_b64, validate=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, '..' and links out of the tree
    except (binascii.Error, tarfile.TarError) as exc:
        raise HTTPException(422, f"files_tar_b64 is not a base64 tar: {exc}") from exc


class ProcessRuntime:
    def __init__(self, cache_dir: Path, limits: SandboxLimits):
        self.cache_dir, self.limits = cache_dir, limits

    async def run(self, request: TestRequest) -> TestResult:
        index = read_index(self.cache_dir)
        if request.instance_id not in index:
            raise HTTPException(404, f"instance {request.instance_id} is not in the repo cache")
        shm = Path("/dev/shm")
        workdir = Path(tempfile.mkdtemp(prefix="r2e-test-", dir=shm if os.access(shm, os.W_OK) else None))
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


class DockerRuntime:
    """A fresh container per request from the row's image; files go into /testbed; always removed."""

    def __init__(self) -> None:
        import docker

        self.client = docker.from_env()

    async def run(self, request: TestRequest) -> TestResult:
        return await asyncio.to_thread(self._run, request)

    def _run(self, request: TestRequest) -> TestResult:
        container = self.client.containers.create(request.docker_image, command="sleep infinity",
                                                  working_dir="/testbed", network_disabled=True)
        started = time.monotonic()
        try:
            container.start()
            container.put_archive("/testbed", base64.b64decode(request.files_tar_b64))
            exec_id = self.client.api.exec_create(
                container.id, ["timeout", "--kill-after=5", str(int(request.timeout)), "bash", "-c",
                               request.test_cmd], workdir="/testbed")
            output = self.client.api.exec_start(exec_id).decode("utf-8", errors="replace")
            code = self.client.api.exec_inspect(exec_id)["ExitCode"]
            return TestResult(test_output=output[-200_000:], exit_code=None if code == 124 else code,
                              elapsed=time.monotonic() - started, timed_out=code == 124)
        finally:
            container.remove(force=True)


def build_app(token: str, runtime, max_concurrent: int = 2) -> FastAPI:
    app = FastAPI(title="test service")
    slots = asyncio.Semaphore(max_concurrent)

    def check_token(authorization: str | None = Header(default=None)) -> None:
        if not secrets.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "runtime": type(runtime).__name__}

    @app.post("/test", dependencies=[Depends(check_token)])
    async def test(request: TestRequest) -> TestResult:
        async with slots:
            return await runtime.run(request)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["docker", "process"], default="process")
    parser.add_argument("--cache-dir", type=Path, required=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--token", default=os.environ.get("SERVICE_TOKEN"),
                        help="bearer token clients must send (default: $SERVICE_TOKEN)")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--allow-unsandboxed", action="store_true", help=ALLOW_UNSANDBOXED_HELP)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or SERVICE_TOKEN in the environment) is required")
    if args.runtime == "process":
        if args.cache_dir is None or not (args.cache_dir / "index.json").exists():
            parser.error("--runtime process needs --cache-dir with an index.json (python -m envs.r2e cache ...)")
        sandbox_or_exit(args.allow_unsandboxed)  # before serving anything: no sandbox, no opt-out, no service
        runtime = ProcessRuntime(args.cache_dir, SandboxLimits(memory_mb=args.memory_mb, max_output_chars=200_000))
    else:
        runtime = DockerRuntime()
    uvicorn.run(build_app(args.token, runtime, args.max_concurrent), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
