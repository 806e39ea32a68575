"""What every rollout gets besides its scenario: the model, its turn/token budgets, the services of its env."""

from __future__ import annotations

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


@dataclass
class RolloutContext:
    model: art.Model
    settings: RolloutSettings
    step: int = 0
    services: dict[str, Any] = field(default_factory=dict)

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Any:
        """One chat completion from the policy being trained, with the token logprobs GRPO needs."""
        client = self.model.openai_client()
        response = await client.chat.completions.create(
            model=self.model.get_inference_name(),
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.settings.temperature,
            logprobs=True,
        )
        return response.choices[0]
