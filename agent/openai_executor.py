"""`Executor` over any OpenAI-compatible endpoint: a remote server (`--executor-url`), or by default the run's own
policy endpoint asked for the base model under the name that endpoint serves it by (`base_model_name`): its own
name on the CPU backend (the adapter off), the runtime's served name under ART's engines.

Every fault of a call becomes one `ExecutorError` line: a timeout, an HTTP error (after the SDK's own retries), a
refused connection, or a 200 whose body is not a chat completion. The rollout decides what that costs; the run
never sees an SDK exception from here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import openai

from agent.executor import Executor, ExecutorError, ExecutorReply


class OpenAIExecutor:
    """One AsyncOpenAI client, at most `max_concurrent` calls in flight, each bounded by `timeout_s`."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 max_concurrent: int = 8, max_retries: int = 1):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout_s,
                                          max_retries=max_retries)
        self._slots = asyncio.Semaphore(max(1, max_concurrent))

    async def complete(self, messages: list[dict[str, Any]], *, max_tokens: int,
                       temperature: float = 0.0) -> ExecutorReply:
        async with self._slots:
            try:
                # The SDK's timeout covers one attempt; this one bounds the call with its retries.
                response = await asyncio.wait_for(
                    self._client.chat.completions.create(model=self.model, messages=messages,  # type: ignore[arg-type]
                                                         max_tokens=max_tokens, temperature=temperature),
                    timeout=self.timeout_s * 2)
            except (TimeoutError, openai.APITimeoutError):
                raise ExecutorError(f"executor {self.model!r} at {self.base_url}: timed out") from None
            except openai.APIStatusError as exc:
                raise ExecutorError(f"executor {self.model!r} at {self.base_url}: HTTP {exc.status_code}: "
                                    f"{_one_line(exc.message)}") from None
            except openai.APIError as exc:  # connection errors, bodies the SDK cannot read
                raise ExecutorError(f"executor {self.model!r} at {self.base_url}: "
                                    f"{exc.__class__.__name__}: {_one_line(str(exc))}") from None
            except ValueError as exc:  # a 200 that is not JSON
                raise ExecutorError(f"executor {self.model!r} at {self.base_url}: unreadable reply: "
                                    f"{_one_line(str(exc))}") from None
        return _reply(response, self.model)

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(kw_only=True)
class ExecutorOwner:
    """The run's frozen executor and the clients it opened, shared by the planner and workflow runtimes (they
    subclass it). The executor is `--executor-url`'s server when one is given (`use_given`), else the policy's own
    endpoint asked for the base model by name, known only once the model is registered, so it is made at the first
    rollout (`executor_for_model`). Clients opened here are closed once, at the run's end; one set from outside
    (a test's fake) is left alone."""

    max_concurrent: int = 8
    executor: Executor | None = None
    _own: list[Executor] = field(default_factory=list)

    def _open(self, url: str, model: str, api_key: str | None, timeout_s: float) -> Executor:
        self.executor = OpenAIExecutor(url, model, api_key=api_key, timeout_s=timeout_s,
                                       max_concurrent=self.max_concurrent)
        self._own.append(self.executor)
        return self.executor

    def use_given(self, url: str, model: str, timeout_s: float) -> None:
        self._open(url, model, None, timeout_s)

    def executor_for_model(self, model: Any, timeout_s: float) -> Executor:
        if self.executor is None:
            return self._open(model.inference_base_url or "", base_model_name(model), model.inference_api_key,
                              timeout_s)
        return self.executor

    async def aclose(self) -> None:
        for executor in self._own:
            await executor.aclose()


def base_model_name(model: Any) -> str:
    """The name under which the policy's endpoint serves the base model, for the frozen executor.

    Our CPU backend answers to the base model's own name with the adapter off. ART's engines serve only the names
    their backend gives: under LocalBackend (and Megatron) the vLLM runtime is started with
    `--served-model-name=<name>@<step at start>` for the base weights (art/unsloth/service.py), which is
    `model.inference_model_name` as `TrainableModel.register` sets it; a fresh run starts at step 0, whose adapter
    is the base model (LoRA B starts at zero). A request for the base model's folder would be a 404 there.
    """
    backend = getattr(model, "_backend", None)
    if backend is None or _serves_base_by_name(backend):
        return str(model.base_model)
    return str(getattr(model, "inference_model_name", None) or model.get_inference_name())


def _serves_base_by_name(backend: Any) -> bool:
    """Our CPU backend (and the fakes of tests that stand for it) serve the base model under its own name."""
    return any(cls.__module__ == "backends.cpu" for cls in type(backend).__mro__)


def _reply(response: Any, model: str) -> ExecutorReply:
    """The SDK parses leniently, so a body that is JSON but not a completion arrives here as an odd object."""
    try:
        text = response.choices[0].message.content
        usage = response.usage
        prompt_tokens, completion_tokens = int(usage.prompt_tokens), int(usage.completion_tokens)
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise ExecutorError(f"executor {model!r}: the reply is not a chat completion with usage "
                            f"({exc.__class__.__name__})") from None
    if not isinstance(text, str):
        raise ExecutorError(f"executor {model!r}: the reply has no text content")
    return ExecutorReply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]
