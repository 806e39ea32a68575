"""Does the trainer score the tokens the sampler produced, in the context it produced them in, with its logprobs?

ART's tokenisation splices each Choice's sampled ids into a chat-template rendering of the whole conversation. The
sampler, though, saw at turn k the template's rendering of the messages before it, earlier replies included as
*text* (backends/openai_server.py renders `apply_chat_template(messages, add_generation_prompt=True)`). Where that
text re-encodes to other ids than were sampled (a non-canonical BPE split, a special token sampled mid-reply and
dropped from the content, bytes that are not UTF-8, a stop token other than the template's end of turn), every
later turn is trained in a context its sampler never saw, and its logprobs no longer match the sampler's.

`exact_groups` finds those turns and splits the trajectory there: a turn whose sampler prompt does not extend the
previous turn's prompt and reply starts a new history (ART's `additional_histories`) whose earlier replies are
plain messages, rendered exactly as the sampler rendered them. `LogprobMismatch` measures what is left: the mean
absolute difference between the sampler's and the trainer's logprob of each sampled token before any update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from art.trajectories import History, Trajectory, TrajectoryGroup, get_messages
from openai.types.chat.chat_completion import Choice


@dataclass
class _Turn:
    index: int  # position of the Choice in messages_and_choices
    prompt: list[int]  # the sampler's prompt ids, as the server rendered them
    ids: list[int]  # the sampled ids


@dataclass
class TokenCheck:
    """Counts over one train step: sampled tokens, those trained verbatim in their sampler's context, splits."""

    sampled_tokens: int = 0
    exact_tokens: int = 0
    split_trajectories: int = 0

    def tally(self, turns: list[_Turn], exact: list[int | None]) -> None:
        self.sampled_tokens += sum(len(t.ids) for t in turns)
        self.exact_tokens += sum(c or 0 for c in exact)

    def metrics(self) -> dict[str, float]:
        out = {"split_trajectories": float(self.split_trajectories)}
        if self.sampled_tokens:
            out["exact_token_share"] = self.exact_tokens / self.sampled_tokens
        return out


def sampled_ids(tokenizer: Any, choice: Choice) -> list[int]:
    """The Choice's sampled ids, read as ART reads them: `token_id:N`, else the token strings looked up."""
    entries = (choice.logprobs.content or choice.logprobs.refusal or []) if choice.logprobs else []
    try:
        return [int(e.token.split(":")[1]) for e in entries]
    except (IndexError, ValueError):
        return [tokenizer.convert_tokens_to_ids(e.token) for e in entries]


