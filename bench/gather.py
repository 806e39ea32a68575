"""Gather throughput vs the ideal: `uv run python bench/gather.py [--latency 0.2] [--waves 10] [--no-pin]`.

A fake OpenAI-compatible server answers every request after a fixed latency, so a perfect gather loop finishes
C concurrent rollouts every `latency` seconds. Prints achieved / ideal rollouts per second at 8, 32, 64, 128 and
256 concurrent (goals >= 0.95 up to 64, >= 0.90 at 256), with the CPU each process spent per rollout. Overhead
measured here is ours and ART's: semaphore, throttle, ART's gather helpers, the HTTP client (rollouts/model_client.py,
the path a training run uses).

The fake server (tests/fake_openai_server.py) stands in for vLLM, which runs on its own GPU machine. Here it shares
the trainer's machine, so it is kept out of the trainer's way:
- its own core: the trainer is pinned to the first core it may use and the server to the others (`--no-pin` leaves
  both to the scheduler). Unpinned, loopback wake-ups often put both processes on one core while the other idles,
  and the ratio drops for a reason that has nothing to do with the trainer;
- light: aiohttp's server (its C parser costs a fraction of uvicorn + FastAPI per request, which at high
  concurrency left a burst unread for a whole latency period), and no torch: it used to import torch/transformers/
  ART with the test helpers, and a full garbage collection of that heap stalled it mid-run.
It still reads and parses every request over HTTP, holds it for the latency and encodes a fresh answer.

Where the rest goes at the highest concurrency: the trainer's own CPU per rollout (by cProfile: aiohttp's
request/response path first, then asyncio, pydantic and json, socket sends; ART's gather and our code are small
parts), met by answers that, with a fixed latency, keep arriving in bursts: each loop iteration handles every answer
that is ready, so an answer waits for the others of its batch at each hop. Slot workers (rollouts/gather.py) took
out one hop (a waiter task woken between a rollout's end and the next one's start) and most of the cost of making
every rollout task before the first request. More waves, uvloop (client or server) and garbage-collector
thresholds did not move it beyond the spread between runs. The figures of each finding are in `_GATHER_WHY`
(bench/run_all.py), which docs/PERFORMANCE.md shows beside this bench's results when a goal is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

# ART, httpx and the rollout kit are imported where they are used, once the flags are parsed: --help is instant.

ROOT = Path(__file__).resolve().parents[1]
GOALS = {8: ">= 0.95", 32: ">= 0.95", 64: ">= 0.95", 256: ">= 0.90"}


@contextlib.contextmanager
def fake_server_process(latency: float):
    """The fake server's base URL (bench/async_pipeline.py uses it too)."""
    with fake_server(latency) as (base_url, _pid):
        yield base_url


def split_cores() -> tuple[set[int], set[int]] | None:
    """(the trainer's core, the fake server's cores), or None where this process may use only one core."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) > 1 else None


@contextlib.contextmanager
def fake_server(latency: float, cores: set[int] | None = None):
    """The model server runs in its own process (on `cores` when given), as vLLM does on its own machine: the
    trainer's event loop is measured alone."""
    import httpx
    from art.utils.network import find_free_tcp_port

    port = find_free_tcp_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_openai_server", str(port), str(latency)], cwd=ROOT)
    if cores:
        os.sched_setaffinity(proc.pid, cores)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m"}, timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait()


async def measure(base_url: str, server_pid: int, concurrency: int, latency: float, waves: int, per_group: int = 8):
    import art
    import httpx
    import psutil

    from envs.toy.rollout import rollout
    from rollouts.context import RolloutContext, RolloutSettings
    from rollouts.gather import GatherLimits, freeze_startup_heap, gather_step
    from rollouts.scenario import Scenario

    model = art.Model(name="fake", project="bench", inference_base_url=base_url, inference_api_key="k")
    ctx = RolloutContext(model=model, settings=RolloutSettings(), max_connections=concurrency)
    groups = concurrency * waves // per_group
    scenarios = [Scenario(id=f"s{i}", prompt="Say a.", data={"target": "a"}) for i in range(groups)]
    limits = GatherLimits.create(concurrency, 1e6)
    freeze_startup_heap()  # as train.py does before its first step
    # One full wave first: a training run keeps its connections from step to step, so opening them is not measured.
    await gather_step(scenarios[: max(1, concurrency // per_group)], rollout, ctx, per_group, limits, 0.0)
    me, server = psutil.Process(), psutil.Process(server_pid)
    cpu_before = (sum(me.cpu_times()[:2]), sum(server.cpu_times()[:2]))
    started = time.perf_counter()
    result = await gather_step(scenarios, rollout, ctx, per_group, limits, 0.0)
    elapsed = time.perf_counter() - started
    client_cpu = sum(me.cpu_times()[:2]) - cpu_before[0]
    server_cpu = sum(server.cpu_times()[:2]) - cpu_before[1]
    done = sum(len(g.trajectories) for g in result)
    await ctx.aclose()
    peak = httpx.get(base_url.removesuffix("/v1") + "/stats", timeout=5).json()["peak"]
    if peak != concurrency:
        raise RuntimeError(f"the server saw {peak} requests in flight at most, not {concurrency}")
    return done / elapsed, concurrency / latency, client_cpu / done, server_cpu / done


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=at_least(0.0, float), default=0.2)
    parser.add_argument("--waves", type=at_least(1), default=10)
    parser.add_argument("--concurrency", type=at_least(1), nargs="+", default=[8, 32, 64, 128, 256])
    parser.add_argument("--no-pin", action="store_true", help="leave the trainer and the fake server unpinned")
    args = parser.parse_args()
    print(f"latency {args.latency}s, {args.waves} waves per concurrency")
    split = None if args.no_pin else split_cores()
    if split is not None:
        os.sched_setaffinity(0, split[0])
        print(f"trainer on core {min(split[0])}, fake server on core(s) {','.join(map(str, sorted(split[1])))}")
    for c in args.concurrency:
        with fake_server(args.latency, split[1] if split else None) as (base_url, pid):
            achieved, ideal, client_s, server_s = asyncio.run(measure(base_url, pid, c, args.latency, args.waves))
        print(f"concurrency {c:3d}: {achieved:7.1f} rollouts/s, ideal {ideal:7.1f}, ratio {achieved / ideal:.3f}; "
              f"CPU per rollout: trainer {client_s * 1e3:.2f} ms, fake server {server_s * 1e3:.2f} ms")
        figure(f"gather achieved / ideal, {c} concurrent, latency {args.latency} s", achieved / ideal, GOALS.get(c))


if __name__ == "__main__":
    main()
