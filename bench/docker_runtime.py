"""The test service's two runtimes against running the tests directly: `uv run python bench/docker_runtime.py`.

One sample (stats, its reference fix) is tested over and over, three ways in turn so drift in the machine's load
hits all alike: `bash run_tests.sh` on a fresh copy of the repo (no sandbox: the floor), `/test` through the
service with the `process` runtime (copy + bwrap sandbox), and `/test` with the `docker` runtime (a fresh container
per request: create, copy the files in, start, remove). Also the bare cost of `docker run --rm IMAGE true`, the part
of a docker round trip that no service code can remove. Needs a Docker engine (`scripts/docker_engine.sh start`)
and builds the sample images when they are missing (`python -m envs.r2e images`).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from envs.r2e.cache import SAMPLES, build_from_samples, sample_rows  # noqa: E402
from envs.r2e.client import TestServiceClient, tar_b64  # noqa: E402
from envs.r2e.docker_runtime import docker, engine_problem  # noqa: E402
from envs.r2e.images import build_sample_images  # noqa: E402
from envs.r2e.wire import TestRequest  # noqa: E402
from services.process import ServiceProcess  # noqa: E402


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


async def measure(tmp: Path, runs: int) -> dict[str, list[float]]:
    cache = tmp / "cache"
    build_from_samples(cache)
    row = next(r for r in sample_rows() if r.repo_name == "stats")
    fix = SAMPLES / "stats" / "fix"
    request = TestRequest(docker_image=row.docker_image, instance_id=row.instance_id,
                          files_tar_b64=tar_b64(fix, ["stats.py"]))
    times: dict[str, list[float]] = {"direct": [], "process": [], "docker": [], "docker run true": []}
    with ServiceProcess("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(cache)) as process_svc, \
            ServiceProcess("envs.r2e.test_service", "--runtime", "docker") as docker_svc:
        clients = {"process": TestServiceClient([process_svc.url], process_svc.token),
                   "docker": TestServiceClient([docker_svc.url], docker_svc.token)}
        for attempt in range(runs + 1):  # the first round warms caches and is not counted
            work = tmp / "direct"
            shutil.rmtree(work, ignore_errors=True)
            started = time.perf_counter()
            shutil.copytree(SAMPLES / "stats" / "repo", work)
            shutil.copy(fix / "stats.py", work / "stats.py")
            subprocess.run(["bash", "run_tests.sh"], cwd=work, capture_output=True, check=True)
            lap = {"direct": time.perf_counter() - started}
            for name, client in clients.items():
                started = time.perf_counter()
                result = await client.test(request)
                lap[name] = time.perf_counter() - started
                if "4 passed" not in result.test_output:
                    raise SystemExit(f"{name}: the reference fix did not pass: {result.test_output[-500:]}")
            started = time.perf_counter()
            docker("run", "--rm", "--network", "none", row.docker_image, "true")
            lap["docker run true"] = time.perf_counter() - started
            if attempt:
                for name, value in lap.items():
                    times[name].append(value)
        for client in clients.values():
            await client.aclose()
    return times


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=at_least(1), default=12)
    args = parser.parse_args()
    problem = engine_problem()
    if problem:
        print(f"cannot bench the docker runtime: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    build_sample_images(log=lambda line: None)
    print(f"sample images ready in {time.monotonic() - started:.1f} s (built only when missing or changed)")
    with tempfile.TemporaryDirectory() as tmp:
        times = asyncio.run(measure(Path(tmp), args.runs))
    direct, process, in_docker = (p50_ms(times[k]) for k in ("direct", "process", "docker"))
    for name, values in times.items():
        print(f"{name:>16}: p50 {p50_ms(values):6.0f} ms, min {min(values) * 1000:6.0f} ms over {len(values)} runs")
    print(f"ratios (p50): direct / process {direct / process:.3f}, direct / docker {direct / in_docker:.3f}, "
          f"process / docker {process / in_docker:.3f}; a bare `docker run --rm` is "
          f"{p50_ms(times['docker run true']):.0f} ms of the docker round trip's {in_docker:.0f} ms")
    figure("/test docker runtime p50 (stats, reference fix)", in_docker, None, "ms")
    figure("/test process runtime p50 (same request)", process, None, "ms")
    figure("run_tests.sh directly p50 (copy + tests, no sandbox)", direct, None, "ms")
    figure("direct / docker (p50)", direct / in_docker)
    figure("process / docker (p50)", process / in_docker)
    figure("bare `docker run --rm IMAGE true` p50", p50_ms(times["docker run true"]), None, "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
