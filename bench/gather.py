"""Gather throughput vs the ideal: `uv run python bench/gather.py [--latency 0.2] [--waves 10]`.

A fake OpenAI-compatible server answers every request after a fixed latency, so a perfect gather loop finishes
C concurrent rollouts every `latency` seconds. Prints achieved / ideal rollouts per second per concurrency
(goal >= 0.95 at 64). Overhead measured here is ours and ART's: semaphore, throttle, gather, HTTP client.
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

from backends.openai_server import free_port  # noqa: E402
from bench.figures import figure  # noqa: E402
from envs.scenario import Scenario  # noqa: E402
from rollouts.context import RolloutContext, RolloutSettings  # noqa: E402
from rollouts.gather import GatherLimits, freeze_startup_heap, gather_step  # noqa: E402
from rollouts.toy import rollout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fake_server_process(latency: float):
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
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait()


async def measure(base_url: str, concurrency: int, latency: float, waves: int, per_group: int = 8):
    model = art.Model(name="fake", project="bench", inference_base_url=base_url, inference_api_key="k")
    ctx = RolloutContext(model=model, settings=RolloutSettings(), max_connections=concurrency)
    groups = concurrency * waves // per_group
    scenarios = [Scenario(id=f"s{i}", prompt="Say a.", data={"target": "a"}) for i in range(groups)]
    limits = GatherLimits.create(concurrency, 1e6)
    freeze_startup_heap()  # as train.py does before its first step
    # One full wave first: a training run keeps its connections from step to step, so opening them is not measured.
    await gather_step(scenarios[: max(1, concurrency // per_group)], rollout, ctx, per_group, limits, 0.0)
    started = time.perf_counter()
    result = await gather_step(scenarios, rollout, ctx, per_group, limits, 0.0)
    elapsed = time.perf_counter() - started
    done = sum(len(g.trajectories) for g in result)
    await ctx.aclose()
    return done / elapsed, concurrency / latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    args = parser.parse_args()
    print(f"latency {args.latency}s, {args.waves} waves per concurrency")
    for c in args.concurrency:
        with fake_server_process(args.latency) as base_url:
            achieved, ideal = asyncio.run(measure(base_url, c, args.latency, args.waves))
        print(f"concurrency {c:3d}: {achieved:7.1f} rollouts/s, ideal {ideal:7.1f}, ratio {achieved / ideal:.3f}")
        figure(f"gather achieved / ideal, {c} concurrent, latency {args.latency} s", achieved / ideal, ">= 0.95")


if __name__ == "__main__":
    main()
