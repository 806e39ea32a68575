"""A reply sampled from a trimmed prompt is trained after exactly that prompt (agent/sent_context.py).

The r2e and openspiel rollouts trim the conversation to the context budget; ART trains each Choice after the
messages before it in its history, so each Choice must sit in a history whose messages before it are what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import art
import pytest
from art.trajectories import get_messages
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_message import ChatCompletionMessage
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob

from agent.budget import TRIM_NOTE
from agent.sent_context import SentConversation
from backends.tiny_random_model import build_tokenizer
from backends.token_check import exact_groups, sampler_prompt

BIG = 10**9  # a budget nothing exceeds


def count(text: str) -> int:
    """One token a character: exact sizes, so a test can choose how many messages a budget drops."""
    return len(text)


def size(messages: list[dict[str, Any]]) -> int:
    """What trim_messages measures with `count`."""
    return sum(count(str(m.get("content") or "")) + 4 for m in messages)


def budget_dropping(full: list[dict[str, Any]], dropped: int) -> int:
    """The budget at which trim_messages drops exactly `dropped` middle messages of `full` (an even number)."""
    return size([*full[:2], {"role": "user", "content": TRIM_NOTE.format(n=dropped)}, *full[2 + dropped:]])


def reply(text: str, ids: list[int] | None = None) -> Choice:
    """A Choice as the server returns it; with `ids`, its sampled token ids in ART's `token_id:N` form."""
    logprobs = None if ids is None else ChoiceLogprobs(content=[
        ChatCompletionTokenLogprob(token=f"token_id:{i}", logprob=-1.0, bytes=None, top_logprobs=[]) for i in ids])
    return Choice(index=0, finish_reason="length", logprobs=logprobs,
                  message=ChatCompletionMessage(role="assistant", content=text))


