"""Gather throughput vs the ideal: `uv run python bench/gather.py [--latency 0.2] [--waves 10]`.

A fake OpenAI-compatible server answers every request after a fixed latency, so a perfect gather loop finishes
C concurrent rollouts every `latency` seconds. Prints achieved / ideal rollouts per second at 8, 32, 64, 128 and
256 concurrent (goals >= 0.95 up to 64, >= 0.90 at 256), with the CPU each process spent per rollout. Overhead
measured here is ours and ART's: semaphore, throttle, ART's gather helpers, the HTTP client (rollouts/model_client.py,
the path a training run uses).

The fake server (tests/fake_openai_server.py) stands in for vLLM, which runs on its own GPU machine; here it shares
the trainer's 2 cores, so it is kept cheap: aiohttp's server (C parser), ~0.14 ms of CPU per request, where uvicorn
+ FastAPI cost 0.4-0.7 ms and at 64 in flight left a burst of requests unread for a whole latency period (0.83 of
ideal at 64 with it, 0.95 without). It still reads and parses every request over HTTP, holds it for the latency and
encodes a fresh answer. Profile at 256 in flight (2,560 rollouts, 0.2 s): client ~0.26 ms CPU per rollout, of which
aiohttp's request/response path ~30% plus socket calls ~12%, the garbage collector ~14%, asyncio tasks/futures ~15%,
pydantic (answer parse, Trajectory) ~11%, ART's gather + tqdm ~5%, our rollout code ~7%. Wall-time loss at 256
(~230 ms over 2 s): start-up before the first request ~20 ms (2,560 tasks made up front by ART's groups), the first
waves' bursts (all 256 answers land together and are handled one by one: +39 ms latency in wave 0, ~+6 ms by wave
5), and the spread of slots at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

import art  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from backends.openai_server import free_port  # noqa: E402
from bench.figures import figure  # noqa: E402
from envs.scenario import Scenario  # noqa: E402
from rollouts.context import RolloutContext, RolloutSettings  # noqa: E402
from rollouts.gather import GatherLimits, freeze_startup_heap, gather_step  # noqa: E402
from rollouts.toy import rollout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOALS = {8: ">= 0.95", 32: ">= 0.95", 64: ">= 0.95", 256: ">= 0.90"}


@contextlib.contextmanager
def fake_server_process(latency: float):
    """The fake server's base URL (bench/async_pipeline.py uses it too)."""
    with fake_server(latency) as (base_url, _pid):
        yield base_url


@contextlib.contextmanager
def fake_server(latency: float):
    """The model server runs in its own process, as vLLM does: the trainer's event loop is measured alone."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_openai_server", str(port), str(latency)], cwd=ROOT)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    args = parser.parse_args()
    print(f"latency {args.latency}s, {args.waves} waves per concurrency")
    for c in args.concurrency:
        with fake_server(args.latency) as (base_url, pid):
            achieved, ideal, client_s, server_s = asyncio.run(measure(base_url, pid, c, args.latency, args.waves))
        print(f"concurrency {c:3d}: {achieved:7.1f} rollouts/s, ideal {ideal:7.1f}, ratio {achieved / ideal:.3f}; "
              f"CPU per rollout: trainer {client_s * 1e3:.2f} ms, fake server {server_s * 1e3:.2f} ms")
        figure(f"gather achieved / ideal, {c} concurrent, latency {args.latency} s", achieved / ideal, GOALS.get(c))


if __name__ == "__main__":
    main()
