"""Server side of request ids: a node answers a repeated `Idempotency-Key` from the run it already made.

Our clients send one id per logical request and keep it across retries (services/client.py). A retry reaches the
same node when the answer was lost on the way back (a timeout, a reset connection) or when no other node is up: the
node then joins the run still going, or returns the result it kept, instead of meshing or testing the same thing
again. Only successes are kept, and only the most recent `size`; a failure (busy, bad input, a cancelled run) is
never replayed, so a retry of one gets a fresh try.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any


class RecentResults:
    def __init__(self, size: int = 512):
        self.size = size
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._running: dict[str, asyncio.Future] = {}
        self.replayed = 0  # answers served without a second run

    async def run(self, key: str | None, work: Callable[[], Awaitable[Any]]) -> Any:
        if not key:
            return await work()
        if key in self._running:  # the same request is running here: wait for it, and use it if it succeeds
            running = self._running[key]
            await asyncio.wait({running})
            if not running.cancelled() and running.exception() is None:
                self.replayed += 1
                return running.result()
        if key in self._done:
            self._done.move_to_end(key)
            self.replayed += 1
            return self._done[key]
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await work()
        except BaseException:
            future.cancel()  # waiters run it themselves: a failure is never replayed
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(result)
        self._done[key] = result
        while len(self._done) > self.size:
            self._done.popitem(last=False)
        return result
