"""The gmsh tool service: `python -m envs.gmsh.service --host 127.0.0.1 --port P --token T --workers N`.

Each script runs in a fresh sandboxed subprocess (gmsh is not thread safe), in a temp dir of its own with the
task's geometry copied in; the mesh left in the gmsh model is saved after the script ends and measured against
the task's geometry by a second, fresh sandboxed process that runs no model code (envs/gmsh/mesh_verifier.py:
the script's own process can forge anything it reports). At most
`--workers` scripts run at once and at most `--queue` wait; past that the service answers 503 + Retry-After.
The scripts are model-written: where no sandbox can run (`sandbox.run`), the service refuses to start (one line
on stderr, exit code 2) unless `--allow-unsandboxed` (or ART_ALLOW_UNSANDBOXED=1) opts out.
The per-script temp dirs live in a locked scratch folder of this service under `--scratch-root`
(`services.owned_dir.ScratchDir`): removed at exit; after a kill -9, by the next start (or the trainer's sweep).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

from entry_point import OneLineParser
from envs.gmsh.wire import RunRequest, RunResult
from sandbox.run import ALLOW_UNSANDBOXED_HELP, SandboxLimits, run_sandboxed, sandbox_or_exit
from services.idempotency import RecentResults
from services.owned_dir import ScratchDir, exit_cleanly_on_sigterm

RUNNER = Path(__file__).with_name("script_runner.py")
VERIFIER = Path(__file__).with_name("mesh_verifier.py")
MESH_FILE = "result.msh"  # where the runner saves the model's mesh after the script
MAX_MESH_BYTES = 256 * 1024 * 1024


class GmshRunner:
    def __init__(self, task_store: Path | None, workers: int, queue: int, limits: SandboxLimits,
                 scratch: ScratchDir | None = None):
        self.scratch = scratch
        self.task_store = task_store.resolve() if task_store else None
        self.slots = asyncio.Semaphore(workers)
        self.capacity = workers + queue
        self.in_service = 0
        self.limits = limits

    def _geometry(self, request: RunRequest) -> bytes:
        if request.geometry_b64 is not None:
            try:
                return base64.b64decode(request.geometry_b64, validate=True)
            except binascii.Error as exc:
                raise HTTPException(422, f"geometry_b64 is not valid base64: {exc}") from exc
        if self.task_store is None:
            raise HTTPException(422, "geometry_file needs a service started with --task-store")
        path = (self.task_store / request.geometry_file).resolve()
        if self.task_store not in path.parents or not path.is_file():
            raise HTTPException(404, f"geometry_file {request.geometry_file!r} is not in the task store")
        return path.read_bytes()

    async def run(self, request: RunRequest) -> RunResult:
        if self.in_service >= self.capacity:
            raise HTTPException(503, "all workers busy and the queue is full", headers={"Retry-After": "1"})
        geometry = self._geometry(request)
        self.in_service += 1
        try:
            async with self.slots:
                return await self._run(request, geometry)
        finally:
            self.in_service -= 1

    async def _run(self, request: RunRequest, geometry: bytes) -> RunResult:
        limits = SandboxLimits(**{**self.limits.__dict__, "wall_s": min(request.timeout, self.limits.wall_s),
                                  "cpu_s": int(min(request.timeout, self.limits.wall_s)) + 1})
        workdir = self._mkdtemp("gmsh-run-")
        try:
            (workdir / request.geometry_name).write_bytes(geometry)
            (workdir / "script.py").write_text(request.script)
            result = await run_sandboxed([sys.executable, str(RUNNER), "script.py", MESH_FILE], workdir, limits)
            stats: dict = {}
            if not result.timed_out:
                stats = await self._verify(workdir / MESH_FILE, request.geometry_name, geometry, limits)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        error = None
        if result.timed_out:
            error = f"script did not finish within {limits.wall_s:.0f} s"
        elif result.exit_code != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            error = f"script failed (exit code {result.exit_code})" + (f": {lines[-1].strip()}" if lines else "")
        elif stats.get("rejected"):
            error = stats["rejected"]
        elif not stats:
            error = "the mesh could not be measured"
        return RunResult(ok=error is None, exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                         elapsed=result.elapsed, timed_out=result.timed_out, stats=stats, error=error)

    def _mkdtemp(self, prefix: str) -> Path:
        return self.scratch.mkdtemp(prefix) if self.scratch else Path(tempfile.mkdtemp(prefix=prefix))

    async def _verify(self, mesh: Path, geometry_name: str, geometry: bytes, limits: SandboxLimits) -> dict:
        """The stats, from a fresh sandboxed process that runs no model code (envs/gmsh/mesh_verifier.py), given
        the service's own copy of the geometry and the mesh file the script's process left, if a plain file."""
        checkdir = self._mkdtemp("gmsh-check-")
        try:
            (checkdir / geometry_name).write_bytes(geometry)
            if not (mesh.is_file() and not mesh.is_symlink()):
                return {"initialized": False}  # gmsh was never initialised (or the file was replaced): no mesh
            if mesh.stat().st_size > MAX_MESH_BYTES:
                return {"initialized": True, "rejected": f"the mesh file is over {MAX_MESH_BYTES >> 20} MiB"}
            shutil.copyfile(mesh, checkdir / MESH_FILE)
            verdict = await run_sandboxed([sys.executable, str(VERIFIER), MESH_FILE, geometry_name, "stats.json"],
                                          checkdir, limits)
            stats_path = checkdir / "stats.json"
            if verdict.timed_out or not stats_path.is_file():
                return {"initialized": True, "rejected": "the mesh could not be measured "
                        f"({'timed out' if verdict.timed_out else f'exit code {verdict.exit_code}'})"}
            return json.loads(stats_path.read_text())
        finally:
            shutil.rmtree(checkdir, ignore_errors=True)


def build_app(token: str, task_store: Path | None = None, workers: int = 2, queue: int = 64,
              timeout: float = 60.0, memory_mb: int = 2048, scratch: ScratchDir | None = None) -> FastAPI:
    app = FastAPI(title="gmsh tool service")
    recent = RecentResults()
    runner = GmshRunner(task_store, workers, queue, SandboxLimits(wall_s=timeout, cpu_s=int(timeout) + 1,
                                                                  memory_mb=memory_mb), scratch)

    def check_token(authorization: str | None = Header(default=None)) -> None:
        if not secrets.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "in_service": runner.in_service, "capacity": runner.capacity}

    @app.post("/run", dependencies=[Depends(check_token)])
    async def run(request: RunRequest, idempotency_key: str | None = Header(default=None)) -> RunResult:
        return await recent.run(idempotency_key, lambda: runner.run(request))  # a retried id runs once here

    return app


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("SERVICE_TOKEN"),
                        help="bearer token clients must send (default: $SERVICE_TOKEN)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=64, help="requests that may wait for a worker")
    parser.add_argument("--timeout", type=float, default=60.0, help="upper bound on a script's wall time (s)")
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--task-store", type=Path, default=None, help="directory geometry_file names refer to")
    parser.add_argument("--scratch-root", type=Path, default=None,
                        help="where this service's scratch folder for script temp dirs goes (default: the temp dir)")
    parser.add_argument("--allow-unsandboxed", action="store_true", help=ALLOW_UNSANDBOXED_HELP)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or SERVICE_TOKEN in the environment) is required")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    sandbox_or_exit(args.allow_unsandboxed)  # before serving anything: no sandbox, no opt-out, no service
    try:
        scratch = ScratchDir(args.scratch_root, "gmsh-service-")
    except OSError as exc:
        parser.error(f"--scratch-root {args.scratch_root}: {exc.strerror or exc}")
    exit_cleanly_on_sigterm()  # the scratch folder goes at `stop()` too
    try:
        app = build_app(args.token, args.task_store, args.workers, args.queue, args.timeout, args.memory_mb, scratch)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        scratch.release()


if __name__ == "__main__":
    main()
