"""gmsh service overhead: `uv run python bench/gmsh_service.py [--scripts 24]`.

The same batch of meshing scripts runs (a) through the service (HTTP, sandbox, 2 workers) and (b) directly
in a 2-process pool (`python script.py` in a temp dir, no sandbox, no analysis). Prints the throughput ratio
(goal >= 0.85) and the p50 latency the service adds per script (goal < 50 ms).
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from envs.gmsh.client import GmshClient  # noqa: E402
from envs.gmsh.tasks import ensure_default_tasks, load_tasks  # noqa: E402
from envs.gmsh.wire import RunRequest  # noqa: E402
from services.process import ServiceProcess  # noqa: E402
from tests.gmsh_scripts import reference_script  # noqa: E402


def direct(job: tuple[str, bytes, str]) -> float:
    script, geometry, name = job
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(geometry)
        (Path(tmp) / "script.py").write_text(script)
        started = time.perf_counter()
        subprocess.run([sys.executable, "script.py"], cwd=tmp, capture_output=True, check=True)
        return time.perf_counter() - started


async def through_service(jobs, url: str, token: str) -> list[float]:
    client = GmshClient([url], token)
    sem = asyncio.Semaphore(2)

    async def one(job) -> float:
        script, geometry, name = job
        async with sem:
            started = time.perf_counter()
            result = await client.run(RunRequest(script=script, geometry_b64=base64.b64encode(geometry).decode(),
                                                 geometry_name=name, timeout=60))
            assert result.ok, result.error
            return time.perf_counter() - started

    try:
        return await asyncio.gather(*(one(j) for j in jobs))
    finally:
        await client.aclose()


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", type=at_least(1), default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = load_tasks(ensure_default_tasks(Path(tmp), seed=0, n_train=5, n_val=1) / "train.parquet")
        jobs = []
        for i in range(args.scripts):
            t = tasks[i % len(tasks)]
            req, suffix = t.data["requirements"], Path(t.data["geometry_file"]).suffix
            script = reference_script(t.data["kind"], req["characteristic_length"], req["dimension"], suffix=suffix)
            jobs.append((script, (Path(tmp) / t.data["geometry_file"]).read_bytes(), "geometry" + suffix))
        started = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            direct_times = list(pool.map(direct, jobs))
        direct_wall = time.perf_counter() - started
        with ServiceProcess("envs.gmsh.service", "--workers", "2") as svc:
            started = time.perf_counter()
            service_times = asyncio.run(through_service(jobs, svc.url, svc.token))
            service_wall = time.perf_counter() - started
    added = [s - d for s, d in zip(service_times, direct_times, strict=True)]
    print(f"{args.scripts} scripts, 2 workers each way")
    print(f"direct pool: {direct_wall:.2f}s wall, p50 {statistics.median(direct_times) * 1000:.0f} ms per script")
    print(f"service:     {service_wall:.2f}s wall, p50 {statistics.median(service_times) * 1000:.0f} ms per script")
    print(f"throughput ratio (service / direct) = {direct_wall / service_wall:.3f} (goal >= 0.85)")
    print(f"p50 added latency = {statistics.median(added) * 1000:.0f} ms (goal < 50 ms)")
    figure("gmsh throughput service / direct", direct_wall / service_wall, ">= 0.85")
    figure("gmsh p50 added latency per script", statistics.median(added) * 1000, "< 50", "ms")


if __name__ == "__main__":
    main()