def sampler_prompt(tokenizer: Any, messages_and_choices: list[Any]) -> list[int]:
    """The prompt ids the CPU server sampled from, given the messages before a turn (the server takes no tools)."""
    encoded = tokenizer.apply_chat_template(get_messages(messages_and_choices), add_generation_prompt=True,
                                            tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def _turns(tokenizer: Any, items: list[Any]) -> list[_Turn]:
    return [_Turn(i, sampler_prompt(tokenizer, items[:i]), sampled_ids(tokenizer, m))
            for i, m in enumerate(items) if isinstance(m, Choice) and m.logprobs]


def _history(items: list[Any], turns: list[_Turn], tools: Any) -> History:
    """The conversation up to the last of `turns`; replies before the first become plain messages, which the
    template renders as the sampler saw them (ART trains only Choices, unless trained without logprobs)."""
    first, last = turns[0].index, turns[-1].index
    kept = [get_messages([m])[0] if isinstance(m, Choice) and i < first else m for i, m in enumerate(items[: last + 1])]
    return History(messages_and_choices=kept, tools=tools)


def _trained(tokenizer: Any, history: History, turns: list[_Turn], trajectory: Trajectory,
             allow_without_logprobs: bool) -> list[int | None]:
    """Per turn, how many of its sampled tokens ART's tokenisation of `history` puts in place after the sampler's
    exact prompt; None where the tokens before the turn are not that prompt."""
    from art.preprocessing.tokenize import tokenize_trajectory

    result = tokenize_trajectory(tokenizer, None, history, 1.0, allow_without_logprobs, trajectory)
    offsets = result.choice_offsets if result is not None else []
    counts: list[int | None] = [None] * len(turns)
    for k, (turn, offset) in enumerate(zip(turns, offsets, strict=False)):
        if result.token_ids[:offset] == turn.prompt:
            trained = result.token_ids[offset : offset + len(turn.ids)]
            counts[k] = next((j for j, (a, b) in enumerate(zip(trained, turn.ids, strict=False)) if a != b),
                             len(trained))
    return counts


def _exact_histories(tokenizer: Any, history: History, trajectory: Trajectory, check: TokenCheck, split: bool,
                     allow_without_logprobs: bool) -> list[History]:
    """`history` as one or more histories in each of which every turn's prompt is exactly its sampler's: a turn
    whose trained prefix drifted starts a new one. One ART tokenisation when nothing drifted, two more per split
    (the part kept is measured again: a later turn's splice can overwrite an earlier one's ids, see BACKENDS.md)."""
    items = list(history.messages_and_choices)
    turns = _turns(tokenizer, items)
    out: list[History] = []
    start = 0
    while turns:
        rest = turns[start:]
        candidate = history if start == 0 else _history(items, rest, history.tools)
        counts = _trained(tokenizer, candidate, rest, trajectory, allow_without_logprobs)
        # The first turn of a part has its sampler's context or nothing will give it one: splits come after it.
        drifted = next((k for k in range(1, len(rest)) if counts[k] is None), None) if split else None
        if drifted is None:
            check.tally(rest, counts)
            return [*out, candidate]
        kept = rest[:drifted]
        part = _history(items, kept, history.tools)
        check.tally(kept, _trained(tokenizer, part, kept, trajectory, allow_without_logprobs))
        out.append(part)
        start += drifted
    return [history]


def _exact_trajectory(tokenizer: Any, trajectory: Trajectory, check: TokenCheck, split: bool,
                      allow_without_logprobs: bool) -> Trajectory:
    histories = [History(messages_and_choices=trajectory.messages_and_choices, tools=trajectory.tools),
                 *trajectory.additional_histories]
    out = [part for history in histories
           for part in _exact_histories(tokenizer, history, trajectory, check, split, allow_without_logprobs)]
    if len(out) == len(histories):
        return trajectory
    check.split_trajectories += 1
    return trajectory.model_copy(update={"messages_and_choices": out[0].messages_and_choices,
                                         "additional_histories": out[1:]})


def exact_groups(tokenizer: Any, groups: list[TrajectoryGroup], *,
                 allow_without_logprobs: bool = False) -> tuple[list[TrajectoryGroup], TokenCheck]:
    """The groups with each trajectory split where its sampled tokens would otherwise be trained in another context
    than the sampler's, and the counts. Trajectories ART drops (zero advantage) are passed through unchecked.

    Training without logprobs trains plain assistant messages too, so a split would train earlier replies twice:
    there nothing is split and the counts only report the drift."""
    check = TokenCheck()
    out: list[TrajectoryGroup] = []
    for group in groups:
        trajectories = list(group.trajectories)
        if not trajectories:
            out.append(group)
            continue
        # ART's GRPO advantage is the reward minus the group's mean: where it is 0 ART drops the trajectory.
        mean = sum(t.reward for t in trajectories) / len(trajectories)
        kept = [t if t.reward - mean == 0 else
                _exact_trajectory(tokenizer, t, check, not allow_without_logprobs, allow_without_logprobs)
                for t in trajectories]
        out.append(group.model_copy(update={"trajectories": kept}))
    return out, check


@dataclass
class LogprobMismatch:
    """Mean |sampler logprob - trainer logprob| over sampled tokens, from forward passes made before any update.

    Tokens without a sampler logprob (NaN: plain assistant messages) are left out."""

    total: float = 0.0
    tokens: int = 0

    def add(self, trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, *, shifted: bool) -> None:
        """`sampler` and `mask` in ART's packed layout (token t's logprob at t); `trainer` the same, or with
        `shifted` as the loss takes it (token t+1's logprob at t)."""
        if shifted:
            trainer, sampler, mask = trainer[:, :-1], sampler[:, 1:], mask[:, 1:]
        wanted = mask.bool() & ~torch.isnan(sampler)
        diff = (trainer.detach().float() - sampler.float())[wanted].abs()
        self.total += float(diff.sum())
        self.tokens += int(wanted.sum())

    def metrics(self) -> dict[str, float]:
        out = {"logprob_mismatch_tokens": float(self.tokens)}
        if self.tokens:
            out["logprob_mismatch"] = self.total / self.tokens
        return out