def rendered(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt ids the server samples from: the chat template applied to the messages it was sent."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def start() -> art.Trajectory:
    return art.Trajectory(messages_and_choices=[{"role": "system", "content": "s" * 20},
                                                {"role": "user", "content": "task " * 10}], reward=0.0)


def play(trajectory: art.Trajectory, drops: list[int | None],
         make: Callable[[int], Choice] = lambda k: reply(f"reply {k} " * 5)) -> list[tuple[list[dict], Choice]]:
    """Turns through the helper, each trimmed to drop `drops[k]` messages (None: untrimmed); (sent, Choice) each."""
    conversation = SentConversation(trajectory)
    sent_log = []
    for k, drop in enumerate(drops):
        full = conversation.messages()
        sent, dropped = conversation.prompt(BIG if drop is None else budget_dropping(full, drop), count)
        assert dropped == (drop or 0)
        choice = make(k)
        conversation.append(choice)
        conversation.append({"role": "user", "content": f"observation {k} " * 8})
        sent_log.append((sent, choice))
    return sent_log


def test_a_conversation_never_trimmed_is_the_trajectory_it_always_was():
    trajectory = start()
    items = list(trajectory.messages_and_choices)
    conversation = SentConversation(trajectory)
    for k in range(3):
        sent, dropped = conversation.prompt(BIG, count)
        assert dropped == 0 and sent == conversation.messages()
        choice, observation = reply(f"r{k}"), {"role": "user", "content": f"o{k}"}
        conversation.append(choice)
        conversation.append(observation)
        items += [choice, observation]
    assert trajectory.additional_histories == []
    assert len(trajectory.messages_and_choices) == len(items)
    assert all(a is b for a, b in zip(trajectory.messages_and_choices, items, strict=True))  # the same objects
    assert conversation.messages() == get_messages(items)


def test_a_trimmed_turn_starts_a_history_of_exactly_what_was_sent():
    trajectory = start()
    (_, first), (_, second), (sent, third) = play(trajectory, [None, None, 2])
    assert len(sent) < len(get_messages(trajectory.messages_and_choices[:7]))  # the third turn was trimmed
    [history] = trajectory.additional_histories
    # The new history: the trimmed prompt as sent, plain messages only, then the reply and what followed it.
    assert history.messages_and_choices[:len(sent)] == sent
    assert all(isinstance(m, dict) for m in history.messages_and_choices[:len(sent)])
    assert history.messages_and_choices[len(sent)] is third
    assert history.messages_and_choices[len(sent) + 1:] == [{"role": "user", "content": "observation 2 " * 8}]
    # The trajectory's own history trains the replies sent untrimmed, and still holds the whole conversation
    # (logs, the turn count of the RLM files), the trimmed turn's reply as a plain, untrained message.
    main = trajectory.messages_and_choices
    assert [m for m in main if isinstance(m, Choice)] == [first, second]
    assert main[6] == {"role": "assistant", "content": third.message.content}
    assert len(main) == 2 + 3 * 2


def test_a_turn_dropping_as_many_extends_the_history_and_a_bigger_drop_starts_another():
    trajectory = start()
    log = play(trajectory, [None, None, 2, 2, 4])
    (sent2, c2), (sent3, c3), (sent4, c4) = log[2:]
    first, second = trajectory.additional_histories
    assert first.messages_and_choices == [*sent2, c2, {"role": "user", "content": "observation 2 " * 8},
                                          c3, {"role": "user", "content": "observation 3 " * 8}]
    assert get_messages(first.messages_and_choices[:len(sent3)]) == sent3  # the same drop: the prompt is the history
    assert second.messages_and_choices[:len(sent4)] == sent4 and second.messages_and_choices[len(sent4)] is c4
    assert sent4[2]["content"] == TRIM_NOTE.format(n=4)
    # Every reply is trained once: in the history it was sent with.
    choices = [m for h in [trajectory, first, second] for m in h.messages_and_choices if isinstance(m, Choice)]
    assert choices == [c for _, c in log]


def test_the_token_check_sees_the_prompt_each_reply_was_sampled_from():
    tokenizer = build_tokenizer()

    def sampled(k: int) -> Choice:
        text = f"reply {k} " * 5
        return reply(text, tokenizer.encode(text, add_special_tokens=False))

    group = []
    for reward in (0.0, 1.0):
        trajectory = start()
        trajectory.reward = reward
        log = play(trajectory, [None, None, 2, 2, 4], sampled)
        group.append(trajectory)
        sent_for = {id(c): sent for sent, c in log}
        trimmed_seen = 0
        for history in [trajectory, *trajectory.additional_histories]:
            items = history.messages_and_choices
            for i, item in enumerate(items):
                if isinstance(item, Choice):
                    assert sampler_prompt(tokenizer, items[:i]) == rendered(tokenizer, sent_for[id(item)])
                    trimmed_seen += history is not trajectory
        assert trimmed_seen == 3
        # Recorded in the full conversation, as before, the trimmed turns' prompt was not the one sent.
        full = get_messages(trajectory.messages_and_choices)
        assert sampler_prompt(tokenizer, full[:6]) != rendered(tokenizer, log[2][0])
    # ART's tokenisation, measured by the check: every sampled token after its sampler's exact prompt, no split.
    groups, check = exact_groups(tokenizer, [art.TrajectoryGroup(group)])
    assert check.metrics() == {"split_trajectories": 0.0, "exact_token_share": 1.0}
    assert groups[0].trajectories == group


# ---- the openspiel game rollout, trimmed: each reply in its sent context, and logs as before ------------------


@dataclass
class _Context:
    """Just what the openspiel game rollout reads of a RolloutContext; records each prompt it is sent."""

    settings: Any
    services: dict[str, Any]
    count_tokens: Any = None
    sent: list[tuple[list[dict[str, Any]], Choice]] = field(default_factory=list)

    async def complete(self, messages: list[dict[str, Any]], max_tokens: int) -> Choice:
        import re

        ids = re.findall(r"^(\d+): ", str(messages[-1]["content"]), re.MULTILINE)
        choice = reply(f"move: {ids[0]}")
        self.sent.append((list(messages), choice))
        return choice


@pytest.mark.parametrize("context_tokens", [BIG, 256])
async def test_an_openspiel_game_trains_each_reply_after_the_prompt_it_was_sent(tmp_path, context_tokens):
    from envs.openspiel.options import GameOptions
    from envs.openspiel.playouts import PlayoutPool
    from envs.openspiel.rollout import GameRuntime, rollout
    from envs.openspiel.tasks import task
    from rollouts.context import RolloutSettings
    from rollouts.logs import rlm_lines, validate_file

    options = GameOptions(game_mode="game", opponent="random")
    ctx = _Context(RolloutSettings(max_steps=30, max_context_tokens=context_tokens, max_tokens_per_turn=16),
                   {"openspiel": GameRuntime(options, PlayoutPool(0))})
    trajectory = await rollout(ctx, task("connect_four", 0, 0))
    trimmed = trajectory.metrics["trimmed_messages"] > 0
    assert trimmed == (context_tokens != BIG) and trimmed == bool(trajectory.additional_histories)
    assert trajectory.metrics["finished"] == 1.0 and trajectory.metrics["context_exhausted"] == 0.0
    placed = [(h.messages_and_choices[:i], m) for h in [trajectory, *trajectory.additional_histories]
              for i, m in enumerate(h.messages_and_choices) if isinstance(m, Choice)]
    assert [c for _, c in placed] == [c for _, c in ctx.sent]  # each reply trained once
    assert all(get_messages(before) == sent for (before, _), (sent, _) in zip(placed, ctx.sent, strict=True))
    # The trajectory's own history is still the whole game: one RLM iteration per reply, the log valid.
    assert sum(not isinstance(m, dict) or m["role"] == "assistant"
               for m in trajectory.messages_and_choices) == len(ctx.sent)
    lines = rlm_lines(trajectory, {"env": "openspiel"})
    log = tmp_path / "game.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert validate_file(log) is None and lines[0]["turns"] == len(ctx.sent) == len(lines) - 1
