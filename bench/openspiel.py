"""OpenSpiel env throughput: `uv run python bench/openspiel.py [--playouts 48]`.

- Tasks built per second: the fixed task sets of tic_tac_toe alone and of every default case (seeded random walks,
  prompt text, legal actions).
- Outcome playouts per second, three ways: inline on the event loop (what the pool avoids), in one thread (the
  `--playout-workers 0` fallback) and in the process pool (`--playout-workers 2`), on connect_four against the
  MCTS opponent; with the event loop's worst lag meanwhile, which is what a rollout waiting for its model reply
  feels. The pool's figures include starting its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from envs.openspiel.flags import GameOptions  # noqa: E402
from envs.openspiel.playouts import PlayoutPool  # noqa: E402
from envs.openspiel.tasks import load_tasks  # noqa: E402
from rewards.openspiel import Playout, play_out  # noqa: E402

CASE, HISTORY = "connect_four", [3, 3]


def tasks_per_second(options: GameOptions) -> tuple[float, int]:
    started = time.perf_counter()
    count = len(load_tasks(options, 0, "train"))
    return count / (time.perf_counter() - started), count


async def _with_lag(work) -> tuple[float, float]:
    """(seconds the work took, the event loop's worst lag meanwhile, sampled every 5 ms)."""
    worst, done = 0.0, asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - before - 0.005)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    return elapsed, worst


def playouts_per_second(count: int, workers: int | None, simulations: int) -> tuple[float, float]:
    """workers None: inline on the loop; 0: one thread; N: a process pool of N."""
    options = GameOptions(playouts=count, opponent="mcts", mcts_simulations=simulations)

    async def run() -> tuple[float, float]:
        if workers is None:
            async def inline() -> None:
                for k in range(count):
                    play_out(Playout(CASE, tuple(HISTORY), 0, "mcts", "random", k, simulations))
                    await asyncio.sleep(0)
            return await _with_lag(inline)
        pool = PlayoutPool(workers)
        try:
            async def pooled() -> None:
                await pool.playouts(CASE, HISTORY, 0, options, 0)
            return await _with_lag(pooled)
        finally:
            pool.close()

    elapsed, lag = asyncio.run(run())
    return count / elapsed, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--playouts", type=int, default=48)
    parser.add_argument("--simulations", type=int, default=16, help="MCTS simulations per opponent move")
    args = parser.parse_args()
    for label, options in (("tic_tac_toe", GameOptions(game_types=("tic_tac_toe",), num_tasks_per_case=500)),
                           ("all default cases", GameOptions(num_tasks_per_case=20))):
        rate, count = tasks_per_second(options)
        print(f"tasks built: {label}: {count} tasks, {rate:.0f}/s")
        figure(f"tasks built per second ({label})", rate, unit="tasks/s")
    rates = {}
    for label, workers in (("inline on the event loop", None), ("one thread", 0), ("process pool of 2", 2)):
        rate, lag = playouts_per_second(args.playouts, workers, args.simulations)
        rates[label] = rate
        print(f"outcome playouts, {CASE} vs MCTS({args.simulations}), {label}: {rate:.1f}/s, "
              f"worst event-loop lag {lag * 1000:.0f} ms")
        figure(f"outcome playouts per second, {label}", rate, unit="playouts/s")
        figure(f"event-loop worst lag, {label}", lag * 1000, "< 50" if workers == 2 else None, "ms")
    figure("process pool / inline playout throughput", rates["process pool of 2"] / rates["inline on the event loop"],
           ">= 1.3")


if __name__ == "__main__":
    main()
