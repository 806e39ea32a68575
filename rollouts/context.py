"""What every rollout gets besides its scenario: the model, its turn/token budgets, the services of its env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import art


@dataclass(frozen=True)
class RolloutSettings:
    max_steps: int = 10
    max_context_tokens: int = 2048
    max_tokens_per_turn: int = 256
    temperature: float = 1.0
    # The toy env's replies are short on purpose: a short reply is where the target share moves fastest.
    toy_max_tokens: int = 16


# httpx's pool rescans all of its connections for every queued request, so one pool serving 64 rollouts in
# flight spent ~80% of the gather loop's time there (bench/gather.py: ratio 0.21 at 64). Small pools don't.
CONNECTIONS_PER_CLIENT = 8


@dataclass
class RolloutContext:
    model: art.Model
    settings: RolloutSettings
    step: int = 0
    services: dict[str, Any] = field(default_factory=dict)
    pools: int = 16  # train.py sets max_concurrent / CONNECTIONS_PER_CLIENT
    count_tokens: Callable[[str], int] | None = None  # the policy's tokenizer, for context budgets
    _clients: list[Any] = field(default_factory=list, repr=False)
    _endpoint: tuple[str | None, str | None] = (None, None)
    _next: int = 0

    def client(self) -> Any:
        """An OpenAI SDK client for the model's endpoint, configured as `model.openai_client()` is (same base URL,
        key and timeouts), drawn round-robin from several small connection pools instead of one large one."""
        endpoint = (self.model.inference_base_url, self.model.inference_api_key)
        if not self._clients or endpoint != self._endpoint:
            import httpx
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient

            self._endpoint = endpoint
            limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT,
                                  max_keepalive_connections=CONNECTIONS_PER_CLIENT)
            self._clients = [
                AsyncOpenAI(base_url=endpoint[0], api_key=endpoint[1], http_client=DefaultAsyncHttpxClient(
                    timeout=httpx.Timeout(timeout=1200, connect=5.0), limits=limits))
                for _ in range(self.pools)
            ]
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Any:
        """One chat completion from the policy being trained, with the token logprobs GRPO needs."""
        response = await self.client().chat.completions.create(
            model=self.model.get_inference_name(),
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.settings.temperature,
            logprobs=True,
        )
        return response.choices[0]
