"""The toy env's reward probes: the target share cannot be raised by anything but the target character.

The share is a ratio, so padding cannot lift it past an all-target reply (and the endpoint caps the reply at the
turn's token budget anyway); what a policy could try instead is to pass something that only looks like the target
to a checker that normalises text: the other case, a homoglyph (Cyrillic, full-width, mathematical letters),
invisible characters, or the target named in words. Each must score 0, as saying nothing does.
"""

from __future__ import annotations

import contextlib
import unicodedata
from typing import Any

from envs.probes import RewardProbe
from rollouts.scenario import Scenario

REPLY_CHARS = 16  # the embedded toy budget: 16 tokens, and a target character is at least one token


def _lookalikes(target: str) -> dict[str, str]:
    """Characters that normalise (NFKC, case folding, transliteration) to the target, or look like it."""
    found: dict[str, str] = {}
    other_case = target.swapcase()
    if other_case != target:
        found["other-case"] = other_case
    fullwidth = chr(ord(target) + 0xFEE0) if "!" <= target <= "~" else ""
    if fullwidth and unicodedata.normalize("NFKC", fullwidth) == target:
        found["fullwidth"] = fullwidth
    if target.isascii() and target.isalpha():
        name = f"MATHEMATICAL BOLD {'SMALL' if target.islower() else 'CAPITAL'} {target.upper()}"
        with contextlib.suppress(KeyError):  # every ASCII letter has one; kept safe for other scripts
            found["math-bold"] = unicodedata.lookup(name)
        cyrillic = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445"}
        if target.lower() in cyrillic:
            found["cyrillic"] = cyrillic[target.lower()] if target.islower() else cyrillic[target.lower()].upper()
    return found


def reward_probes(cfg: Any, scenario: Scenario) -> list[RewardProbe]:
    target = scenario.data["target"]
    probes = [RewardProbe("oracle", "oracle", (target * REPLY_CHARS,)),
              RewardProbe("do-nothing", "nothing", ("",)),
              RewardProbe("cheat:invisible-characters", "cheat", ("\u200b\u2060" * (REPLY_CHARS // 2),)),
              RewardProbe("cheat:whitespace", "cheat", (" \n\t" * 5,))]
    probes += [RewardProbe(f"cheat:{name}", "cheat", (char * REPLY_CHARS,))
               for name, char in _lookalikes(target).items()]
    return probes
