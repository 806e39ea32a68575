"""A stand-in for the GPU model server: an OpenAI-compatible endpoint with a fixed latency that counts how
many requests are in flight at once. Used where a test or bench needs the endpoint's timing, not a model.

Two servings of the same endpoint: FastAPI in a thread of the test's own process (`start_fake_server`), and aiohttp's
server in a process of its own (`python -m tests.fake_openai_server`, bench/gather.py). The process stands in for
vLLM, which runs on its own GPU machine, yet here it shares the trainer's 2 cores; uvicorn without httptools parses
HTTP in pure Python (h11) and FastAPI adds its routing and encoding: 0.5-0.8 ms of CPU per request, and at 64 in
flight a burst of new requests sat unread for a whole latency period. aiohttp's C parser answers in ~0.14 ms.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from fastapi import FastAPI, Request

if TYPE_CHECKING:
    from backends.openai_server import ServerThread


class InFlightCounter:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def completion_body(model: str, reply: str) -> dict:
    """A chat completion as vLLM returns it, with a `token_id:N` logprob per character of `reply`."""
    return {
        "id": "fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": reply},
            "logprobs": {"content": [
                {"token": f"token_id:{ord(c)}", "logprob": -0.1, "bytes": [ord(c)], "top_logprobs": []}
                for c in reply
            ]},
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(reply), "total_tokens": 1 + len(reply)},
    }


def fake_app(latency_s: float, reply: str = "aaaa", counter: InFlightCounter | None = None) -> FastAPI:
    app = FastAPI()
    app.state.counter = counter or InFlightCounter()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        app.state.counter.enter()
        try:
            await asyncio.sleep(latency_s)
        finally:
            app.state.counter.leave()
        return completion_body(body["model"], reply)

    return app


def start_fake_server(latency_s: float, reply: str = "aaaa") -> tuple[ServerThread, InFlightCounter]:
    from backends.openai_server import ServerThread  # imported here: it brings torch, which the process mode avoids

    app = fake_app(latency_s, reply)
    server = ServerThread(app)
    server.start()
    return server, app.state.counter


def scripted_app(respond: Callable[[list[dict[str, Any]]], str]) -> FastAPI:
    """An endpoint whose reply depends on the request's messages, e.g. the next turn of a recorded
    conversation, so a test can replay a whole multi-turn episode through the real rollout."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        return completion_body(body["model"], respond(body["messages"]))

    return app


def start_scripted_server(respond: Callable[[list[dict[str, Any]]], str]) -> ServerThread:
    from backends.openai_server import ServerThread

    server = ServerThread(scripted_app(respond))
    server.start()
    return server


def fake_aiohttp_app(latency_s: float, reply: str = "aaaa", counter: InFlightCounter | None = None) -> web.Application:
    """`fake_app` served by aiohttp: each request is still read, parsed as JSON, held for the latency and answered
    with a freshly encoded completion; `GET /stats` reports the in-flight counter (peak, total, now)."""
    counter = counter or InFlightCounter()

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        counter.enter()
        try:
            await asyncio.sleep(latency_s)
        finally:
            counter.leave()
        return web.json_response(completion_body(body["model"], reply))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"peak": counter.peak, "total": counter.total, "now": counter.now})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    """`python -m tests.fake_openai_server PORT LATENCY`: the endpoint in a process of its own."""
    import sys

    port, latency = int(sys.argv[1]), float(sys.argv[2])
    # As the trainer does (rollouts.gather.freeze_startup_heap): what start-up imported stays out of every collection.
    gc.collect()
    gc.freeze()
    web.run_app(fake_aiohttp_app(latency), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
