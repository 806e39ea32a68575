"""Training each reply in the context its sampler saw, when the conversation is trimmed to fit the context window.

A multi-turn rollout trims its conversation (agent/budget.py: middle turns dropped, a note put in their place) and
sends the trimmed messages. ART trains every Choice of a history in the context of the messages before it in that
history, so a reply sampled from a trimmed prompt but recorded in the full conversation would be trained after
messages the sampler never saw, with logprobs that are not the sampler's (and backends/token_check.py, which rebuilds
each prompt from the history too, could not tell). `SentConversation` records each Choice in a history whose messages
before it are exactly what was sent: the trajectory's own while nothing is trimmed, else one of
`additional_histories`, which ART tokenizes each as a standalone conversation (art/preprocessing/tokenize.py).

The trajectory's own `messages_and_choices` stays the full conversation, so the logs, the RLM files (one turn per
reply, checked by rollouts/logs.py) and the evaluation report read it as before; a reply sent trimmed is kept there
as a plain assistant message, which ART does not train (unless trained without logprobs), its Choice living in the
history it was sent with. ART cuts each history after its last trainable Choice, so the messages that follow the
last trained reply of a history cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import art
from art.trajectories import History, get_messages
from openai.types.chat.chat_completion import Choice

from agent.budget import approx_tokens, trim_messages


class SentConversation:
    """The full conversation for budgeting, and the trajectory's histories exactly as sent.

    Use `prompt` for the messages to send, then `append` the Choice that came back and every message after it.
    A rollout that never trims builds the same trajectory as appending to `messages_and_choices` directly.
    """

    def __init__(self, trajectory: art.Trajectory) -> None:
        self.trajectory = trajectory
        self._sent: list[dict[str, Any]] | None = None  # the last prompt, until its Choice is appended

    def messages(self) -> list[dict[str, Any]]:
        """The full conversation as messages (what the budget trims, and what logs show)."""
        return get_messages(self.trajectory.messages_and_choices)

    def prompt(self, budget_tokens: int, count: Callable[[str], int] = approx_tokens
               ) -> tuple[list[dict[str, Any]], int]:
        """The messages to send (the full conversation trimmed to `budget_tokens`) and how many were dropped."""
        messages, dropped = trim_messages(self.messages(), budget_tokens, count)
        self._sent = messages
        return messages, dropped

    def append(self, item: Choice | dict[str, Any]) -> None:
        """Adds a reply or a message to the full conversation and to the history the next reply extends.

        A Choice extends the current history when the prompt it was sampled from is exactly that history's
        messages (nothing trimmed, or trimmed as before: the same turns dropped); otherwise it starts a new history
        of the prompt as sent, plain messages only, so the replies in it are trained as the text the sampler saw.
        """
        main = self.trajectory.messages_and_choices
        if not isinstance(item, Choice):
            main.append(item)
            if self.trajectory.additional_histories:
                self.trajectory.additional_histories[-1].messages_and_choices.append(item)
            return
        sent = self._sent if self._sent is not None else self.messages()
        self._sent = None
        current = (self.trajectory.additional_histories[-1].messages_and_choices
                   if self.trajectory.additional_histories else main)
        if current is main and sent == self.messages():  # never trimmed: as a rollout without this helper
            main.append(item)
            return
        if current is not main and sent == get_messages(current):
            current.append(item)
        else:
            history = History(messages_and_choices=list(sent), tools=self.trajectory.tools)
            history.messages_and_choices.append(item)
            self.trajectory.additional_histories.append(history)
        main.append(get_messages([item])[0])  # the full conversation shows the reply; its Choice trains elsewhere
