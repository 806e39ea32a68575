"""Keeping a conversation inside the model's context: drop the oldest middle turns, keep what defines the task.

The system prompt and the first user message (the bug report) always stay, and so do the newest turns; what
is dropped is replaced by one note, so the model knows its memory has a gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TRIM_NOTE = "[{n} earlier messages were removed to fit the context window; files you changed are still changed]"


def approx_tokens(text: str) -> int:
    """About 4 characters a token for English and code; the budget keeps a margin for this estimate."""
    return len(text) // 4 + 1


def trim_messages(messages: list[dict[str, Any]], budget_tokens: int,
                  count: Callable[[str], int] = approx_tokens) -> tuple[list[dict[str, Any]], int]:
    """Returns the messages to send and how many were dropped (0 when everything fits)."""
    def size(ms: list[dict[str, Any]]) -> int:
        return sum(count(str(m.get("content") or "")) + 4 for m in ms)

    if size(messages) <= budget_tokens or len(messages) <= 3:
        return messages, 0
    head, middle = messages[:2], messages[2:]
    dropped = 0
    while len(middle) > 1:
        # Drop in pairs (assistant turn + its observation) so roles keep alternating.
        step = 2 if len(middle) > 2 else 1
        middle, dropped = middle[step:], dropped + step
        note = {"role": "user", "content": TRIM_NOTE.format(n=dropped)}
        if size(head + [note] + middle) <= budget_tokens:
            break
    return head + [{"role": "user", "content": TRIM_NOTE.format(n=dropped)}] + middle, dropped
