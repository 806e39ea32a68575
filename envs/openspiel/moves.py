"""What the model sees and what it answers: a state as text, and one move in a fixed format.

The answer format is one line `move: <id>`, where <id> is a legal action's number; the action's own text
(`move: x(1,1)`, `move: Nc3`) is accepted too. Parsing is lenient on whitespace, case, backticks and a trailing
full stop, and strict on meaning: the last `move:` line counts, and a value that names no legal action is
illegal, never guessed at. Both outcomes are observations for the rollout, never exceptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SYSTEM_PROMPT = """You play a board game. Each turn you see the game, the state, whose turn it is and the legal
actions as `id: action` lines. Choose one legal action and answer with exactly one line: move: <id>
For example: move: 4"""

ANSWER_HINT = "Answer with one line: move: <id>"
_MOVE_LINE = re.compile(r"^[\s`*>]*move\s*[:=]\s*(?P<value>.*?)[\s`*.]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ParsedMove:
    status: str  # "legal", "illegal" (a move line naming no legal action) or "unparsable" (no move line)
    action: int | None  # the legal action chosen, None otherwise
    text: str  # what the model wrote after `move:` ("" when unparsable)

    @property
    def legal(self) -> bool:
        return self.status == "legal"


def _squash(text: str) -> str:
    return "".join(text.split()).lower()


def parse_move(reply: str, legal: dict[int, str]) -> ParsedMove:
    """`legal` maps each legal action id to its action string."""
    lines = _MOVE_LINE.findall(reply or "")
    if not lines:
        return ParsedMove("unparsable", None, "")
    value = lines[-1].strip().strip("*_` ")  # markdown around the value: **move:** 4, `move: 4`
    if re.fullmatch(r"[+-]?\d+", value):
        action = int(value)
        return ParsedMove("legal", action, value) if action in legal else ParsedMove("illegal", None, value)
    by_text = {_squash(text): action for action, text in legal.items()}
    action = by_text.get(_squash(value))
    return ParsedMove("illegal", None, value) if action is None else ParsedMove("legal", action, value)


def legal_actions(state: Any) -> dict[int, str]:
    player = state.current_player()
    return {a: state.action_to_string(player, a) for a in state.legal_actions()}


def state_text(game: Any, state: Any) -> str:
    """The game's own view for the player to move: its observation string where it has one (hidden information
    stays hidden), else the full state string."""
    if game.get_type().provides_observation_string:
        return state.observation_string(state.current_player())
    return str(state)


def describe_state(case: str, game: Any, state: Any) -> str:
    """The turn's prompt: game, whose turn, the state and the legal actions; the ids once more on one line right
    before the answer, where a small model copies from most easily."""
    legal = legal_actions(state)
    actions = "\n".join(f"{a}: {text}" for a, text in legal.items())
    players = game.num_players()
    return (f"Game: {case} ({players} players)\nYou are player {state.current_player()}; it is your turn.\n"
            f"State:\n{state_text(game, state).rstrip()}\nLegal actions (id: action):\n{actions}\n"
            f"Legal ids: {', '.join(map(str, legal))}\n{ANSWER_HINT}")


def answer(action: int) -> str:
    """A well-formed answer, as demonstrations write it."""
    return f"move: {action}"


def retry_prompt(parsed: ParsedMove, legal: dict[int, str]) -> str:
    """Game mode: the observation after an answer that was not a legal move."""
    head = ("No `move: <id>` line found." if parsed.status == "unparsable"
            else f"{parsed.text!r} is not a legal action.")
    ids = ", ".join(str(a) for a in legal)
    return f"{head} Legal action ids: {ids}. {ANSWER_HINT}"
