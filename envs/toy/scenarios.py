"""`toy`: answer with one target character, as much of the reply as possible.

It exists to prove that the whole loop learns on two CPU cores within minutes: the tiny embedded model starts
by emitting near-uniform bytes (about 1/256 of them the target) and GRPO alone has to move it.
"""

from __future__ import annotations

import random

from rollouts.scenario import DatasetError, Scenario

PHRASINGS = [
    "Reply with the character '{c}' and nothing else.",
    "Write '{c}' as many times as you can.",
    "Answer using only the letter {c}.",
    "Say {c}.",
    "Print the character {c} repeatedly.",
    "Respond with a line of '{c}' characters.",
]


def load_scenarios(size: int, seed: int, target: str = "a", split: str = "train") -> list[Scenario]:
    if size < 1:
        raise DatasetError(f"toy: dataset size must be at least 1, got {size}")
    if len(target) != 1:
        raise DatasetError(f"toy: target must be exactly one character, got {target!r}")
    rng = random.Random(f"{seed}:{split}")
    scenarios = []
    for i in range(size):
        prompt = rng.choice(PHRASINGS).format(c=target)
        scenarios.append(Scenario(id=f"toy-{split}-{i:05d}", prompt=prompt, data={"target": target}))
    return scenarios
