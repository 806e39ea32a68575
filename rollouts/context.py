"""What every rollout gets besides its scenario: the model, its turn/token budgets, the services of its env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import art
from openai.types.chat.chat_completion import Choice

from rollouts.model_client import ModelClient


@dataclass(frozen=True)
class RolloutSettings:
    max_steps: int = 10
    max_context_tokens: int = 2048
    max_tokens_per_turn: int = 256
    temperature: float = 1.0
    # The toy env's replies are short on purpose: a short reply is where the target share moves fastest.
    toy_max_tokens: int = 16


@dataclass
class RolloutContext:
    model: art.Model
    settings: RolloutSettings
    step: int = 0
    services: dict[str, Any] = field(default_factory=dict)
    max_connections: int = 128  # to the model endpoint; train.py sets --max-concurrent
    count_tokens: Callable[[str], int] | None = None  # the policy's tokenizer, for context budgets
    # Prompt tokens of a conversation as the policy's chat template renders it; set where the server refuses a
    # prompt plus max_tokens over its context instead of shortening max_tokens (vLLM) so `complete` shortens it
    count_prompt_tokens: Callable[[list[dict[str, Any]]], int] | None = None
    _client: ModelClient | None = field(default=None, repr=False)
    _endpoint: tuple[str | None, str | None] = (None, None)

    def client(self) -> ModelClient:
        """The model endpoint's client, remade when the endpoint changes (`--vllm-url` is set after registration)."""
        endpoint = (self.model.inference_base_url, self.model.inference_api_key)
        if self._client is None or endpoint != self._endpoint:
            self._endpoint = endpoint
            self._client = ModelClient(endpoint[0] or "", endpoint[1], self.max_connections)
        return self._client

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        """One chat completion from the policy being trained, with the token logprobs GRPO needs.

        `--max-context-tokens` holds on every engine: the CPU server shortens `max_tokens` to the room its context
        leaves; vLLM (its `max_model_len` set to the same context) would refuse the request, so here `max_tokens` is
        shortened first. A prompt that fills the context is left to the server, which refuses it on both (HTTP 400:
        the rollout's context is full)."""
        if self.count_prompt_tokens is not None:
            room = self.settings.max_context_tokens - self.count_prompt_tokens(messages)
            max_tokens = max(1, min(max_tokens, room))
        return await self.client().complete(self.model.get_inference_name(), messages, max_tokens=max_tokens,
                                            temperature=self.settings.temperature, logprobs=True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> RolloutContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
