"""The frozen executor's overhead: calls/s and tokens/s through `OpenAIExecutor` at 8 and 32 concurrent vs the same
calls sent straight to the endpoint. `uv run python bench/executor.py` (`--base-model tiny-random`: a quick check).

The endpoint is the one a planner or workflow run talks to by default: `CPUBackend` serving the embedded model
(SmolLM2-135M-Instruct), registered as `train.py` registers it, asked for the base model by its own name (the
adapter off); the executor is made from the registered model by `ExecutorOwner.executor_for_model`, as the envs make
it. The prompts are the planner's executor prompts (`solve_messages`) for the subproblems of generated plans;
max_tokens 32 and temperature 0 (the executor's default) on both paths, so both decode the same tokens. For each
concurrency C, `--rounds` x C calls run with at most C in flight: through the executor (its own semaphore, the
OpenAI SDK), and raw (an asyncio semaphore over one httpx client, JSON in and out), `--repeats` times each way in
the order raw, executor, executor, raw, so a drift in the machine's load falls on both. A wave's rate is its calls
(or completion tokens) over its wall time; each path's figure is the median of its waves, since other work on the
machine only ever slows a wave (on the 2 shared cores one wave in eight can take half again as long). Executor / raw
is the executor's overhead (goal >= 0.95). Connections are opened (one token each) before timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from backends.named_models import SMOLLM2, TINY_RANDOM, embedded_model  # noqa: E402
from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from envs.planner.plan import solve_messages  # noqa: E402
from envs.planner.problems import generate  # noqa: E402

if TYPE_CHECKING:  # heavy (ART, torch): `measure` imports them once the flags are parsed, so --help is instant
    import httpx

Messages = list[dict[str, str]]


def prompts(count: int) -> list[Messages]:
    """What the executor is asked in a planner run: each subproblem of the generator's own plans, in turn."""
    subproblems = [s for scenario in generate(count, seed=7) for s in json.loads(scenario.data["plan"])["subproblems"]]
    return [solve_messages(s) for s in subproblems[:count]]


@dataclass
class Wave:
    calls: int
    tokens: int
    seconds: float


async def executor_wave(executor, batch: list[Messages], max_tokens: int) -> Wave:
    started = time.perf_counter()
    replies = await asyncio.gather(*(executor.complete(m, max_tokens=max_tokens) for m in batch))
    return Wave(len(replies), sum(r.completion_tokens for r in replies), time.perf_counter() - started)


async def raw_wave(client: httpx.AsyncClient, model: str, batch: list[Messages], max_tokens: int,
                   concurrency: int) -> Wave:
    slots = asyncio.Semaphore(concurrency)

    async def one(messages: Messages) -> int:
        async with slots:
            response = await client.post("/chat/completions", json={
                "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0})
            response.raise_for_status()
            return int(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(m) for m in batch))
    return Wave(len(tokens), sum(tokens), time.perf_counter() - started)


def rate(waves: list[Wave]) -> tuple[float, float]:
    """The median wave's calls/s and tokens/s."""
    return (statistics.median(w.calls / w.seconds for w in waves),
            statistics.median(w.tokens / w.seconds for w in waves))


async def measure(args: argparse.Namespace, tmp: str) -> None:
    import art
    import httpx

    from agent.openai_executor import ExecutorOwner
    from backends.cpu import CPUBackend, CPUBackendSettings
    from backends.policy import LoraSettings

    folder, targets = embedded_model(args.base_model, args.art_path)
    backend = CPUBackend(path=tmp, settings=CPUBackendSettings(lora=LoraSettings(target_modules=targets),
                                                                base_model=folder))
    model = art.TrainableModel(name="bench-executor", project="bench", base_model=args.base_model, base_path=tmp)
    await model.register(backend)
    base_name = str(model.base_model)  # served with the adapter off, as a run's default executor asks for it
    batch_all = prompts(max(args.concurrency) * args.rounds)
    print(f"{args.base_model} on the CPU backend's endpoint, base model (adapter off) by name; planner executor "
          f"prompts, max_tokens {args.max_tokens}, temperature 0; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)
    try:
        for c in args.concurrency:
            owner = ExecutorOwner(max_concurrent=c)
            executor = owner.executor_for_model(model, timeout_s=600.0)
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            async with httpx.AsyncClient(base_url=str(model.inference_base_url), limits=limits,
                                         headers={"Authorization": f"Bearer {model.inference_api_key}"},
                                         timeout=httpx.Timeout(600.0)) as client:
                warm = batch_all[:c]
                await executor_wave(executor, warm, 1)
                await raw_wave(client, base_name, warm, 1, c)
                batch = batch_all[: c * args.rounds]
                raw: list[Wave] = []
                ours: list[Wave] = []
                for first_raw in (True, False) * args.repeats:  # raw, executor, executor, raw, ...
                    if first_raw:
                        raw.append(await raw_wave(client, base_name, batch, args.max_tokens, c))
                    ours.append(await executor_wave(executor, batch, args.max_tokens))
                    if not first_raw:
                        raw.append(await raw_wave(client, base_name, batch, args.max_tokens, c))
            await owner.aclose()
            (raw_calls, raw_tokens), (our_calls, our_tokens) = rate(raw), rate(ours)
            print(f"{c:3d} concurrent, {len(batch)} calls x {len(ours)} waves each way, medians: executor "
                  f"{our_calls:5.2f} calls/s {our_tokens:6.1f} tokens/s ({sum(w.tokens for w in ours)} tokens); raw "
                  f"{raw_calls:5.2f} calls/s {raw_tokens:6.1f} tokens/s ({sum(w.tokens for w in raw)} tokens); wave "
                  f"seconds executor "
                  f"{', '.join(f'{w.seconds:.1f}' for w in ours)}, raw {', '.join(f'{w.seconds:.1f}' for w in raw)}",
                  flush=True)
            figure(f"executor calls/s, {c} concurrent", our_calls, unit="calls/s")
            figure(f"executor tokens/s, {c} concurrent", our_tokens, unit="tokens/s")
            figure(f"raw endpoint calls/s, {c} concurrent", raw_calls, unit="calls/s")
            figure(f"executor / raw endpoint calls/s, {c} concurrent", our_calls / raw_calls, ">= 0.95")
            figure(f"executor / raw endpoint tokens/s, {c} concurrent", our_tokens / raw_tokens)
    finally:
        await backend.close()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", choices=[SMOLLM2, TINY_RANDOM], default=SMOLLM2,
                        help="the embedded model the endpoint serves (tiny-random: a quick check of the bench)")
    parser.add_argument("--art-path", default=".art", help="where the embedded model is kept (as train.py)")
    parser.add_argument("--concurrency", type=at_least(1), nargs="+", default=[8, 32])
    parser.add_argument("--max-tokens", type=at_least(1), default=32)
    parser.add_argument("--rounds", type=at_least(1), default=2, help="calls per wave = rounds x concurrency")
    parser.add_argument("--repeats", type=at_least(1), default=2, help="waves each way = 2 x repeats")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(args, tmp))


if __name__ == "__main__":
    main()
