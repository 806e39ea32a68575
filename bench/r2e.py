"""R2E env costs: `uv run python bench/r2e.py`.

1. Repo copy per rollout for a generated 5 MB repository (goal <= 100 ms).
2. `/test` round trip through the process test service vs the same test command run directly (goal >= 0.8).
3. REPL cell overhead: p50 of a trivial cell's round trip in the sandboxed REPL.
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
from envs.r2e.repl import Repl  # noqa: E402
from envs.r2e.wire import TestRequest  # noqa: E402
from sandbox.run import SandboxLimits  # noqa: E402
from services.process import ServiceProcess  # noqa: E402
from trainer.config import default_rollout_root  # noqa: E402


def make_repo(root: Path, megabytes: float = 5.0) -> Path:
    """About 250 Python modules of ~20 KB: the shape of a small real repository."""
    root.mkdir(parents=True)
    body = "def f_{i}(x):\n    return x + {i}\n\n" * 300
    for i in range(int(megabytes * 1e6 / len(body.format(i=0)))):
        package = root / f"pkg{i % 10}"
        package.mkdir(exist_ok=True)
        (package / f"mod{i}.py").write_text(body.replace("{i}", str(i)))
    return root


def bench_copy(tmp: Path, runs: int = 20) -> None:
    """Into the default rollout root, where rollouts copy their repository."""
    repo = make_repo(tmp / "big")
    root = Path(default_rollout_root())
    root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="bench-", dir=root))
    size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()) / 1e6
    times = []
    for i in range(runs):
        started = time.perf_counter()
        shutil.copytree(repo, dest / f"copy{i}")
        times.append(time.perf_counter() - started)
    shutil.rmtree(dest)
    print(f"repo copy into {root}: {size:.1f} MB, {sum(1 for _ in repo.rglob('*.py'))} files, "
          f"p50 {statistics.median(times) * 1000:.0f} ms (goal <= 100 ms)")
    figure(f"repo copy p50 ({size:.1f} MB into {root})", statistics.median(times) * 1000, "<= 100", "ms")


async def bench_test_service(tmp: Path, runs: int = 12) -> None:
    """Direct and service runs alternate, so drift in the machine's load hits both sides alike."""
    cache = tmp / "cache"
    build_from_samples(cache)
    row = next(r for r in sample_rows() if r.repo_name == "stats")
    fix = SAMPLES / "stats" / "fix"
    direct, service = [], []
    with ServiceProcess("envs.r2e.test_service", "--runtime", "process", "--cache-dir", str(cache)) as svc:
        client = TestServiceClient([svc.url], svc.token)
        request = TestRequest(docker_image=row.docker_image, instance_id=row.instance_id,
                              files_tar_b64=tar_b64(fix, ["stats.py"]))
        for attempt in range(runs + 1):  # the first run of each side warms caches and is not counted
            work = tmp / "direct"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(SAMPLES / "stats" / "repo", work)
            shutil.copy(fix / "stats.py", work / "stats.py")
            started = time.perf_counter()
            subprocess.run(["bash", "run_tests.sh"], cwd=work, capture_output=True)
            if attempt:
                direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            await client.test(request)
            if attempt:
                service.append(time.perf_counter() - started)
        await client.aclose()
    ratio = statistics.median(direct) / statistics.median(service)
    print(f"/test round trip p50 {statistics.median(service) * 1000:.0f} ms vs direct "
          f"{statistics.median(direct) * 1000:.0f} ms over {runs} alternating runs: ratio {ratio:.3f} (goal >= 0.8)")
    figure("/test vs direct (direct p50 / service p50)", ratio, ">= 0.8")


async def bench_repl(tmp: Path, runs: int = 50) -> None:
    work = tmp / "repl"
    work.mkdir()
    repl = Repl(work, SandboxLimits(wall_s=1e9, cpu_s=600), 10)
    await repl.start()
    await repl.run_cell("x = 0")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await repl.run_cell("x += 1")
        times.append(time.perf_counter() - started)
    await repl.close()
    print(f"REPL cell overhead: p50 {statistics.median(times) * 1000:.1f} ms over {runs} trivial cells")
    figure("REPL cell overhead p50 (trivial cell)", statistics.median(times) * 1000, None, "ms")


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy-runs", type=at_least(1), default=20, help="repo copies timed (default 20)")
    parser.add_argument("--test-runs", type=at_least(1), default=12,
                        help="/test round trips timed, and as many direct runs (default 12)")
    parser.add_argument("--cell-runs", type=at_least(1), default=50, help="trivial REPL cells timed (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_copy(Path(tmp), args.copy_runs)
        asyncio.run(bench_test_service(Path(tmp), args.test_runs))
        asyncio.run(bench_repl(Path(tmp), args.cell_runs))


if __name__ == "__main__":
    main()
