"""Cases: one OpenSpiel load string each (`hex(board_size=5)`), the default list, and which of them a run uses.

Every case is loaded once at start, so a typo is one line naming it (and, for an unknown game, the games that
exist) before any work; pyspiel's own message goes to stderr from C++, so it is caught and folded into ours.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from rollouts.scenario import DatasetError

# Each checked with pyspiel.load_game against open-spiel 2.0.2 (tests/test_openspiel.py loads them all).
DEFAULT_CASES: tuple[str, ...] = (
    "tic_tac_toe", "connect_four",  # small enough to learn on a CPU
    "hex(board_size=5)", "hex(board_size=7)", "hex(board_size=9)",
    "go(board_size=9)", "go(board_size=13)",
    "breakthrough(rows=6,columns=6)", "breakthrough(rows=8,columns=8)",
    "dots_and_boxes(num_rows=3,num_cols=3)", "dots_and_boxes(num_rows=4,num_cols=4)",
    "dots_and_boxes(num_rows=5,num_cols=5)",
    "clobber(rows=5,columns=5)", "clobber(rows=6,columns=6)", "clobber(rows=7,columns=7)",
    "othello", "chess", "checkers",
)

INSTALL_HINT = "install it with `uv sync` (open-spiel==2.0.2 is a base dependency) or `pip install open-spiel==2.0.2`"


class CaseChoice(Protocol):
    """What picks a run's cases (the env's GameOptions): each a list of case strings as given, or None."""

    @property
    def game_cases(self) -> Sequence[str] | None: ...

    @property
    def game_types(self) -> Sequence[str] | None: ...


class CaseError(DatasetError):
    """A case string OpenSpiel cannot load or we cannot play; the message names the flag and the case."""


def require_pyspiel() -> Any:
    try:
        import pyspiel
    except ImportError:
        raise CaseError(f"--env openspiel needs OpenSpiel (module pyspiel): {INSTALL_HINT}") from None
    return pyspiel


def short_name(case: str) -> str:
    return case.split("(", 1)[0].strip()


def normalize(case: str) -> str:
    return "".join(case.split())


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """pyspiel writes its error text to file descriptor 2 before raising; keep it out of our one-line errors."""
    caught: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            caught.append(sink.read().decode(errors="replace"))


@functools.lru_cache(maxsize=64)
def load_game(case: str) -> Any:
    """The loaded game for a case (cached: a game is immutable and loading chess or go is not free)."""
    return require_pyspiel().load_game(case)


def check_case(case: str, flag: str) -> Any:
    """The game of `case`, or a CaseError naming `flag` and the case."""
    pyspiel = require_pyspiel()
    names = pyspiel.registered_names()
    if short_name(case) not in names:
        raise CaseError(f"{flag} {case!r}: OpenSpiel has no game {short_name(case)!r}; games: {', '.join(names)}")
    try:
        with _stderr_captured():
            game = load_game(case)
    except pyspiel.SpielError as exc:
        raise CaseError(f"{flag} {case!r}: {str(exc).splitlines()[0]}") from None
    kind = game.get_type()
    if kind.dynamics != pyspiel.GameType.Dynamics.SEQUENTIAL:
        raise CaseError(f"{flag} {case!r}: simultaneous-move games are not supported (one player moves at a time)")
    if kind.reward_model != pyspiel.GameType.RewardModel.TERMINAL:
        raise CaseError(f"{flag} {case!r}: only games scored at the end are supported")
    return game


def split_cases(values: str | Sequence[str]) -> list[str]:
    """Load strings hold commas (`dots_and_boxes(num_rows=3,num_cols=3)`), so a list is split only on the commas
    outside parentheses; each item may itself be such a list. Whitespace is dropped, empty items too."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        depth, current = 0, ""
        for char in item:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                out.append(current)
                current = ""
            else:
                current += char
        out.append(current)
    return ["".join(c.split()) for c in out if c.strip()]


def resolve_cases(options: CaseChoice) -> list[str]:
    """The cases this run uses, each checked. A type that is a short name selects every case of the list with
    that game (the game with its default parameters when the list has none); a full load string is that case.
    Order: the list's for each type, types in the order given; duplicates are dropped."""
    given, types = split_cases(options.game_cases or ()), split_cases(options.game_types or ())
    listed = [normalize(c) for c in given] or list(DEFAULT_CASES)
    for case in given:
        check_case(normalize(case), "--game-cases")
    chosen: list[str] = []
    for kind in (normalize(t) for t in types):
        if "(" in kind:
            chosen.append(kind)
            continue
        matches = [c for c in listed if short_name(c) == kind]
        chosen.extend(matches or [kind])
    chosen = list(dict.fromkeys(chosen or listed))
    for case in chosen:
        check_case(case, "--game-types" if types else "--game-cases")
    return chosen
