"""Playouts and MCTS moves off the event loop: a process pool (or one thread), so scoring never stalls rollouts.

A playout of a large game, or one MCTS move, is milliseconds to seconds of pure CPU in pyspiel; run on the
event loop it would hold up every rollout in flight. Workers are spawned, not forked: the trainer has torch and
sampler threads, and a fork of a threaded process can inherit a held lock. The env starts the pool before the
first step when the run needs it (outcome rewards, an MCTS opponent); a legal-mode run never starts one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from envs.openspiel.options import GameOptions
from envs.openspiel.reward import Playout, next_move, play_out, warm_up


class PlayoutUnavailable(RuntimeError):
    """The pool broke (a worker died); the rollout fails and is counted, the run goes on."""


class PlayoutPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                              if self.workers > 0 else ThreadPoolExecutor(1, thread_name_prefix="openspiel"))
        return self._executor

    async def start(self) -> None:
        """Start the workers and load pyspiel in each, from a thread: spawned on a rollout's first playout they
        would start from the event loop, and that rollout would wait for their imports."""
        def spawn_and_wait() -> None:
            pool = self._pool()
            for future in [pool.submit(warm_up) for _ in range(max(self.workers, 1))]:
                future.result()

        await asyncio.to_thread(spawn_and_wait)

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)
        except BrokenProcessPool as exc:
            self._executor = None  # the next call starts a fresh pool
            raise PlayoutUnavailable(f"openspiel playout pool broke: {exc}") from exc

    async def playouts(self, case: str, history: list[int], seat: int, options: GameOptions, seed: int,
                       ) -> list[float]:
        """`options.playouts` seeded playouts from the state after `history`; seeds seed, seed+1, ..."""
        jobs = [Playout(case, tuple(history), seat, options.opponent, options.own_policy, seed + k,
                        options.mcts_simulations) for k in range(options.playouts)]
        return list(await asyncio.gather(*(self._run(play_out, job) for job in jobs)))

    async def move(self, case: str, history: list[int], policy: str, seed: int, simulations: int) -> int:
        return int(await self._run(next_move, case, tuple(history), policy, seed, simulations))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
