"""Rollout throughput over many service nodes: `uv run python bench/scale_sim.py [--nodes 1 2 4 8] [--seconds 8]`.

N simulated service nodes, each a local process with our service's shape (FastAPI, bearer token, /health, a fixed
number of worker slots, request ids honoured by services/idempotency.py), whose work is an injected latency (jittered
x0.5-1.5) and an injected failure rate (HTTP 500). A fake model answers every turn after a fixed latency; a rollout
is `--turns` turns of model reply + service call through the real `ServiceClient` (least-outstanding routing, health
checks, failover). Enough rollouts run at once to keep every node busy, so the ideal is N x workers / latency service
calls per second.

Prints rollouts/s at each N, the scaling efficiency (rollouts/s at N) / (N x rollouts/s at 1) (goal: near-linear,
>= 0.9), then kills one of the nodes mid-run (SIGKILL) and counts the rollouts lost (goal: 0) and the throughput
kept (goal: near (N-1)/N of the run before the kill).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from services.client import ServiceClient, ServiceUnavailable  # noqa: E402
from services.process import free_port  # noqa: E402

TOKEN = "scale-sim-token"
WARM_S = 1.5  # not measured: the lanes start together, and the first calls queue at once


def node_main(argv: list[str]) -> None:
    """One simulated node: `python bench/scale_sim.py node --port P --latency S --workers W --fail-rate F`."""
    import uvicorn
    from fastapi import Depends, FastAPI, Header, HTTPException

    from services.idempotency import RecentResults

    parser = OneLineParser(prog="bench/scale_sim.py node")
    parser.add_argument("--port", type=at_least(1), required=True)
    parser.add_argument("--latency", type=at_least(0.0, float), default=0.2)
    parser.add_argument("--workers", type=at_least(1), default=2)
    parser.add_argument("--fail-rate", type=at_least(0.0, float), default=0.0)
    args = parser.parse_args(argv)
    app, recent = FastAPI(), RecentResults()
    slots = asyncio.Semaphore(args.workers)

    def check_token(authorization: str | None = Header(default=None)) -> None:
        if authorization != f"Bearer {TOKEN}":
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    async def work() -> dict:
        async with slots:
            await asyncio.sleep(args.latency * random.uniform(0.5, 1.5))
            if random.random() < args.fail_rate:
                raise HTTPException(500, "injected failure")
            return {"ok": True}

    @app.post("/run", dependencies=[Depends(check_token)])
    async def run(body: dict, idempotency_key: str | None = Header(default=None)) -> dict:
        return await recent.run(idempotency_key, work)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False)


@dataclass
class SimNode:
    url: str
    proc: subprocess.Popen


def start_nodes(count: int, latency: float, workers: int, fail_rate: float) -> list[SimNode]:
    nodes = []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "node", "--port", str(port), "--latency", str(latency),
                                 "--workers", str(workers), "--fail-rate", str(fail_rate)], cwd=ROOT)
        nodes.append(SimNode(f"http://127.0.0.1:{port}", proc))
    deadline = time.monotonic() + 120
    for node in nodes:
        while True:
            try:
                if httpx.get(f"{node.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or node.proc.poll() is not None:
                raise RuntimeError(f"simulated node {node.url} did not start")
            time.sleep(0.1)
    return nodes


@dataclass
class Tally:
    started: int = 0
    finished: int = 0  # all rollouts that ended well, the ones that ran past the measured window included
    lost: int = 0  # rollouts that ended in ServiceUnavailable
    calls: int = 0  # service calls answered within the measured window (after the warm-up, before the end)
    calls_before_kill: int = 0


async def drive(urls: list[str], seconds: float, concurrency: int, turns: int, model_latency: float,
                kill: SimNode | None = None, warm_s: float = WARM_S) -> tuple[Tally, float]:
    """Rollouts back to back on `concurrency` lanes for `seconds`; those under way at the end still finish (and
    count as lost if they fail). Throughput counts the service calls answered between `warm_s` and the end, a
    third of a rollout each, so rollouts cut by either edge of the window count for the part inside it. Returns
    the tally and when the node was killed (s into the run, or 0)."""
    client = ServiceClient(urls, TOKEN, retries=3, backoff_s=0.1, name="sim", health_interval_s=1.0)
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    killed_at = 0.0

    async def rollout() -> None:
        for turn in range(turns):
            await asyncio.sleep(model_latency)  # the fake model's reply
            await client.post("/run", {"turn": turn}, timeout=30)
            if started + warm_s <= time.monotonic() <= deadline:
                tally.calls += 1
                tally.calls_before_kill += not killed_at

    async def lane() -> None:
        while time.monotonic() < deadline:
            tally.started += 1
            try:
                await rollout()
            except ServiceUnavailable:
                tally.lost += 1
                continue
            tally.finished += 1

    async def killer() -> None:
        nonlocal killed_at
        await asyncio.sleep(seconds / 2)
        os.kill(kill.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic() - started

    await asyncio.gather(*(lane() for _ in range(concurrency)), *([killer()] if kill else []))
    figures = client.node_metrics()
    await client.aclose()
    print(f"    requests moved to another node: {figures['nodes/sim/moved_calls']:.0f}; nodes up at the end: "
          f"{figures['nodes/sim/nodes_up']:.0f}", flush=True)
    return tally, killed_at


def main() -> None:
    if sys.argv[1:2] == ["node"]:
        node_main(sys.argv[2:])
        return
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=at_least(1), nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=at_least(0.1, float), default=8.0, help="measured time per node count")
    parser.add_argument("--latency", type=at_least(0.0, float), default=0.2, help="a service call's mean work time (s)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="slots per node")
    parser.add_argument("--fail-rate", type=at_least(0.0, float), default=0.01,
                        help="injected HTTP 500 share per call")
    parser.add_argument("--model-latency", type=at_least(0.0, float), default=0.05,
                        help="the fake model's reply time (s)")
    parser.add_argument("--turns", type=at_least(1), default=3, help="service calls per rollout")
    args = parser.parse_args()
    most = max(args.nodes)
    nodes = start_nodes(most, args.latency, args.workers, args.fail_rate)
    print(f"{most} simulated nodes, {args.workers} slots each, service latency {args.latency}s (x0.5-1.5), "
          f"{args.fail_rate:.0%} injected 500s; fake model {args.model_latency}s; {args.turns} calls per rollout",
          flush=True)
    try:
        rates: dict[int, float] = {}
        for n in sorted(args.nodes):
            # lanes enough to keep every slot busy: a lane is in a service call latency/(model+latency) of its time
            lanes = int(2 * n * args.workers * (args.model_latency + args.latency) / args.latency) + 1
            tally, _ = asyncio.run(drive([x.url for x in nodes[:n]], args.seconds, lanes, args.turns,
                                         args.model_latency))
            rates[n] = tally.calls / args.turns / (args.seconds - WARM_S)
            ideal = n * args.workers / (args.latency * args.turns)
            print(f"  {n} node(s), {lanes} rollouts at once: {rates[n]:6.2f} rollouts/s (ideal {ideal:.2f}), "
                  f"{tally.finished} finished, {tally.lost} lost", flush=True)
            efficiency = rates[n] / (n * rates[min(rates)] / min(rates))  # vs n x the smallest run's rate per node
            if n > min(rates):
                figure(f"scale_sim efficiency at {n} nodes (rollouts/s vs {n} x the 1-node rate)", efficiency, ">= 0.9")
        n = 4 if most >= 4 else most
        lanes = int(2 * n * args.workers * (args.model_latency + args.latency) / args.latency) + 1
        print(f"  {n} nodes, one killed (SIGKILL) {args.seconds:.0f}s into a {args.seconds * 2:.0f}s run:", flush=True)
        tally, killed_at = asyncio.run(drive([x.url for x in nodes[:n]], args.seconds * 2, lanes, args.turns,
                                             args.model_latency, kill=nodes[0]))
        before = tally.calls_before_kill / args.turns / (killed_at - WARM_S)
        after = (tally.calls - tally.calls_before_kill) / args.turns / (args.seconds * 2 - killed_at)
        print(f"    {tally.started} rollouts started, {tally.finished} finished, {tally.lost} lost; {before:.2f} "
              f"rollouts/s before the kill, {after:.2f} after ({after / before:.2f} of it; {n - 1}/{n} = "
              f"{(n - 1) / n:.2f} is the ideal)", flush=True)
        figure(f"scale_sim rollouts lost with 1 of {n} nodes killed", tally.lost, "<= 0")
        figure(f"scale_sim throughput kept after the kill / ({n}-1)/{n}", after / before / ((n - 1) / n), ">= 0.9")
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
                node.proc.wait()


if __name__ == "__main__":
    main()
