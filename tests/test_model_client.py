"""The rollouts' model client keeps the OpenAI SDK's contract: its types, its exceptions, its retry policy."""

import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from backends.openai_server import ServerThread
from rollouts.model_client import ModelClient
from tests.fake_openai_server import completion_body, fake_app


def _flaky(statuses: list[int], headers: dict[str, str] | None = None) -> tuple[FastAPI, dict]:
    """Answers with each of `statuses` in turn, then with a completion."""
    app, seen = FastAPI(), {"calls": 0}

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> JSONResponse:
        seen["calls"] += 1
        if seen["calls"] <= len(statuses):
            return JSONResponse({"error": {"message": "context too long"}}, statuses[seen["calls"] - 1],
                                headers=headers or {})
        return JSONResponse(completion_body(body["model"], "ab"))

    return app, seen


@pytest.fixture
def serve():
    servers = []

    def start(app: FastAPI) -> str:
        server = ServerThread(app)
        server.start()
        servers.append(server)
        return server.base_url

    yield start
    for server in servers:
        server.stop()


async def test_answers_are_the_sdk_types_with_token_logprobs(serve):
    client = ModelClient(serve(fake_app(0.0, reply="ab")), "key", max_connections=2)
    try:
        choice = await client.complete("m", [{"role": "user", "content": "hi"}], max_tokens=4, logprobs=True)
    finally:
        await client.aclose()
    assert isinstance(choice, openai.types.chat.chat_completion.Choice)
    assert choice.message.content == "ab" and [e.token for e in choice.logprobs.content] == ["token_id:97",
                                                                                            "token_id:98"]


async def test_a_bad_request_is_raised_at_once_as_the_sdk_error(serve):
    app, seen = _flaky([400, 400, 400])
    client = ModelClient(serve(app), "key", max_connections=1)
    try:
        with pytest.raises(openai.BadRequestError, match="context too long"):
            await client.complete("m", [{"role": "user", "content": "hi"}])
    finally:
        await client.aclose()
    assert seen["calls"] == 1  # not retried: the same request would fail again


async def test_server_errors_are_retried_honouring_retry_after(serve):
    app, seen = _flaky([503, 429], headers={"Retry-After": "0"})
    client = ModelClient(serve(app), "key", max_connections=1)
    try:
        choice = await client.complete("m", [{"role": "user", "content": "hi"}])
    finally:
        await client.aclose()
    assert seen["calls"] == 3 and choice.message.content == "ab"
